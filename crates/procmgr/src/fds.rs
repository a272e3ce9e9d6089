//! Descriptor hygiene for a new child: close everything it was not handed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::libc;

use crate::ProcError;

/// Closes every descriptor of this process except standard input, output and
/// error (0, 1, 2) and those in `keep`: a new child then holds only what it
/// was handed, not the parent's listeners, its signalfd, or whatever the
/// program that started the parent forgot to mark close-on-exec.
///
/// Uses `close_range(2)` (Linux 5.9), one call per gap between the kept
/// descriptors; on an older kernel it falls back to `close(2)` on every number
/// up to the larger of the soft and hard `RLIMIT_NOFILE` (at most 2^20).
/// Async-signal-safe: no allocation, no lock waited for.
///
/// Call it in a child right after the fork. Objects of the parent's that own a
/// closed descriptor (a listener, a `Signals`) must then never be used or
/// dropped in the child: their numbers may be reused. procmgr's own cached
/// descriptor (see [`thread_count`](crate::thread_count)) is forgotten here
/// and reopened when next needed.
///
/// # Errors
/// [`ProcError::CloseFds`] if `close_range(2)` fails for a reason other than
/// not being implemented.
pub fn close_other_fds(keep: &[BorrowedFd<'_>]) -> Result<(), ProcError> {
    crate::fork::forget_cached_status();
    // A sorted, duplicate-free list of the kept numbers above 2, on the stack:
    // a child has few of them, and this must not allocate.
    let mut kept = [RawFd::MAX; 16];
    let mut count = 0;
    for fd in keep.iter().map(AsRawFd::as_raw_fd).filter(|&fd| fd > 2) {
        if kept[..count].contains(&fd) {
            continue;
        }
        let Some(slot) = kept.get_mut(count) else {
            let message = "more than 16 descriptors to keep";
            return Err(ProcError::CloseFds {
                source: io::Error::new(io::ErrorKind::InvalidInput, message),
            });
        };
        *slot = fd;
        count += 1;
    }
    let kept = &mut kept[..count];
    kept.sort_unstable();
    let mut first: u32 = 3;
    for &fd in kept.iter() {
        let fd = u32::try_from(fd).unwrap_or(u32::MAX);
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    close_range(first, u32::MAX)
}

/// `close_range(first, last, 0)`, or the `close(2)` loop where the kernel
/// lacks it.
fn close_range(first: u32, last: u32) -> Result<(), ProcError> {
    // SAFETY: close_range takes three integers and touches no memory; closing
    // descriptors is what the caller asked for (see `close_other_fds`).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0_u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // ENOSYS: a kernel before 5.9; EPERM: a seccomp filter that refuses the
    // call it does not know (older container profiles, systemd's
    // SystemCallErrorNumber=EPERM).
    if matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
        close_each(first, last);
        return Ok(());
    }
    Err(ProcError::CloseFds { source: err })
}

/// The fallback: `close(2)` on every number from `first` to `last` that a
/// descriptor can have. Errors (`EBADF` for a number not in use) are ignored.
pub(crate) fn close_each(first: u32, last: u32) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    // A descriptor opened before the soft limit was lowered can lie above it,
    // never above the hard limit; the kernel's own ceiling (nr_open) is 2^20
    // by default.
    let ceiling = if known { limit.rlim_cur.max(limit.rlim_max) } else { 1 << 20 };
    let ceiling = u32::try_from(ceiling.min(1 << 20)).unwrap_or(1 << 20);
    for fd in first..=last.min(ceiling.saturating_sub(1)) {
        let Ok(fd) = libc::c_int::try_from(fd) else { break };
        // SAFETY: closing a number this process may or may not use; the caller
        // wants every one in the range closed, and EBADF is harmless.
        unsafe { libc::close(fd) };
    }
}

