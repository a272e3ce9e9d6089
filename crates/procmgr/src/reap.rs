//! Reaping: `waitpid(2)` decoded into [`ChildExit`], and the [`Children`]
//! registry that knows which live children are ours and what they are for.

use std::fmt;

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

use crate::error::os;
use crate::table::PidTable;
use crate::{ProcError, Signal, kill};

/// The pid of a child process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildPid(i32);

impl ChildPid {
    /// Wraps a raw pid; `None` unless it is positive.
    #[must_use]
    pub fn from_raw(pid: i32) -> Option<Self> {
        (pid > 0).then_some(Self(pid))
    }

    /// The raw pid.
    #[must_use]
    pub fn as_raw(self) -> i32 {
        self.0
    }

    pub(crate) fn from_pid(pid: Pid) -> Self {
        Self(pid.as_raw())
    }
}

impl fmt::Display for ChildPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ChildPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited on its own with this status (`WIFEXITED`, `WEXITSTATUS`).
    Exited(i32),
    /// A signal killed it (`WIFSIGNALED`, `WTERMSIG`), perhaps dumping core
    /// (`WCOREDUMP`).
    Signaled {
        /// The signal that killed it.
        signal: Signal,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
    /// It ended, but how is not known: it was reaped behind the registry's
    /// back (by another `waitpid`, or by the kernel while SIGCHLD was ignored),
    /// or its status could not be decoded.
    Unknown,
}

impl ChildExit {
    /// Decodes a raw `waitpid` status; `None` for a stop or continue report.
    #[must_use]
    pub fn from_wait_status(status: i32) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(Self::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            let signal = Signal::from_raw(libc::WTERMSIG(status))?;
            Some(Self::Signaled { signal, core_dumped: libc::WCOREDUMP(status) })
        } else {
            None
        }
    }

    /// Exited with status 0.
    #[must_use]
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

impl fmt::Display for ChildExit {
    /// `exited with status 0`, `killed by signal 9 (SIGKILL)`,
    /// `killed by signal 11 (SIGSEGV), core dumped`, `ended with an unknown status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Exited(code) => write!(f, "exited with status {code}"),
            Self::Signaled { signal, core_dumped } => {
                write!(f, "killed by signal {}", signal.as_raw())?;
                if let Some(name) = signal.name() {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            Self::Unknown => f.write_str("ended with an unknown status"),
        }
    }
}

/// What one `waitpid(-1, WNOHANG)` found.
enum Wait {
    /// A child ended and was reaped: its pid and raw status.
    Ended(ChildPid, i32),
    /// Children exist, none has ended.
    NoneReady,
    /// The process has no children at all (`ECHILD`).
    NoChildren,
}

fn wait_any() -> Result<Wait, ProcError> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int; pid -1 and WNOHANG make this
        // a non-blocking query for any child. nix's wrapper is avoided because it
        // fails (after reaping!) on a real-time signal it has no name for.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        return match pid {
            0 => Ok(Wait::NoneReady),
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => Ok(Wait::NoChildren),
                errno => Err(ProcError::Wait { source: os(errno) }),
            },
            pid => Ok(Wait::Ended(ChildPid(pid), status)),
        };
    }
}

/// `waitpid(-1, WNOHANG)`: reaps one child of this process that has ended.
///
/// `Ok(None)` means no child has ended yet, or there are no children at all.
/// Call it in a loop until `None`: several exits can share one SIGCHLD. This
/// reaps any child, registered or not: a program that keeps a [`Children`]
/// registry should reap through it instead, or the registry will only learn of
/// those exits as [`ChildExit::Unknown`].
///
/// # Errors
/// [`ProcError::Wait`] for anything but "no children" (`ECHILD`).
pub fn reap() -> Result<Option<(ChildPid, ChildExit)>, ProcError> {
    match wait_any()? {
        Wait::Ended(pid, status) => {
            Ok(Some((pid, ChildExit::from_wait_status(status).unwrap_or(ChildExit::Unknown))))
        }
        Wait::NoneReady | Wait::NoChildren => Ok(None),
    }
}

/// A child that was reaped, with what the registry knew of it.
#[derive(Debug)]
pub struct Reaped<T> {
    /// Its pid, now free for reuse by the system.
    pub pid: ChildPid,
    /// How it ended.
    pub exit: ChildExit,
    /// What was registered for it with [`Children::insert`]; `None` for a child
    /// that was never registered.
    pub info: Option<T>,
}

