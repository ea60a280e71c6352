//! A thin, fork-aware layer over LMDB (the C library, through `lmdb-master-sys`).
//!
//! Why not heed's `Env`: heed keeps a process-global registry of open
//! environments and refuses to open a path twice. A DataLoader worker forked
//! from a parent that had the store open inherits that registry, so it could
//! neither reuse the parent's environment (LMDB forbids using an `MDB_env`
//! across `fork()`) nor open its own. Here the cache of open environments and
//! each environment are [`ProcessOwned`]: a forked child opens its own, and
//! handles it inherited are never used nor closed (closing them would release
//! the parent's reader slots).

use crate::error::{Result, StoreError};
use crs4_cassandra_core::ProcessOwned;
use lmdb_master_sys as ffi;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex, Weak};

/// Virtual address space reserved for the map; the file only grows as data is written.
const MAP_SIZE: usize = 1 << 40;
const MAX_DBS: u32 = 1024;
const MAX_READERS: u32 = 4096;

pub type Dbi = ffi::MDB_dbi;

/// An open `MDB_env`, closed when dropped.
struct RawEnv(*mut ffi::MDB_env);

impl Drop for RawEnv {
    fn drop(&mut self) {
        unsafe { ffi::mdb_env_close(self.0) };
    }
}

pub struct Env {
    /// Leaked, not closed, when dropped in a forked child.
    raw: ProcessOwned<RawEnv>,
    path: PathBuf,
    dbis: Mutex<HashMap<String, Dbi>>,
    /// Why the environment was opened read-only (see [`Env::open`]); None
    /// when it is open for writing.
    read_only: Option<String>,
}

// LMDB environments are thread-safe; read transactions are opened with
// MDB_NOTLS so they are not tied to the opening thread.
unsafe impl Send for Env {}
unsafe impl Sync for Env {}

/// Whether an `mdb_env_open` failure means "not allowed to write here": a
/// read-only filesystem or missing permissions (on the lock or data file).
fn is_permission(rc: i32) -> bool {
    matches!(rc, libc::EROFS | libc::EACCES | libc::EPERM)
}

fn lmdb_error(path: &Path, rc: i32) -> StoreError {
    StoreError::Lmdb {
        path: path.to_path_buf(),
        message: strerror(rc),
    }
}

