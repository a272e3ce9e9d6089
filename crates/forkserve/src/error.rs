//! `ServeError`: why a server could not start or had to stop.

use netcore::NetError;
use procmgr::{ChildPid, ProcError};

/// A failure that stops [`Server::serve`](crate::Server::serve) (or keeps a
/// server from being built).
///
/// Each variant names the stage; the inner error names the operation and its
/// address or pid, so the message chain reads
/// `cannot bind 0.0.0.0:7000: Address already in use (os error 98)`.
/// Trouble the loop recovers from (out of descriptors, a failed fork, a
/// refused connection) never ends up here: it is reported as an
/// [`Event`](crate::Event) and retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The server was given no listener.
    #[error("no address to listen on")]
    NoListeners,
    /// [`Inetd::serve`](crate::Inetd::serve): standard input is not a
    /// connected TCP socket.
    #[error("standard input is not a TCP connection")]
    NotAConnection(#[source] std::io::Error),
    /// More listeners than one wait can watch.
    #[error("{count} listeners: at most {max} can be served at once")]
    TooManyListeners {
        /// How many were given.
        count: usize,
        /// [`MAX_LISTENERS`](crate::MAX_LISTENERS).
        max: usize,
    },
    /// Binding or preparing a listener failed.
    #[error(transparent)]
    Listen(NetError),
    /// `accept(2)` failed in a way waiting cannot fix.
    #[error(transparent)]
    Accept(NetError),
    /// Blocking the server's signals or opening the signalfd failed.
    #[error(transparent)]
    Signals(ProcError),
    /// The descriptors children must close could not be read.
    #[error(transparent)]
    Descriptors(ProcError),
    /// Waiting for events, or reading a signal, failed.
    #[error(transparent)]
    Wait(ProcError),
    /// Reaping children failed.
    #[error(transparent)]
    Reap(ProcError),
    /// `fork(2)` failed in a way waiting cannot fix (the process has threads,
    /// or its signal mask cannot be set).
    #[error(transparent)]
    Fork(ProcError),
    /// A datagram socket could not be made non-blocking.
    #[error("cannot set up the datagram sockets")]
    Datagrams(#[source] std::io::Error),
    /// The pre-forked pool's report channel could not be made or read.
    #[error("cannot run the pool of pre-forked children")]
    Prefork(#[source] std::io::Error),
    /// Children outlived SIGKILL at shutdown (stuck in the kernel, say).
    #[error("{} children could not be reaped after SIGKILL", pids.len())]
    Unreaped {
        /// Their pids.
        pids: Vec<ChildPid>,
    },
}

/// An error and its causes on one line, for a log field.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |&e| e.source()).map(ToString::to_string);
    causes.collect::<Vec<_>>().join(": ")
}
