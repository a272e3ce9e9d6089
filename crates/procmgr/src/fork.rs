//! `fork(2)` with its safety contract enforced, the child-side signal reset, and
//! the one way a child ends.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::{Mutex, PoisonError};

use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::ForkResult;

use crate::error::os;
use crate::pages::ParentPages;
use crate::{ChildPid, ProcError, Signal};

/// The two sides of a successful [`fork`], told apart by type.
#[derive(Debug)]
#[must_use = "the child side must end with InChild::exit"]
pub enum Fork {
    /// This is the parent; the value is the new child's pid.
    Parent(ChildPid),
    /// This is the new child, its signal mask empty and every caught signal
    /// back to its default action (ignored ones stay ignored, as across
    /// `execve(2)`). It must end with [`InChild::exit`].
    Child(InChild),
}

/// Proof of being the child of a [`fork`], and its only way out.
///
/// Leaving a forked child any other way (returning into the parent's code,
/// `std::process::exit`) would run the parent's destructors and flush its
/// inherited buffers a second time. So dropping an `InChild` without calling
/// [`InChild::exit`] (a forgotten match arm, an early `?`, a panic unwinding
/// through it) ends the child on the spot with [`InChild::DROPPED_EXIT_CODE`].
#[derive(Debug)]
#[must_use = "the child must end with InChild::exit"]
pub struct InChild {
    /// Forked from a single-threaded process, so the child may take locks
    /// (stdout's, the allocator's, the logger's).
    may_lock: bool,
}

impl InChild {
    /// The exit code of a child whose closure panicked (the same as a Rust
    /// program whose main thread panics).
    pub const PANIC_EXIT_CODE: i32 = 101;
    /// The exit code of a child whose `InChild` was dropped instead of used to
    /// exit (`EX_SOFTWARE` from sysexits.h): a bug in the caller.
    pub const DROPPED_EXIT_CODE: i32 = 70;
    /// The exit code of a child that could not reset its signal state
    /// (`EX_OSERR` from sysexits.h); [`fork`] exits such a child itself.
    pub const SETUP_EXIT_CODE: i32 = 71;

    /// Gives every caught signal back its default action and unblocks all
    /// signals, as `execve(2)` would; ignored signals stay ignored (so a write
    /// to a vanished peer stays an `EPIPE` error rather than a silent death by
    /// SIGPIPE, which Rust programs ignore), except SIGCHLD, which is reset to
    /// its default so the child can wait for children of its own.
    ///
    /// Async-signal-safe: only `sigaction(2)` and `sigprocmask(2)`.
    fn reset_signals(&self, caught: Option<u64>) -> Result<(), ProcError> {
        let reset = |signo| {
            set_default(signo).map_err(|source| ProcError::Disposition {
                signal: Signal::from_raw(signo).unwrap_or(Signal::CHLD),
                source,
            })
        };
        // SIGCHLD is reset whatever it was: SIG_DFL may carry SA_NOCLDWAIT.
        reset(libc::SIGCHLD)?;
        for signo in 1..=libc::SIGRTMAX() {
            // glibc reserves the real-time signals below its SIGRTMIN for
            // itself (thread cancellation, set*id), catches them, and refuses
            // any change (EINVAL): they are not ours to reset.
            let reserved = (32..libc::SIGRTMIN()).contains(&signo);
            if signo == libc::SIGKILL
                || signo == libc::SIGSTOP
                || signo == libc::SIGCHLD
                || reserved
            {
                continue;
            }
            let is_caught = match caught {
                // The parent's caught set, read just before the fork: one
                // call per caught signal instead of one query per signal.
                Some(mask) => mask & signal_bit(signo) != 0,
                None => current_handler(signo)
                    .is_some_and(|handler| handler != libc::SIG_DFL && handler != libc::SIG_IGN),
            };
            if is_caught {
                reset(signo)?;
            }
        }
        SigSet::empty().thread_set_mask().map_err(|e| ProcError::Mask { source: os(e) })
    }

