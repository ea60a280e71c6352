//! Values that belong to the process that made them.
//!
//! A PyTorch DataLoader forks its workers: each child starts with a copy of
//! the parent's memory, so every runtime, thread pool, driver session or LMDB
//! environment the parent had is there too, but none of their threads, and
//! their sockets and file handles are shared with the parent. A child must
//! make its own, and must never use the inherited ones.
//!
//! It must not drop them either: dropping a tokio runtime or a rayon pool
//! joins worker threads that do not exist here (it hangs), dropping a driver
//! session closes connections that the parent is still using, and closing an
//! LMDB environment releases the parent's reader slots. A lock one of the
//! missing threads held at the fork is never released. So the rule is:
//! **an inherited value is leaked** ([`std::mem::forget`]). What that costs is
//! the memory of the copy, which the child shares copy-on-write with its parent
//! until it writes to it.
//!
//! [`ProcessOwned`] holds a value with the process that made it and applies
//! that rule on drop; [`Owner`] is the mark alone, for types that guard their
//! own resources.

use std::mem::ManuallyDrop;

/// The process that made something: compare with the current one to know
/// whether it was inherited through `fork()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(u32);

impl Owner {
    /// The calling process.
    pub fn current() -> Self {
        Self(std::process::id())
    }

    /// The owner's process id.
    pub fn pid(self) -> u32 {
        self.0
    }

    /// Whether this mark was made in another process, i.e. the value it marks
    /// was inherited through `fork()`.
    pub fn is_inherited(self) -> bool {
        self.0 != std::process::id()
    }
}

/// A value usable only in the process that made it (see the module docs).
///
/// In the owning process it is an ordinary wrapper: [`get`](Self::get) gives
/// the value and dropping it drops the value. In a forked child `get` gives
/// nothing and dropping it leaks the value.
pub struct ProcessOwned<T> {
    owner: Owner,
    value: ManuallyDrop<T>,
}

impl<T> ProcessOwned<T> {
    /// `value`, owned by the calling process.
    pub fn new(value: T) -> Self {
        Self {
            owner: Owner::current(),
            value: ManuallyDrop::new(value),
        }
    }

    /// The process that made it.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Whether it was made in another process (inherited through `fork()`).
    pub fn is_inherited(&self) -> bool {
        self.owner.is_inherited()
    }

    /// The value, in the process that made it; None in any other.
    pub fn get(&self) -> Option<&T> {
        (!self.is_inherited()).then_some(&*self.value)
    }

    /// The value, mutably, in the process that made it; None in any other.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        if self.is_inherited() {
            return None;
        }
        Some(&mut *self.value)
    }

    /// The value, in the process that made it; in any other it is leaked and
    /// None is returned.
    pub fn into_inner(self) -> Option<T> {
        let mut this = ManuallyDrop::new(self);
        if this.is_inherited() {
            return None;
        }
        // SAFETY: `this` is never dropped, so the value is taken exactly once.
        Some(unsafe { ManuallyDrop::take(&mut this.value) })
    }

    /// The value a per-process `slot` holds for this process, made by `make`
    /// if the slot is empty or holds another process's value (which is leaked).
    pub fn get_or_insert_with(slot: &mut Option<Self>, make: impl FnOnce() -> T) -> &mut T {
        if slot.as_ref().is_some_and(Self::is_inherited) {
            *slot = None; // leaks the inherited value
        }
        &mut slot.get_or_insert_with(|| Self::new(make())).value
    }
}

impl<T> Drop for ProcessOwned<T> {
    fn drop(&mut self) {
        if !self.is_inherited() {
            // SAFETY: dropped once, here; the value is not used again.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
        // Inherited: leaked, on purpose (see the module docs).
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ProcessOwned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.get() {
            Some(v) => f.debug_tuple("ProcessOwned").field(v).finish(),
            None => write!(f, "ProcessOwned(<inherited from pid {}>)", self.owner.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A value marked as made by another process, as a forked child sees it.
    fn inherited<T>(value: T) -> ProcessOwned<T> {
        let mut v = ProcessOwned::new(value);
        v.owner = Owner(std::process::id().wrapping_add(1));
        v
    }

    #[test]
    fn in_the_owning_process_it_is_a_plain_wrapper() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut v = ProcessOwned::new(Counted(drops.clone()));
        assert!(!v.is_inherited());
        assert_eq!(v.owner(), Owner::current());
        assert!(v.get().is_some() && v.get_mut().is_some());
        drop(v);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let v = ProcessOwned::new(Counted(drops.clone()));
        let inner = v.into_inner().expect("owned here");
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(inner);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_inherited_value_is_neither_given_nor_dropped() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut v = inherited(Counted(drops.clone()));
        assert!(v.is_inherited());
        assert!(v.get().is_none() && v.get_mut().is_none());
        assert!(format!("{:?}", inherited(1)).contains("inherited"));
        drop(v);
        assert!(inherited(Counted(drops.clone())).into_inner().is_none());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_slot_is_refilled_in_a_new_process() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut slot = None;
        let made = AtomicUsize::new(0);
        let make = || {
            Counted(Arc::new(AtomicUsize::new(
                made.fetch_add(1, Ordering::SeqCst),
            )))
        };
        ProcessOwned::get_or_insert_with(&mut slot, make);
        ProcessOwned::get_or_insert_with(&mut slot, make);
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "reused in the owning process"
        );
        let mut slot = Some(inherited(Counted(drops.clone())));
        ProcessOwned::get_or_insert_with(&mut slot, make);
        assert_eq!(made.load(Ordering::SeqCst), 2, "made anew after a fork");
        assert!(slot.as_ref().is_some_and(|v| !v.is_inherited()));
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the inherited one leaked");
    }

    #[test]
    fn a_forked_child_sees_the_parents_values_as_inherited() {
        let parent = ProcessOwned::new(7u32);
        let owner = Owner::current();
        // SAFETY: the child calls only getpid and _exit (async-signal-safe).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = parent.is_inherited()
                && parent.get().is_none()
                && owner.is_inherited()
                && !ProcessOwned::new(1u8).is_inherited()
                && !Owner::current().is_inherited();
            // Exit without unwinding or running the parent's destructors.
            unsafe { libc::_exit(if ok { 42 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "child status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 42, "the child saw a wrong owner");
        assert!(!parent.is_inherited() && parent.get() == Some(&7));
    }
}
