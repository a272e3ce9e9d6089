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
    crate::fork::forget_cached_stat();
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
    if err.raw_os_error() == Some(libc::ENOSYS) {
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