fn strerror(rc: i32) -> String {
    unsafe { CStr::from_ptr(ffi::mdb_strerror(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// This process's open environments. A forked child starts an empty cache:
/// the environments it inherited are not its own.
static CACHE: Mutex<Option<ProcessOwned<EnvCache>>> = Mutex::new(None);

type EnvCache = HashMap<PathBuf, Weak<Env>>;

impl Env {
    /// Opens (or returns this process's already open) environment at `path`.
    /// With `create`, the directory is created if missing.
    pub fn open(path: &Path, create: bool) -> Result<Arc<Env>> {
        Self::open_flags(path, create, 0)
    }

    /// [`Env::open`] with extra `mdb_env_open` flags for a newly opened
    /// environment (an environment already open in this process keeps its
    /// own): a cache, which can be rebuilt, opens with `MDB_NOSYNC`.
    pub fn open_flags(path: &Path, create: bool, flags: u32) -> Result<Arc<Env>> {
        if create {
            std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        } else if !path.join("data.mdb").is_file() {
            let reason = if path.exists() {
                "no data.mdb file in it".to_string()
            } else {
                "the path does not exist".to_string()
            };
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                reason,
            });
        }
        let key = path.canonicalize().map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut guard = CACHE.lock().expect("env cache poisoned");
        let cache = ProcessOwned::get_or_insert_with(&mut guard, HashMap::new);
        if let Some(env) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(env);
        }
        let env = Arc::new(Self::open_raw(&key, flags)?);
        cache.insert(key, Arc::downgrade(&env));
        Ok(env)
    }

    /// Opens the environment for writing if the filesystem lets this process
    /// write it, else read-only.
    ///
    /// A store is often read from a volume this process cannot write: a
    /// dataset shared read-only on a cluster, a directory of another user.
    /// LMDB opens `lock.mdb` (beside `data.mdb`) for writing even to read,
    /// and fails where it cannot, except for an `MDB_RDONLY` environment on a
    /// read-only filesystem, or one opened `MDB_NOLOCK`. So opening falls back:
    ///
    /// 1. read-write, with the lock file: readers and a concurrent writer
    ///    (another process ingesting into the store) coordinate through it;
    /// 2. if the filesystem or permissions refuse that, `MDB_RDONLY`: the lock
    ///    file is still used where it can be written to, and LMDB itself skips
    ///    it on a read-only filesystem, where no one can write the store;
    /// 3. if the lock file cannot be opened either, `MDB_RDONLY | MDB_NOLOCK`.
    ///    Without the lock file this process's read transactions are not
    ///    registered, so a writer in another process could reuse pages they
    ///    read; that is safe only while nobody writes the store, which is
    ///    the case of a shared read-only dataset (a writer would need the
    ///    write access this process lacks). Within this process nothing can
    ///    write it: [`Env::write`] refuses, naming the path.
    fn open_raw(path: &Path, flags: u32) -> Result<Env> {
        let read_write = match Self::open_with(path, flags) {
            Ok(raw) => return Ok(Self::from_raw(raw, path, None)),
            Err(rc) if is_permission(rc) => strerror(rc),
            Err(rc) => return Err(lmdb_error(path, rc)),
        };
        let raw = match Self::open_with(path, ffi::MDB_RDONLY) {
            Ok(raw) => raw,
            Err(rc) if is_permission(rc) => {
                Self::open_with(path, ffi::MDB_RDONLY | ffi::MDB_NOLOCK)
                    .map_err(|rc| lmdb_error(path, rc))?
            }
            Err(rc) => return Err(lmdb_error(path, rc)),
        };
        Ok(Self::from_raw(raw, path, Some(read_write)))
    }

    fn from_raw(raw: RawEnv, path: &Path, read_only: Option<String>) -> Env {
        Env {
            raw: ProcessOwned::new(raw),
            path: path.to_path_buf(),
            dbis: Mutex::new(HashMap::new()),
            read_only,
        }
    }

    /// One attempt at `mdb_env_open` with `flags` (besides MDB_NOTLS); the
    /// LMDB return code on failure.
    fn open_with(path: &Path, flags: u32) -> std::result::Result<RawEnv, i32> {
        // A path with a NUL cannot exist: canonicalize() has found it.
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| libc::ENOENT)?;
        let mut env: *mut ffi::MDB_env = ptr::null_mut();
        let rc = unsafe { ffi::mdb_env_create(&mut env) };
        if rc != 0 {
            return Err(rc);
        }
        // Closed on the error paths below by its Drop (a failed mdb_env_open
        // leaves a handle that must be closed, and cannot be opened again).
        let raw = RawEnv(env);
        unsafe {
            let setup = [
                ffi::mdb_env_set_mapsize(env, MAP_SIZE),
                ffi::mdb_env_set_maxdbs(env, MAX_DBS),
                ffi::mdb_env_set_maxreaders(env, MAX_READERS),
            ];
            if let Some(&rc) = setup.iter().find(|&&rc| rc != 0) {
                return Err(rc);
            }
            let rc = ffi::mdb_env_open(env, cpath.as_ptr(), ffi::MDB_NOTLS | flags, 0o644);
            if rc != 0 {
                return Err(rc);
            }
        }
        Ok(raw)
    }

    /// The error of a write attempted on a read-only environment.
    fn check_writable(&self) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(reason) => Err(StoreError::ReadOnly {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the environment is read-only here, None if it can be written.
    pub fn read_only_reason(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Checks that `data.mdb` holds every page the environment uses: a file
    /// cut short (a crash during a copy, a full disk) would otherwise fault
    /// (SIGBUS) on the first read of a missing page, not return an error.
    pub fn check_file_size(&self) -> Result<(), String> {
        let env = self.ptr().map_err(|e| e.to_string())?;
        let mut info = std::mem::MaybeUninit::<ffi::MDB_envinfo>::zeroed();
        let mut stat = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        let (info, stat) = unsafe {
            let rc = ffi::mdb_env_info(env, info.as_mut_ptr());
            if rc != 0 {
                return Err(strerror(rc));
            }
            let rc = ffi::mdb_env_stat(env, stat.as_mut_ptr());
            if rc != 0 {
                return Err(strerror(rc));
            }
            (info.assume_init(), stat.assume_init())
        };
        let needed = (info.me_last_pgno as u64 + 1) * stat.ms_psize as u64;
        let file = self.path.join("data.mdb");
        let len = std::fs::metadata(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .len();
        if len < needed {
            return Err(format!(
                "{} is {len} bytes long but its pages need {needed}: the file was cut short",
                file.display()
            ));
        }
        Ok(())
    }

    fn err(&self, rc: i32) -> StoreError {
        StoreError::Lmdb {
            path: self.path.clone(),
            message: strerror(rc),
        }
    }

    /// The environment's handle, in the process that opened it only.
    fn ptr(&self) -> Result<*mut ffi::MDB_env> {
        self.raw.get().map(|raw| raw.0).ok_or_else(|| {
            StoreError::Internal(format!(
                "LMDB environment {} was opened before fork() and cannot be used in a child process",
                self.path.display()
            ))
        })
    }

    /// Handle of a named database, or None if it does not exist (and `create` is false).
    pub fn dbi(&self, name: &str, create: bool) -> Result<Option<Dbi>> {
        let env = self.ptr()?;
        // mdb_dbi_open must not run in concurrent transactions: serialize it here.
        let mut dbis = self.dbis.lock().expect("dbi cache poisoned");
        if let Some(&dbi) = dbis.get(name) {
            return Ok(Some(dbi));
        }
        let cname = CString::new(name).map_err(|_| {
            StoreError::InvalidArgument(format!("table name {name:?} contains a NUL"))
        })?;
        if create {
            self.check_writable()?;
        }
        let flags = if create { 0 } else { ffi::MDB_RDONLY };
        let mut txn: *mut ffi::MDB_txn = ptr::null_mut();
        unsafe {
            let rc = ffi::mdb_txn_begin(env, ptr::null_mut(), flags, &mut txn);
            if rc != 0 {
                return Err(self.err(rc));
            }
            let mut dbi: Dbi = 0;
            let rc = ffi::mdb_dbi_open(
                txn,
                cname.as_ptr(),
                if create { ffi::MDB_CREATE } else { 0 },
                &mut dbi,
            );
            if rc == ffi::MDB_NOTFOUND {
                ffi::mdb_txn_abort(txn);
                return Ok(None);
            }
            if rc != 0 {
                ffi::mdb_txn_abort(txn);
                return Err(self.err(rc));
            }
            let rc = ffi::mdb_txn_commit(txn);
            if rc != 0 {
                return Err(self.err(rc));
            }
            dbis.insert(name.to_string(), dbi);
            Ok(Some(dbi))
        }
    }

    /// Runs `f` inside a read-only transaction.
    pub fn read<T>(&self, f: impl FnOnce(&RoTxn<'_>) -> Result<T>) -> Result<T> {
        let env = self.ptr()?;
        let mut txn: *mut ffi::MDB_txn = ptr::null_mut();
        let rc = unsafe { ffi::mdb_txn_begin(env, ptr::null_mut(), ffi::MDB_RDONLY, &mut txn) };
        if rc != 0 {
            return Err(self.err(rc));
        }
        let ro = RoTxn { env: self, txn };
        f(&ro)
        // RoTxn's Drop aborts the transaction.
    }

    /// Runs `f` inside a write transaction, committed if `f` returns Ok.
    pub fn write<T>(&self, f: impl FnOnce(&RwTxn<'_>) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let env = self.ptr()?;
        let mut txn: *mut ffi::MDB_txn = ptr::null_mut();
        let rc = unsafe { ffi::mdb_txn_begin(env, ptr::null_mut(), 0, &mut txn) };
        if rc != 0 {
            return Err(self.err(rc));
        }
        let rw = RwTxn {
            ro: RoTxn { env: self, txn },
        };
        let out = f(&rw)?;
        let txn = rw.ro.txn;
        std::mem::forget(rw);
        let rc = unsafe { ffi::mdb_txn_commit(txn) };
        if rc != 0 {
            return Err(self.err(rc));
        }
        Ok(out)
    }
}

pub struct RoTxn<'e> {
    env: &'e Env,
    txn: *mut ffi::MDB_txn,
}

impl Drop for RoTxn<'_> {
    fn drop(&mut self) {
        unsafe { ffi::mdb_txn_abort(self.txn) };
    }
}

fn val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: bytes.len(),
        mv_data: bytes.as_ptr() as *mut c_void,
    }
}

impl<'e> RoTxn<'e> {
    /// The value stored under `key`, borrowed from the memory map.
    pub fn get(&self, dbi: Dbi, key: &[u8]) -> Result<Option<&[u8]>> {
        let mut k = val(key);
        let mut v = ffi::MDB_val {
            mv_size: 0,
            mv_data: ptr::null_mut(),
        };
        let rc = unsafe { ffi::mdb_get(self.txn, dbi, &mut k, &mut v) };
        match rc {
            0 => Ok(Some(unsafe {
                std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size)
            })),
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(self.env.err(rc)),
        }
    }

    /// Calls `f` on every (key, value) pair in key order; stops early if `f` returns false.
    pub fn for_each(&self, dbi: Dbi, f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.walk(dbi, false, f)
    }

    /// [`RoTxn::for_each`] from the last key down.
    pub fn for_each_rev(
        &self,
        dbi: Dbi,
        f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.walk(dbi, true, f)
    }

    fn walk(
        &self,
        dbi: Dbi,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut cursor: *mut ffi::MDB_cursor = ptr::null_mut();
        let rc = unsafe { ffi::mdb_cursor_open(self.txn, dbi, &mut cursor) };
        if rc != 0 {
            return Err(self.env.err(rc));
        }
        let (first, next) = if reverse {
            (ffi::MDB_LAST, ffi::MDB_PREV)
        } else {
            (ffi::MDB_FIRST, ffi::MDB_NEXT)
        };
        let mut op = first;
        let result = loop {
            let mut k = ffi::MDB_val {
                mv_size: 0,
                mv_data: ptr::null_mut(),
            };
            let mut v = ffi::MDB_val {
                mv_size: 0,
                mv_data: ptr::null_mut(),
            };
            let rc = unsafe { ffi::mdb_cursor_get(cursor, &mut k, &mut v, op) };
            if rc == ffi::MDB_NOTFOUND {
                break Ok(());
            }
            if rc != 0 {
                break Err(self.env.err(rc));
            }
            let (key, value) = unsafe {
                (
                    std::slice::from_raw_parts(k.mv_data as *const u8, k.mv_size),
                    std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size),
                )
            };
            match f(key, value) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
            op = next;
        };
        unsafe { ffi::mdb_cursor_close(cursor) };
        result
    }

    pub fn count(&self, dbi: Dbi) -> Result<usize> {
        let mut stat = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        let rc = unsafe { ffi::mdb_stat(self.txn, dbi, stat.as_mut_ptr()) };
        if rc != 0 {
            return Err(self.env.err(rc));
        }
        Ok(unsafe { stat.assume_init() }.ms_entries)
    }
}