    /// Ends the child with `exit_code`: flushes the child's standard output
    /// (only when forked from a single-threaded process: after a multi-threaded
    /// fork its lock may be held by a thread that no longer exists), then
    /// `_exit(2)`. No destructor, `atexit` hook or inherited buffer runs.
    pub fn exit(self, exit_code: i32) -> ! {
        if self.may_lock {
            // Nothing useful can be done about a failed flush on the way out.
            let _ = io::stdout().flush();
        }
        exit_now(exit_code)
    }

    /// Runs `child` under `catch_unwind` and exits with its code; a panic exits
    /// with [`InChild::PANIC_EXIT_CODE`].
    fn run<F: FnOnce() -> i32>(self, child: F) -> ! {
        let code = panic::catch_unwind(AssertUnwindSafe(child)).unwrap_or(Self::PANIC_EXIT_CODE);
        self.exit(code)
    }
}

impl Drop for InChild {
    fn drop(&mut self) {
        exit_now(Self::DROPPED_EXIT_CODE)
    }
}

/// `_exit(2)`: ends the process at once, running nothing of ours.
fn exit_now(exit_code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and is async-signal-safe; it ends
    // the process without running any user-space cleanup.
    unsafe { libc::_exit(exit_code) }
}

/// The signal handler installed for `signo`, or `None` if it cannot be read.
pub(crate) fn current_handler(signo: i32) -> Option<libc::sighandler_t> {
    // Zeroed, not uninitialised: the C library may write only part of the
    // structure (the kernel's shorter signal mask, no padding).
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action makes this a pure query; `old` is valid for a
    // write of one `sigaction`.
    let rc = unsafe { libc::sigaction(signo, ptr::null(), old.as_mut_ptr()) };
    // SAFETY: all-zero bytes are a valid `sigaction`, and the call only wrote
    // valid field values over them.
    (rc == 0).then(|| unsafe { old.assume_init() }.sa_sigaction)
}

/// Sets `signo` to its default action, with no flags and an empty mask.
pub(crate) fn set_default(signo: i32) -> io::Result<()> {
    set_disposition(signo, libc::SIG_DFL)
}

