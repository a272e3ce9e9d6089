//! Process management for a fork-per-connection server on Linux: `fork(2)` with
//! a checked safety contract, signal masks, SIGCHLD delivered through a
//! `signalfd(2)`, and `waitpid(2)` reaping into structured events.
//!
//! `procmgr` knows nothing of sockets, addresses or protocols. What a child does
//! is the caller's closure; which descriptors a parent waits on besides its
//! signals are the caller's.
//!
//! The design keeps the intent of the textbook server (no child exit is ever
//! missed) without its signal handler:
//!
//! - [`Signals::new`] blocks SIGCHLD (and whatever else the caller names)
//!   *before* the first fork, and opens a `signalfd` for them. A child that exits
//!   at once leaves its SIGCHLD pending; nothing is lost.
//! - [`Signals::wait`] polls that descriptor beside the caller's (a listener,
//!   say). No handler runs, so nothing async-signal-unsafe can happen in one,
//!   and no wake-up is lost between a check and the wait.
//! - [`Children::reap`] loops `waitpid(WNOHANG)` in ordinary code, after the
//!   signal was read, until nothing is left to reap.
//! - [`fork_child`] refuses to fork a multi-threaded process, resets the
//!   child's mask and handlers, runs the closure under `catch_unwind`, and ends
//!   the child with `_exit` so the parent's destructors and buffers never run
//!   twice.
//!
//! ```no_run
//! use procmgr::{Children, Signal, Signals};
//!
//! // Block SIGCHLD before the first fork, so no exit can be missed.
//! let signals = Signals::new(&[Signal::CHLD, Signal::TERM])?;
//! let mut children = Children::new();
//!
//! let pid = procmgr::fork_child(|| {
//!     // The child: signal mask and handlers are already reset.
//!     7
//! })?;
//! children.insert(pid, "the first child");
//!
//! while !children.is_empty() {
//!     let wakeup = signals.wait(&[], None)?;
//!     if !wakeup.signaled {
//!         continue;
//!     }
//!     while let Some(signal) = signals.next()? {
//!         if signal == Signal::TERM {
//!             children.signal_all(Signal::TERM)?;
//!         }
//!     }
//!     for reaped in children.reap_ready() {
//!         let reaped = reaped?;
//!         println!("child {} ({:?}) {}", reaped.pid, reaped.info, reaped.exit);
//!     }
//! }
//! # Ok::<(), procmgr::ProcError>(())
//! ```

#![deny(missing_docs)]

mod creds;
mod error;
mod fds;
mod fork;
mod handoff;
mod pages;
mod reap;
mod signal;
mod table;
mod wait;

pub use creds::{Credentials, drop_privileges};
pub use error::ProcError;
pub use fds::{CloseList, close_in_child, close_other_fds};
pub use fork::{
    Fork, InChild, die_with_parent, fork, fork_child, fork_child_unchecked, fork_unchecked,
    thread_count,
};
pub use handoff::Handoff;
pub use reap::{ChildExit, ChildPid, Children, Reaped, Signalled, reap};
pub use signal::{
    MaskGuard, Ready, Signal, Signals, Wakeup, block, ignore, ignored_signals, kill,
    restore_default, unblock_all,
};
pub use wait::SharedWait;

#[cfg(test)]
mod tests;