pub struct RwTxn<'e> {
    ro: RoTxn<'e>,
}

impl<'e> std::ops::Deref for RwTxn<'e> {
    type Target = RoTxn<'e>;
    fn deref(&self) -> &RoTxn<'e> {
        &self.ro
    }
}

impl RwTxn<'_> {
    pub fn put(&self, dbi: Dbi, key: &[u8], value: &[u8]) -> Result<()> {
        let mut k = val(key);
        let mut v = val(value);
        let rc = unsafe { ffi::mdb_put(self.ro.txn, dbi, &mut k, &mut v, 0) };
        if rc != 0 {
            return Err(self.ro.env.err(rc));
        }
        Ok(())
    }

    /// Removes `key` (nothing happens if it is absent).
    pub fn del(&self, dbi: Dbi, key: &[u8]) -> Result<()> {
        let mut k = val(key);
        let rc = unsafe { ffi::mdb_del(self.ro.txn, dbi, &mut k, ptr::null_mut()) };
        if rc != 0 && rc != ffi::MDB_NOTFOUND {
            return Err(self.ro.env.err(rc));
        }
        Ok(())
    }

    /// Empties the database (keeps its handle).
    pub fn clear(&self, dbi: Dbi) -> Result<()> {
        let rc = unsafe { ffi::mdb_drop(self.ro.txn, dbi, 0) };
        if rc != 0 {
            return Err(self.ro.env.err(rc));
        }
        Ok(())
    }
}