/// Sets `signo` to `SIG_DFL` or `SIG_IGN`, with no flags and an empty mask.
/// Async-signal-safe.
pub(crate) fn set_disposition(signo: i32, handler: libc::sighandler_t) -> io::Result<()> {
    debug_assert!(handler == libc::SIG_DFL || handler == libc::SIG_IGN);
    // SAFETY: all-zero bytes are a valid `sigaction`: SIG_DFL, an empty mask,
    // no flags, no restorer.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // SAFETY: `action` is a valid action installing no code (SIG_DFL or
    // SIG_IGN), and a null old-action pointer is allowed.
    let rc = unsafe { libc::sigaction(signo, &action, ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `/proc/self/status`, opened once per process and read again with `pread`
/// into pages of its own: the thread check runs before every fork, and must
/// not need a free descriptor (a server that has just accepted with its last
/// descriptor must still fork). The pid says whose it is; a forked child
/// opens its own.
static STATUS: Mutex<Option<CachedStatus>> = Mutex::new(None);

/// The open file and the pages it is read into.
struct CachedStatus {
    /// Whose `/proc/self/status` this is.
    owner: u32,
    file: File,
    /// Where the text is read: pages a forked child gets zero-filled instead
    /// of sharing, so the read before each fork writes no page that a child
    /// still holds (read on the stack, it cost every child a private page).
    /// `None` if they could not be mapped; the text is then read on the
    /// stack.
    pages: Option<ParentPages>,
}

/// Drops the cached `/proc/self/status` descriptor without closing it, for
/// [`close_other_fds`](crate::close_other_fds), which closes it (its number
/// may then be reused, and must not be closed a second time).
pub(crate) fn forget_cached_status() {
    release_cached_status(std::mem::forget);
}

/// Closes the cached `/proc/self/status` descriptor, for
/// [`CloseList::close`](crate::CloseList::close) in a new child; the next
/// [`thread_count`] opens it again.
pub(crate) fn drop_cached_status() {
    release_cached_status(drop);
}

/// Empties the cache, handing its descriptor to `file` (to close or forget).
/// Its pages read as zeros in a child (the parent's hold the text it read):
/// there they hold no memory and stay mapped, rather than cost every child a
/// system call; elsewhere they are unmapped. Never waits for the lock: in a
/// child forked from a multi-threaded process it may be held forever, and the
/// cache is then left alone.
fn release_cached_status(file: fn(File)) {
    if let Ok(mut cached) = STATUS.try_lock() {
        if let Some(cached) = cached.take() {
            file(cached.file);
            match cached.pages {
                Some(pages) if pages.starts_with_zero() => std::mem::forget(pages),
                pages => drop(pages),
            }
        }
    }
}

/// How many threads this process has, from `/proc/self/status`.
///
/// The file is opened on the first call (close-on-exec) and kept; later calls
/// need no descriptor.
///
/// # Errors
/// [`ProcError::ThreadCount`] if the file cannot be opened, read or parsed (no
/// `/proc`, or out of descriptors on the first call).
pub fn thread_count() -> Result<usize, ProcError> {
    status().map(|status| status.threads)
}

/// What [`fork`] needs to know about this process, read in one `pread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// `Threads:`, the number of threads.
    pub(crate) threads: usize,
    /// `SigCgt:`, the signals with a handler: bit `n - 1` for signal `n`;
    /// `None` if it could not be read.
    pub(crate) caught: Option<u64>,
}

/// Bytes of `/proc/self/status` read in one `pread`: about 1.5 KB is usual; a
/// process in hundreds of groups has a longer `Groups:` line, before
/// `Threads:`, and is read whole.
const STATUS_READ: usize = 8192;

/// Reads [`Status`] from the cached `/proc/self/status`.
pub(crate) fn status() -> Result<Status, ProcError> {
    let failed = |source| ProcError::ThreadCount { source };
    let mut cached = STATUS.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    let cached = match &mut *cached {
        Some(cached) if cached.owner == pid => cached,
        slot => slot.insert(CachedStatus {
            owner: pid,
            file: File::open("/proc/self/status").map_err(failed)?,
            pages: ParentPages::new(STATUS_READ).ok(),
        }),
    };
    let parsed = match &mut cached.pages {
        Some(pages) => read_status(&cached.file, pages.as_mut_slice()),
        None => read_status_on_stack(&cached.file),
    };
    parsed.map_err(failed)?.ok_or_else(|| {
        failed(io::Error::new(io::ErrorKind::InvalidData, "no Threads: line in /proc/self/status"))
    })
}

/// Reads and parses the status text through `buf`, or whole into a vector
/// if it does not fit.
fn read_status(file: &File, buf: &mut [u8]) -> io::Result<Option<Status>> {
    let len = file.read_at(buf, 0)?;
    if len < buf.len() {
        return Ok(parse_status(&buf[..len]));
    }
    let mut whole = Vec::new();
    let mut reader = file;
    io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
    io::Read::read_to_end(&mut reader, &mut whole)?;
    Ok(parse_status(&whole))
}

/// [`read_status`] through a buffer on the stack, where the pages could not
/// be mapped; a function of its own, so the usual path's frame stays small.
#[inline(never)]
fn read_status_on_stack(file: &File) -> io::Result<Option<Status>> {
    read_status(file, &mut [0; STATUS_READ])
}

/// Finds `Threads:` (decimal) and `SigCgt:` (hexadecimal) in the text of
/// `/proc/PID/status`, whole lines only; no allocation. Without a readable
/// `SigCgt:` (a cut read, a 128-signal architecture) `caught` is `None`, and
/// the child asks for each signal's disposition instead.
pub(crate) fn parse_status(text: &[u8]) -> Option<Status> {
    let field = |name: &[u8]| {
        let line = text
            .split_inclusive(|&b| b == b'\n')
            .find(|line| line.starts_with(name) && line.ends_with(b"\n"))?;
        std::str::from_utf8(&line[name.len()..]).ok().map(str::trim)
    };
    let threads = field(b"Threads:")?.parse().ok()?;
    let mask = field(b"SigCgt:").filter(|mask| mask.len() <= 16);
    let caught = mask.and_then(|mask| u64::from_str_radix(mask, 16).ok());
    Some(Status { threads, caught })
}

/// The bit of signal `signo` in a `/proc/PID/status` signal mask.
pub(crate) fn signal_bit(signo: i32) -> u64 {
    u32::try_from(signo - 1).ok().and_then(|shift| 1u64.checked_shl(shift)).unwrap_or(0)
}

/// `prctl(PR_SET_PDEATHSIG)`: asks the kernel to send `signal` to this process
/// when its parent exits, so a child cannot outlive a parent killed with
/// SIGKILL or ended by an error.
///
/// Call it in the child with the parent's pid taken *before* the fork
/// (`std::process::id()` in the parent): if the parent died in between, the
/// request would come too late, and this reports [`ProcError::ParentGone`].
///
/// # Errors
/// [`ProcError::ParentGone`], or [`ProcError::ParentDeathSignal`] if the call fails.
pub fn die_with_parent(signal: Signal, parent: u32) -> Result<(), ProcError> {
    let arg = libc::c_ulong::try_from(signal.as_raw()).unwrap_or(0);
    // SAFETY: PR_SET_PDEATHSIG takes one integer argument (a valid signal
    // number, from `Signal`) and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, arg, 0, 0, 0) } != 0 {
        return Err(ProcError::ParentDeathSignal { source: io::Error::last_os_error() });
    }
    if std::os::unix::process::parent_id() != parent {
        return Err(ProcError::ParentGone { parent });
    }
    Ok(())
}

/// `fork(2)`, refusing with [`ProcError::MultiThreaded`] unless this process has
/// exactly one thread.
///
/// Only the calling thread survives a fork. If another thread held a lock (the
/// allocator's, stdout's, a logger's) at that moment, the child would inherit
/// it locked forever; with one thread, no lock can be held by anyone else, and
/// the child may do anything. Standard output is flushed first, so bytes
/// buffered by the parent are not written twice.
///
/// In the child, signals are reset before this returns (see [`Fork::Child`]);
/// a child that cannot reset them exits with [`InChild::SETUP_EXIT_CODE`].
/// Prefer [`fork_child`], which also catches a panic and makes sure the child
/// ends through [`InChild::exit`].
///
/// # Errors
/// [`ProcError::MultiThreaded`], [`ProcError::ThreadCount`],
/// [`ProcError::Mask`], or [`ProcError::Fork`] (`EAGAIN` when a process limit
/// is reached, `ENOMEM`).
pub fn fork() -> Result<Fork, ProcError> {
    // SAFETY: with `may_lock`, `fork_inner` itself checks that the process has
    // exactly one thread and refuses otherwise.
    unsafe { fork_inner(true) }
}

/// `fork(2)` without the thread check, for callers such as test harnesses that
/// are multi-threaded and know it.
///
/// # Safety
/// If the process has more than one thread, the child must only do
/// async-signal-safe work (see `signal-safety(7)`: no allocation or freeing, no
/// locks, no logging, no panics: the panic machinery allocates and locks before
/// anything can catch it) until it ends with [`InChild::exit`], which then does
/// not flush standard output.
///
/// # Errors
/// [`ProcError::Mask`] or [`ProcError::Fork`].
pub unsafe fn fork_unchecked() -> Result<Fork, ProcError> {
    // SAFETY: the caller upholds this function's contract, which is
    // `fork_inner`'s with `may_lock` false.
    unsafe { fork_inner(false) }
}

/// With `may_lock`, refuses unless the process has exactly one thread, and
/// the child resets the signals the parent had caught just before the fork
/// (read from `/proc/self/status`); without it, the child queries every
/// signal's disposition.
///
/// # Safety
/// Without `may_lock`, the child must only do async-signal-safe work.
unsafe fn fork_inner(may_lock: bool) -> Result<Fork, ProcError> {
    // Written bytes still in our buffer would otherwise be copied into the child
    // and written by both processes.
    let _ = io::stdout().flush();
    // Block every signal across the fork, so that no handler the parent may
    // have installed runs in the child before its dispositions are reset.
    let all = SigSet::all();
    let previous = all
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| ProcError::Mask { source: os(e) })?;
    // Read with every signal blocked, so no handler can change a disposition
    // between the reading and the fork.
    let caught = if may_lock {
        match status() {
            Ok(Status { threads: 1, caught }) => caught,
            Ok(Status { threads, .. }) => {
                restore(&previous);
                return Err(ProcError::MultiThreaded { threads });
            }
            Err(err) => {
                restore(&previous);
                return Err(err);
            }
        }
    } else {
        None
    };
    // SAFETY: with `may_lock` the process has exactly one thread (checked
    // just above; only this thread could start another, and it has not);
    // without it, the caller guarantees the child's restraint. The child branch
    // below only calls async-signal-safe functions until it hands over to a
    // caller who knows which side it is on.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(ForkResult::Child) => {
            let me = InChild { may_lock };
            // A child that cannot reset its signals must not run the caller's
            // code, and must not return an error either: the caller would take
            // it for a failed fork and carry on as a second parent.
            if let Err(err) = me.reset_signals(caught) {
                if may_lock {
                    tracing::error!(error = %err, "child cannot reset its signals");
                }
                me.exit(InChild::SETUP_EXIT_CODE)
            }
            Ok(Fork::Child(me))
        }
        Ok(ForkResult::Parent { child }) => {
            // A child exists now: an error here must not hide it from the caller.
            restore(&previous);
            let pid = ChildPid::from_pid(child);
            if may_lock {
                tracing::trace!(pid = pid.as_raw(), "forked");
            }
            Ok(Fork::Parent(pid))
        }
        Err(errno) => {
            restore(&previous);
            Err(ProcError::Fork { source: os(errno) })
        }
    }
}

