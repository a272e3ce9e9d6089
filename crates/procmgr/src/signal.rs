//! Signals: numbers, masks scoped by a guard, a `signalfd` to read them as data,
//! and `poll(2)` on it beside the caller's descriptors.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{self as nix_signal, SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::os;
use crate::{ChildPid, ProcError};

/// A signal number.
///
/// The constants name the signals a server deals with; [`Signal::from_raw`]
/// accepts any number the kernel can deliver, real-time signals included, since
/// a child can be killed by any of them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

impl Signal {
    /// `SIGHUP`: the terminal hung up, or "reload" by convention.
    pub const HUP: Self = Self(libc::SIGHUP);
    /// `SIGINT`: Ctrl-C.
    pub const INT: Self = Self(libc::SIGINT);
    /// `SIGQUIT`: Ctrl-\.
    pub const QUIT: Self = Self(libc::SIGQUIT);
    /// `SIGKILL`: cannot be caught, blocked or ignored.
    pub const KILL: Self = Self(libc::SIGKILL);
    /// `SIGUSR1`.
    pub const USR1: Self = Self(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Self = Self(libc::SIGUSR2);
    /// `SIGPIPE`: a write to a pipe or socket with no reader.
    pub const PIPE: Self = Self(libc::SIGPIPE);
    /// `SIGALRM`.
    pub const ALRM: Self = Self(libc::SIGALRM);
    /// `SIGTERM`: the polite request to stop.
    pub const TERM: Self = Self(libc::SIGTERM);
    /// `SIGCHLD`: a child stopped, continued or exited.
    pub const CHLD: Self = Self(libc::SIGCHLD);

    /// The signals whose default action ends the process and that come from
    /// outside rather than from a fault of the program's own: SIGHUP, SIGINT,
    /// SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGSTKFLT, SIGVTALRM,
    /// SIGPROF, SIGIO, SIGPWR, SIGXCPU, SIGXFSZ, and every real-time signal
    /// (SIGRTMIN to SIGRTMAX). SIGPIPE is left out: Rust programs ignore it
    /// and see `EPIPE` instead. A long-running server blocks these and reads
    /// them from a [`Signals`], so that none ends it without a word.
    #[must_use]
    pub fn fatal_by_default() -> Vec<Self> {
        let named = [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGSTKFLT,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGPWR,
            libc::SIGXCPU,
            libc::SIGXFSZ,
        ];
        named.into_iter().chain(libc::SIGRTMIN()..=libc::SIGRTMAX()).map(Self).collect()
    }

    /// The signal with this number, if the kernel can deliver it (1 to 64 on Linux).
    #[must_use]
    pub fn from_raw(signo: i32) -> Option<Self> {
        (1..=libc::SIGRTMAX()).contains(&signo).then_some(Self(signo))
    }

    /// The signal number.
    #[must_use]
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The conventional name (`"SIGTERM"`), or `None` for real-time signals.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        nix_signal::Signal::try_from(self.0).ok().map(nix_signal::Signal::as_str)
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM`, or `signal 40` for a number without a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A `SigSet` of any signal numbers, real-time ones included (nix's own
/// `SigSet::add` only takes the named signals).
fn sigset(signals: &[Signal]) -> Result<SigSet, ProcError> {
    let mut raw = *SigSet::empty().as_ref();
    for signal in signals {
        // SAFETY: `raw` is an initialised, writable sigset_t; sigaddset only
        // checks the number and sets one bit.
        if unsafe { libc::sigaddset(&mut raw, signal.as_raw()) } != 0 {
            return Err(ProcError::Mask { source: std::io::Error::last_os_error() });
        }
    }
    // SAFETY: `raw` came from an initialised SigSet and was only changed by
    // sigaddset, so it is a valid sigset_t.
    Ok(unsafe { SigSet::from_sigset_t_unchecked(raw) })
}

/// Whether `set` contains `signal` (for any signal number).
fn contains(set: &SigSet, signal: Signal) -> bool {
    // SAFETY: `set` is a valid sigset_t, only read.
    unsafe { libc::sigismember(set.as_ref(), signal.as_raw()) == 1 }
}

/// Unblocks, when dropped, the signals that [`block`] newly blocked (those that
/// were blocked already stay blocked), so guards may be dropped in any order.
///
/// A mask belongs to a thread, so the guard cannot be sent to another one.
#[derive(Debug)]
#[must_use = "the previous mask is restored on drop"]
pub struct MaskGuard {
    newly_blocked: SigSet,
    _same_thread: PhantomData<*const ()>,
}

impl Drop for MaskGuard {
    fn drop(&mut self) {
        if let Err(errno) = self.newly_blocked.thread_unblock() {
            tracing::warn!(error = %errno, "cannot restore the signal mask");
        }
    }
}

/// Empties the calling thread's signal mask, as a forked child's is: for a
/// process started by another that may have left signals blocked across
/// `execve` (a superserver, in inetd mode).
///
/// # Errors
/// [`ProcError::Mask`] if the call fails.
pub fn unblock_all() -> Result<(), ProcError> {
    SigSet::empty().thread_set_mask().map_err(|e| ProcError::Mask { source: os(e) })
}

/// `pthread_sigmask(SIG_BLOCK)`: blocks `signals` in the calling thread until the
/// guard is dropped. A blocked signal stays pending instead of being delivered.
/// Real-time signals are accepted; SIGKILL and SIGSTOP are silently not blocked,
/// as the kernel never blocks them.
///
/// In a single-threaded process this is the process mask. Threads spawned while
/// the guard lives inherit the blocked mask.
///
/// # Errors
/// [`ProcError::Mask`] for a signal that cannot be blocked or a failed call.
pub fn block(signals: &[Signal]) -> Result<MaskGuard, ProcError> {
    block_set(signals, &sigset(signals)?)
}

/// [`block`], given `signals` already made into `set`.
fn block_set(signals: &[Signal], set: &SigSet) -> Result<MaskGuard, ProcError> {
    let previous = set
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| ProcError::Mask { source: os(e) })?;
    let newly: Vec<Signal> =
        signals.iter().copied().filter(|&signal| !contains(&previous, signal)).collect();
    Ok(MaskGuard { newly_blocked: sigset(&newly)?, _same_thread: PhantomData })
}

/// Sets each of `signals` to be ignored (`SIG_IGN`). Ignoring survives
/// [`fork`](crate::fork)'s reset and `execve(2)`. A child that the parent
/// shuts down itself ignores SIGINT and SIGQUIT this way, so a Ctrl-C sent to
/// the whole terminal process group reaches only the parent.
///
/// # Errors
/// [`ProcError::Disposition`] for a signal that cannot be ignored (SIGKILL,
/// SIGSTOP) or a failed call.
pub fn ignore(signals: &[Signal]) -> Result<(), ProcError> {
    for &signal in signals {
        crate::fork::set_disposition(signal.as_raw(), libc::SIG_IGN)
            .map_err(|source| ProcError::Disposition { signal, source })?;
    }
    Ok(())
}

/// Gives each of `signals` its default action (`SIG_DFL`, no flags), whether it
/// was ignored or caught. A child uses it to undo what its launcher ignored (a
/// SIGTERM ignored by whoever started the parent survives `execve(2)` and
/// [`fork`](crate::fork), and would make the parent-death signal and shutdown
/// requests do nothing). Async-signal-safe.
///
/// # Errors
/// [`ProcError::Disposition`] for SIGKILL, SIGSTOP, a signal the C library
/// reserves, or a failed call.
pub fn restore_default(signals: &[Signal]) -> Result<(), ProcError> {
    for &signal in signals {
        crate::fork::set_default(signal.as_raw())
            .map_err(|source| ProcError::Disposition { signal, source })?;
    }
    Ok(())
}

/// The signals this process ignores (`SIG_IGN`), real-time ones included, read
/// with `sigaction(2)`: one query per signal number. The signals the C library
/// reserves for itself (32 and 33 under glibc) cannot be queried or changed and
/// are left out. A server reads them once
/// at start-up, so that each child can restore just those with
/// [`restore_default`] instead of querying every signal again.
#[must_use]
pub fn ignored_signals() -> Vec<Signal> {
    (1..=libc::SIGRTMAX())
        .filter(|&signo| signo != libc::SIGKILL && signo != libc::SIGSTOP)
        .filter(|&signo| crate::fork::current_handler(signo) == Some(libc::SIG_IGN))
        .filter_map(Signal::from_raw)
        .collect()
}

/// `kill(2)`: sends `signal` to one child.
///
/// A child that has exited but is not reaped yet (a zombie) still has its pid,
/// so this succeeds; once it is reaped the pid is free for reuse, which is why
/// the registry ([`Children::signal_all`](crate::Children::signal_all)) only
/// signals children it has not reaped.
///
/// # Errors
/// [`ProcError::Kill`], for instance `ESRCH` when no such process exists or
/// `EPERM`.
pub fn kill(pid: ChildPid, signal: Signal) -> Result<(), ProcError> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the
    // pid is positive (ChildPid), so it targets one process, never a group.
    let rc = unsafe { libc::kill(pid.as_raw(), signal.as_raw()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(ProcError::Kill { pid, signal, source: std::io::Error::last_os_error() })
    }
}

/// Signals read as data: the named signals are blocked and arrive through a
/// non-blocking, close-on-exec `signalfd(2)` that the caller polls.
///
/// This replaces a signal handler. Nothing runs asynchronously, so there is no
/// async-signal-safety to get wrong, and a signal that arrives while the caller
/// is busy stays readable until it is read.
///
/// Create it before spawning threads or forking: the mask is per thread, and a
/// thread that does not block the signals would take them instead (a SIGCHLD
/// taken by such a thread is discarded, a SIGTERM kills the process). It
/// cannot be sent to another thread. Dropping it closes the descriptor and then
/// unblocks what it blocked, at which point any signal still pending (unread)
/// is delivered normally.
///
/// When SIGCHLD is in the set, its disposition is set to the default (with no
/// `SA_NOCLDWAIT`): a SIGCHLD ignored by whoever started this process (the
/// setting survives `execve`) would make the kernel reap children itself,
/// send no signal, and leave nothing for `waitpid` to report.
#[derive(Debug)]
pub struct Signals {
    // Field order is drop order: close the descriptor, then unblock. The guard
    // also keeps `Signals` on the thread whose mask it changed.
    fd: SignalFd,
    _blocked: MaskGuard,
}

/// What [`Signals::wait`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Wakeup {
    /// A signal can be read with [`Signals::next`].
    pub signaled: bool,
    /// For each of the caller's descriptors, in order: readable, or in an error
    /// or hang-up state that the next read or accept will report.
    pub ready: Vec<bool>,
}

impl Signals {
    /// Blocks `signals` and opens a `signalfd` for them.
    ///
    /// # Errors
    /// [`ProcError::Mask`] if the mask cannot be changed, [`ProcError::SignalFd`]
    /// if the descriptor cannot be created.
    pub fn new(signals: &[Signal]) -> Result<Self, ProcError> {
        if let Ok(threads @ 2..) = crate::thread_count() {
            tracing::warn!(threads, "signals blocked in one thread of several may go astray");
        }
        let set = sigset(signals)?;
        if signals.contains(&Signal::CHLD) {
            crate::fork::set_default(libc::SIGCHLD)
                .map_err(|source| ProcError::Disposition { signal: Signal::CHLD, source })?;
        }
        let blocked = block_set(signals, &set)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| ProcError::SignalFd { source: os(e) })?;
        Ok(Self { fd, _blocked: blocked })
    }

    /// Reads one pending signal, or `None` when none is pending. Never blocks.
    ///
    /// Standard signals coalesce: ten children exiting at once may be one
    /// SIGCHLD, which is why reaping loops until `waitpid` finds nothing.
    ///
    /// # Errors
    /// [`ProcError::ReadSignal`] if `read(2)` fails.
    pub fn next(&self) -> Result<Option<Signal>, ProcError> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    tracing::trace!(signo, sender = info.ssi_pid, "signal read");
                    // The kernel only queues signals from our mask, all valid.
                    return Signal::from_raw(signo).map(Some).ok_or_else(|| {
                        let message = format!("signalfd reported signal number {signo}");
                        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, message);
                        ProcError::ReadSignal { source }
                    });
                }
                Ok(None) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(ProcError::ReadSignal { source: os(errno) }),
            }
        }
    }

    /// `poll(2)`: waits until a signal is pending, one of `others` is readable,
    /// or `timeout` passes (`None` waits forever).
    ///
    /// A `None` slot in `others` is skipped and reported not ready, so the
    /// caller can stop watching a descriptor (a listener at its child limit, say)
    /// without renumbering the rest. An interruption by a signal outside the
    /// mask returns with nothing ready rather than an error.
    ///
    /// # Errors
    /// [`ProcError::Poll`] if `poll(2)` fails.
    pub fn wait(
        &self,
        others: &[Option<BorrowedFd<'_>>],
        timeout: Option<Duration>,
    ) -> Result<Wakeup, ProcError> {
        let mut fds: Vec<_> = std::iter::once(Some(self.fd.as_fd()))
            .chain(others.iter().copied())
            .map(watch)
            .collect();
        let mut wakeup = Wakeup { signaled: false, ready: vec![false; others.len()] };
        if poll_fds(&mut fds, timeout)? {
            wakeup.signaled = fds[0].revents != 0;
            for (ready, fd) in wakeup.ready.iter_mut().zip(&fds[1..]) {
                *ready = fd.revents != 0;
            }
        }
        Ok(wakeup)
    }

    /// [`Signals::wait`] for a server's loop: the same wait for at most
    /// [`Ready::CAPACITY`] descriptors, answered in a [`Ready`] that lives on
    /// the stack, with the `pollfd` array on the stack too. It writes to no
    /// heap memory: every page a parent writes after a fork becomes a private
    /// copy in each child alive at that moment, so a parent that touched the
    /// heap on every wait would cost each child pages of memory.
    ///
    /// # Errors
    /// [`ProcError::Poll`] if `poll(2)` fails, or (`InvalidInput`) for more than
    /// [`Ready::CAPACITY`] descriptors.
    pub fn wait_ready<'fd>(
        &self,
        others: impl IntoIterator<Item = Option<BorrowedFd<'fd>>>,
        timeout: Option<Duration>,
    ) -> Result<Ready, ProcError> {
        let unwatched = libc::pollfd { fd: -1, events: 0, revents: 0 };
        let mut fds = [unwatched; Ready::CAPACITY + 1];
        fds[0] = watch(Some(self.fd.as_fd()));
        let mut count = 1;
        for fd in others {
            let Some(slot) = fds.get_mut(count) else { return Err(Ready::too_many()) };
            *slot = watch(fd);
            count += 1;
        }
        let mut ready = Ready::default();
        if !poll_fds(&mut fds[..count], timeout)? {
            return Ok(ready);
        }
        ready.signaled = fds[0].revents != 0;
        for (index, fd) in fds[1..count].iter().enumerate() {
            if fd.revents != 0 {
                ready.mark(index);
            }
        }
        Ok(ready)
    }
}

/// Which of a [`Signals::wait_ready`] caller's descriptors are ready, and
/// whether a signal is pending: a plain value, no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Ready {
    /// A signal can be read with [`Signals::next`].
    pub signaled: bool,
    /// Bit `i`: the caller's descriptor `i` is ready.
    bits: u64,
}

impl Ready {
    /// How many descriptors [`Signals::wait_ready`] watches at most.
    pub const CAPACITY: usize = 64;

    /// Whether the caller's descriptor `index` is readable, or in an error or
    /// hang-up state that the next read or accept will report.
    #[must_use]
    pub fn is_ready(&self, index: usize) -> bool {
        index < Self::CAPACITY && self.bits & (1 << index) != 0
    }

    /// Nothing was ready: the wait timed out (or a signal interrupted it).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.signaled && self.bits == 0
    }

    /// Marks descriptor `index` ready (an index past the capacity is
    /// ignored).
    pub(crate) fn mark(&mut self, index: usize) {
        if let Some(bit) = u32::try_from(index).ok().and_then(|i| 1_u64.checked_shl(i)) {
            self.bits |= bit;
        }
    }

    /// The error for more descriptors than a wait can watch.
    pub(crate) fn too_many() -> ProcError {
        let message = format!("at most {} descriptors can be watched", Self::CAPACITY);
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        ProcError::Poll { source }
    }
}

/// A `pollfd` waiting for input on `fd`; `None` is a negative descriptor,
/// which `poll(2)` skips and reports not ready.
fn watch(fd: Option<BorrowedFd<'_>>) -> libc::pollfd {
    libc::pollfd { fd: fd.map_or(-1, |fd| fd.as_raw_fd()), events: libc::POLLIN, revents: 0 }
}

/// `poll(2)` on `fds`; false (nothing ready) if interrupted by a signal.
fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<bool, ProcError> {
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid, initialised array of `count` `pollfd`s for the
    // duration of the call; poll(2) writes only their `revents` fields.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), count, poll_timeout(timeout)) };
    if rc >= 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EINTR => Ok(false),
        errno => Err(ProcError::Poll { source: os(errno) }),
    }
}

/// Rounds up to whole milliseconds, so a wait of 0.4 ms sleeps instead of
/// spinning, and clamps to what `poll(2)` accepts (`-1` waits forever).
fn poll_timeout(timeout: Option<Duration>) -> libc::c_int {
    let Some(timeout) = timeout else { return -1 };
    libc::c_int::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