/// The registry of live children, each with the caller's data (a peer address,
/// a start time).
///
/// Register a child right after forking it and reap only through the registry,
/// so the two never disagree; the registry reaps with `waitpid(-1)`, so it
/// assumes every child of the process is its business.
///
/// A forked child finds its copy of the registry empty: it has no children
/// of its own, and cannot signal or reap its parent's by mistake. (The
/// entries live in pages the kernel gives a child zero-filled,
/// `MADV_WIPEONFORK`: registering the child just forked then writes no page
/// that child still shares, which would cost it a private copy, and every
/// held connection one page more. On kernels before 4.14 a child sees a
/// copy, as of any other memory.) Values are not dropped in the child: they
/// are the parent's.
#[derive(Debug)]
pub struct Children<T> {
    live: PidTable<T>,
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Self { live: PidTable::new() }
    }
}

impl<T> Children<T> {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a live child. A pid registered twice keeps the newer data.
    pub fn insert(&mut self, pid: ChildPid, info: T) {
        self.live.insert(pid, info);
    }

    /// How many registered children are alive (not yet reaped).
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// No registered child is alive.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.len() == 0
    }

    /// The data registered for a live child.
    #[must_use]
    pub fn get(&self, pid: ChildPid) -> Option<&T> {
        self.live.get(pid)
    }

    /// The data registered for a live child, to change it.
    #[must_use]
    pub fn get_mut(&mut self, pid: ChildPid) -> Option<&mut T> {
        self.live.get_mut(pid)
    }

    /// The live children and their data, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ChildPid, &T)> + '_ {
        self.live.iter()
    }

    /// The live children and their data, to change it, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ChildPid, &mut T)> + '_ {
        self.live.iter_mut()
    }

    /// The live children's pids, in no particular order.
    pub fn pids(&self) -> impl Iterator<Item = ChildPid> + '_ {
        self.live.iter().map(|(pid, _)| pid)
    }

    /// Reaps one ended child, if any, and removes it from the registry.
    ///
    /// If the kernel says there are no children left while the registry still
    /// holds some, those were reaped behind its back; each is then reported,
    /// one per call, as [`ChildExit::Unknown`], so the registry never keeps a
    /// child that no longer exists.
    ///
    /// # Errors
    /// As [`reap`].
    pub fn reap(&mut self) -> Result<Option<Reaped<T>>, ProcError> {
        let (pid, exit) = match wait_any()? {
            Wait::NoneReady => return Ok(None),
            Wait::Ended(pid, status) => {
                (pid, ChildExit::from_wait_status(status).unwrap_or(ChildExit::Unknown))
            }
            Wait::NoChildren => {
                let Some(pid) = self.pids().next() else { return Ok(None) };
                tracing::warn!(pid = pid.as_raw(), "a registered child was reaped elsewhere");
                (pid, ChildExit::Unknown)
            }
        };
        let info = self.live.remove(pid);
        if info.is_none() {
            tracing::debug!(pid = pid.as_raw(), %exit, "reaped a child that was not registered");
        }
        Ok(Some(Reaped { pid, exit, info }))
    }

    /// Reaps every child that has ended, one item each, until none is left
    /// (`waitpid(WNOHANG)` finds nothing). Stops after the first error.
    pub fn reap_ready(&mut self) -> impl Iterator<Item = Result<Reaped<T>, ProcError>> + '_ {
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let next = self.reap().transpose();
            failed = matches!(next, Some(Err(_)));
            next
        })
    }

    /// Sends `signal` to every registered child not reaped yet, whatever
    /// happens to each: how many were signalled, and the errors for those
    /// that could not be (a child reaped behind the registry's back, `ESRCH`,
    /// is neither).
    pub fn signal_each(&self, signal: Signal) -> Signalled {
        let mut signalled = Signalled { sent: 0, errors: Vec::new() };
        for pid in self.pids() {
            match kill(pid, signal) {
                Ok(()) => signalled.sent += 1,
                Err(ProcError::Kill { source, .. })
                    if source.raw_os_error() == Some(libc::ESRCH) => {}
                Err(err) => signalled.errors.push(err),
            }
        }
        signalled
    }

    /// Sends `signal` to every registered child not reaped yet; returns how many
    /// were signalled. A child that has exited but is not reaped yet (a zombie)
    /// still counts: it holds its pid, so no other process can have it. One
    /// reaped behind the registry's back (`ESRCH`) is skipped, not counted.
    ///
    /// # Errors
    /// The first [`ProcError::Kill`] other than `ESRCH`; the rest of the
    /// children are still signalled, but their count is lost:
    /// [`Children::signal_each`] keeps it.
    pub fn signal_all(&self, signal: Signal) -> Result<usize, ProcError> {
        let Signalled { sent, errors } = self.signal_each(signal);
        errors.into_iter().next().map_or(Ok(sent), Err)
    }
}

/// What [`Children::signal_each`] did.
#[derive(Debug)]
#[must_use]
pub struct Signalled {
    /// How many children were sent the signal.
    pub sent: usize,
    /// One error for each child that could not be.
    pub errors: Vec<ProcError>,
}