/// Puts back the parent's mask after the fork. `pthread_sigmask` can only fail
/// for an invalid `how`, which `SIG_SETMASK` is not, so this cannot fail in
/// practice; if it ever did, the signals would merely stay blocked.
fn restore(previous: &SigSet) {
    if let Err(errno) = previous.thread_set_mask() {
        tracing::warn!(error = %errno, "cannot restore the signal mask after fork");
    }
}

/// Forks a child that runs `child` and exits with the code it returns; the
/// parent gets the child's pid. The child never returns from this call.
///
/// In the child, before `child` runs, every caught signal gets its default
/// action back and the signal mask is emptied (see [`Fork::Child`]).
/// A panic in `child` is caught and ends the child with
/// [`InChild::PANIC_EXIT_CODE`]; it never unwinds into the parent's code.
///
/// In the parent, `child` is dropped without being called, which closes any
/// descriptor it owns (an accepted connection, typically). To close one of the
/// parent's descriptors in the child only, capture a `&mut Option<_>` and
/// `take()` it in the closure: the child's memory is a copy, the parent's value
/// is untouched.
///
/// # Errors
/// As [`fork`]: the process must be single-threaded.
pub fn fork_child<F: FnOnce() -> i32>(child: F) -> Result<ChildPid, ProcError> {
    match fork()? {
        Fork::Parent(pid) => Ok(pid),
        Fork::Child(me) => me.run(child),
    }
}

/// [`fork_child`] without the thread check.
///
/// # Safety
/// As [`fork_unchecked`]: if the process has more than one thread, `child`
/// must only do async-signal-safe work and must not panic; that includes the
/// destructors of whatever it captured, which run in the child when it returns.
///
/// # Errors
/// [`ProcError::Mask`] or [`ProcError::Fork`].
pub unsafe fn fork_child_unchecked<F: FnOnce() -> i32>(child: F) -> Result<ChildPid, ProcError> {
    // SAFETY: forwarded from this function's own contract.
    match unsafe { fork_unchecked() }? {
        Fork::Parent(pid) => Ok(pid),
        Fork::Child(me) => me.run(child),
    }
}
