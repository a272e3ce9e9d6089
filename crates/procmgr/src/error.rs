//! `ProcError`: which process or signal operation failed.

use std::io;

use crate::{ChildPid, Signal};

/// A failed process or signal operation.
///
/// The OS error is kept as the [`source`](std::error::Error::source), so callers
/// can match its [`kind`](io::Error::kind) (a fork that failed with `EAGAIN` is
/// worth retrying later; one refused for threads is not).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// [`fork`](crate::fork) refused: the process has other threads, and a forked
    /// child may only do async-signal-safe work in that case.
    #[error("refusing to fork: the process has {threads} threads, fork needs exactly one")]
    MultiThreaded {
        /// How many threads the process had.
        threads: usize,
    },
    /// [`drop_privileges`](crate::drop_privileges): no user of that name.
    #[error("no user named {name:?}")]
    UnknownUser {
        /// The name asked for.
        name: String,
    },
    /// [`drop_privileges`](crate::drop_privileges): no group of that name.
    #[error("no group named {name:?}")]
    UnknownGroup {
        /// The name asked for.
        name: String,
    },
    /// [`drop_privileges`](crate::drop_privileges) failed at `step`.
    #[error("cannot drop privileges: cannot {step}")]
    DropPrivileges {
        /// What failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The number of threads could not be read from `/proc/self/status`.
    #[error("cannot count this process's threads")]
    ThreadCount {
        /// The I/O or parse error.
        #[source]
        source: io::Error,
    },
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    #[error("cannot ask for a signal on the parent's death")]
    ParentDeathSignal {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The parent exited before the child could ask to follow it.
    #[error("the parent process {parent} is already gone")]
    ParentGone {
        /// The parent's pid before the fork.
        parent: u32,
    },
    /// `fork(2)` failed: `EAGAIN` for a process limit, `ENOMEM` for memory.
    #[error("cannot fork")]
    Fork {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `pthread_sigmask(2)` failed, or a signal could not be put in a mask.
    #[error("cannot change the signal mask")]
    Mask {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Resetting a signal's disposition in a new child failed.
    #[error("cannot reset the disposition of {signal}")]
    Disposition {
        /// The signal concerned.
        signal: Signal,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `signalfd(2)` could not be created.
    #[error("cannot create a signalfd")]
    SignalFd {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading from the signalfd failed.
    #[error("cannot read a signal from the signalfd")]
    ReadSignal {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `poll(2)` on the signalfd and the caller's descriptors failed.
    #[error("cannot wait for signals and descriptors")]
    Poll {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `waitpid(2)` failed for a reason other than having no children.
    #[error("cannot reap children")]
    Wait {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Closing a new child's inherited descriptors failed.
    #[error("cannot close inherited descriptors")]
    CloseFds {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Passing a descriptor over a [`Handoff`](crate::Handoff) channel failed.
    #[error("cannot {step} a descriptor over the hand-off channel")]
    Handoff {
        /// `create`, `send` or `receive`.
        step: &'static str,
        /// The OS error, or what was wrong with the message.
        #[source]
        source: io::Error,
    },
    /// `kill(2)` failed.
    #[error("cannot send {signal} to process {pid}")]
    Kill {
        /// The target.
        pid: ChildPid,
        /// The signal that was to be sent.
        signal: Signal,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Turns a nix errno into the `io::Error` kept as a source.
pub(crate) fn os(errno: nix::errno::Errno) -> io::Error {
    io::Error::from(errno)
}
