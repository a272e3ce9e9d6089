//! A fork-per-connection TCP server as a library: the parent's loop that
//! accepts, forks a child per connection, reaps, and shuts down in stages,
//! generic over what a child does.
//!
//! A whole server, RFC 867 daytime, as `examples/daytime.rs` has it:
//!
//! ```no_run
#![doc = include_str!("../examples/daytime.rs")]
//! ```
//!
//! Hand [`Server`] your addresses (or listeners bound elsewhere) and a
//! closure; the closure runs in a new child process for each connection and
//! returns its exit code. Everything else comes with it:
//!
//! - a child limit that leaves further clients waiting in the kernel's backlog
//!   ([`Server::max_children`]), and back-off, not a busy loop, when
//!   descriptors, processes or memory run out (a connection whose fork failed
//!   is kept and retried);
//! - every child reaped as soon as it exits, and logged with how it ended
//!   (`child exited with status 0`, `child killed by signal 9 (SIGKILL)`);
//!   SIGCHLD, SIGTERM and SIGINT are read from a `signalfd`, so no signal
//!   handler runs and no exit is lost;
//! - shutdown on SIGTERM or SIGINT: the listeners close, children get a grace
//!   period ([`Server::grace`]), then SIGTERM, then SIGKILL; a second signal
//!   cuts the wait, a third kills; `serve` returns `Ok` once all are reaped;
//! - clean children: the listeners, the signalfd and what the launcher leaked
//!   are closed (what the program opened itself stays usable), nothing is
//!   blocked or caught, SIGTERM always works, Ctrl-C at the terminal reaches
//!   the parent alone, and a child gets SIGTERM if the parent dies;
//! - every signal that would kill a process handled: SIGQUIT shuts down at
//!   once, SIGUSR1 logs the counters ([`Stats`]), SIGHUP and the rest are
//!   logged, and a signal the launcher ignored stays ignored;
//! - a decision on each connection before any fork ([`Admit`]; [`Policy`]
//!   does access rules, a limit per address and a rate), and every
//!   step reported as an [`Event`], logged through `tracing` with fields.
//!
//! The library never prints and never installs a `tracing` subscriber: set one
//! up, as the example does, to see its log. It knows no protocol: what a child
//! does with its [`Connection`] is the caller's closure.
//!
//! Linux only: it reads signals from a `signalfd(2)`, checks `/proc` before
//! each fork, and closes a child's descriptors with `close_range(2)`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admit;
mod child;
mod datagram;
mod error;
mod event;
mod exec;
mod inetd;
mod policy;
mod pool;
mod proxy;
mod server;
mod stats;
mod supervisor;

pub use admit::{Admit, Verdict};
pub use child::{Connection, SETUP_FAILED};
pub use datagram::is_guarded_port;
pub use error::ServeError;
pub use event::Event;
pub use exec::{EXEC_FAILED, EXEC_NOT_FOUND, Exec};
pub use inetd::{Inetd, REFUSED};
pub use netcore::{DEFAULT_BACKLOG, ListenOptions, Listener, NetError};
pub use policy::{Cidr, CidrError, DENIED, Policy, TOO_MANY_FROM_SOURCE};
pub use procmgr::{ChildExit, ChildPid, Credentials, ProcError, Signal, drop_privileges};
pub use server::{MAX_LISTENERS, Server};
pub use stats::{ShutdownSummary, Stats};

#[cfg(test)]
mod tests {
    /// The README leads with the daytime example: the same code, not a copy
    /// that drifts.
    #[test]
    fn the_readme_shows_the_daytime_example_as_it_is() {
        let readme = include_str!("../README.md");
        let example = include_str!("../examples/daytime.rs");
        assert!(readme.contains(example), "README.md must quote examples/daytime.rs verbatim");
    }

    /// One wait watches every listener: more than it can hold is refused up
    /// front, before anything is bound.
    #[test]
    fn more_listeners_than_one_wait_holds_are_refused() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let err = crate::Server::bind(&[addr; crate::MAX_LISTENERS + 1], 16).err().unwrap();
        assert!(
            matches!(err, crate::ServeError::TooManyListeners { count: 64, max: 63 }),
            "{err:?}"
        );
        let err = crate::Server::new(Vec::new()).err().unwrap();
        assert!(matches!(err, crate::ServeError::NoListeners), "{err:?}");
    }
}
