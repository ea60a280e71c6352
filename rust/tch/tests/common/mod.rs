//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a part

use crs4_cassandra_core::SplitFile;
use crs4_cassandra_tch::synthetic::{write_shapes_store, Encoding, ShapesSpec};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `secs` (a hang in the loader must fail, not stall the suite).
pub fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            handle.join().expect("test thread");
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic here.
            match handle.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("no value and no panic"),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {secs} s"),
    }
}

/// A generated local store: its directory (kept alive by `_dir`), URL and split file.
pub struct TestStore {
    pub _dir: tempfile::TempDir,
    pub url: String,
    pub split: PathBuf,
    pub file: SplitFile,
}

pub fn shapes_store(classes: usize, per_class: usize, encoding: Encoding) -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let split = dir.path().join("shapes.split");
    let spec = ShapesSpec {
        classes,
        per_class,
        size: 32,
        val_fraction: 0.25,
        seed: 1,
        encoding,
    };
    let file = write_shapes_store(&dir.path().join("store"), "shapes", &split, &spec)
        .expect("write the store");
    TestStore {
        url: format!("local:{}", dir.path().join("store").display()),
        _dir: dir,
        split,
        file,
    }
}