/// In a new child: closes descriptors that objects of the parent's own (the
/// parent's ends of other children's channels, say), without touching those
/// objects: no memory is written, so no page of the parent's is copied.
/// Errors (a number not open) are ignored. Async-signal-safe.
///
/// The objects must never be used or dropped in the child afterwards: their
/// numbers may be reused. A child that ends with
/// [`InChild::exit`](crate::InChild::exit) drops nothing of the parent's.
pub fn close_in_child<'fd>(fds: impl IntoIterator<Item = BorrowedFd<'fd>>) {
    for fd in fds {
        // SAFETY: closing a number whose owner the caller promises never to
        // use or drop in this process again.
        unsafe { libc::close(fd.as_raw_fd()) };
    }
}

/// Descriptors for a new child to close, chosen in the parent before any fork:
/// those the program that started this process leaked to it, and those the
/// caller adds (its signalfd, say). The child closes them with
/// [`CloseList::close`] and keeps everything else, so descriptors the program
/// opened itself (a log file, a connection to a backend) stay usable there.
#[derive(Debug, Clone, Default)]
pub struct CloseList {
    fds: Vec<RawFd>,
}

impl CloseList {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every descriptor above 2 that is not close-on-exec, from
    /// `/proc/self/fd`. Rust's standard library, and every crate of this
    /// workspace, open descriptors close-on-exec, so these are the ones a
    /// launcher leaked across `execve(2)` (or that the program deliberately
    /// made inheritable: [`CloseList::remove`] keeps one).
    ///
    /// # Errors
    /// [`ProcError::CloseFds`] if `/proc/self/fd` cannot be read.
    pub fn leaked() -> Result<Self, ProcError> {
        let failed = |source| ProcError::CloseFds { source };
        let numbers: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .map_err(failed)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd: &RawFd| fd > 2)
            .collect();
        // The directory's own descriptor is closed by now: F_GETFD fails on it.
        let fds = numbers
            .into_iter()
            .filter(|&fd| {
                // SAFETY: F_GETFD only reads the flags of a descriptor number;
                // any number is allowed.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                flags != -1 && flags & libc::FD_CLOEXEC == 0
            })
            .collect();
        Ok(Self { fds })
    }

    /// Adds a descriptor of the parent's that a child must not hold.
    pub fn add(&mut self, fd: BorrowedFd<'_>) {
        let fd = fd.as_raw_fd();
        if !self.fds.contains(&fd) {
            self.fds.push(fd);
        }
    }

    /// Adds descriptors of the parent's that a child must not hold, all
    /// distinct and not on the list yet (unlike [`CloseList::add`], nothing
    /// is checked: a number listed twice is only closed twice, the second
    /// time in vain).
    pub fn extend<'fd>(&mut self, fds: impl IntoIterator<Item = BorrowedFd<'fd>>) {
        self.fds.extend(fds.into_iter().map(|fd| fd.as_raw_fd()));
    }

    /// Empties the list, keeping its memory: a list rebuilt before each fork
    /// allocates only when it outgrows every earlier one.
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Keeps `fd` open in children after all.
    pub fn remove(&mut self, fd: BorrowedFd<'_>) {
        let fd = fd.as_raw_fd();
        self.fds.retain(|&listed| listed != fd);
    }

    /// Whether `fd` is on the list.
    #[must_use]
    pub fn contains(&self, fd: BorrowedFd<'_>) -> bool {
        self.fds.contains(&fd.as_raw_fd())
    }

    /// How many descriptors are on the list.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// The list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// In a new child: closes every descriptor on the list, and procmgr's own
    /// cached `/proc/self/status` descriptor (reopened if the child forks in
    /// turn). Errors (a number no longer open) are ignored. Async-signal-safe.
    ///
    /// The parent's objects that own a listed descriptor (a `Signals`) must
    /// never be used or dropped in the child afterwards: the number may be
    /// reused.
    pub fn close(&self) {
        crate::fork::drop_cached_status();
        for &fd in &self.fds {
            // SAFETY: closing a number the parent listed for children to drop;
            // the caller promises not to use its owner in the child again.
            unsafe { libc::close(fd) };
        }
    }
}
