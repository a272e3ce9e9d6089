//! The loop's counters, kept in one place: the loop updates them, and anything
//! that reports them (the SIGUSR1 line, the shutdown summary, an observer, a
//! metrics export later) only reads them.

use std::borrow::Cow;
use std::fmt;

use procmgr::{ChildExit, Signal};

/// What the server has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections a child was forked for.
    pub accepted: u64,
    /// Connections the admission policy refused, by reason, in the order the
    /// reasons first came up.
    pub refused: Vec<(Cow<'static, str>, u64)>,
    /// Times the admission policy held a connection and paused accepting.
    pub deferred: u64,
    /// Children alive now.
    pub active: usize,
    /// Children that exited with status 0.
    pub exited_ok: u64,
    /// Children that exited with another status.
    pub exited_error: u64,
    /// Children a signal killed.
    pub signaled: u64,
    /// Children whose end could not be told (reaped elsewhere).
    pub ended_unknown: u64,
    /// `fork(2)` failures (each retried).
    pub fork_failures: u64,
    /// `accept(2)` failures of any kind.
    pub accept_errors: u64,
    /// Datagrams received ([`Server::datagrams`](crate::Server::datagrams)).
    pub datagrams_received: u64,
    /// Datagrams answered.
    pub datagrams_answered: u64,
    /// Datagrams not answered because their source port is a service that
    /// would answer back ([`is_guarded_port`](crate::is_guarded_port)).
    pub datagrams_guarded: u64,
    /// Datagrams not answered because their source was over its rate.
    pub datagrams_limited: u64,
    /// Replies the socket would not take (a full send buffer).
    pub datagrams_unsent: u64,
}

impl Stats {
    /// All refused connections, whatever the reason.
    #[must_use]
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|(_, count)| count).sum()
    }

    pub(crate) fn count_refusal(&mut self, reason: &str) {
        match self.refused.iter_mut().find(|(known, _)| known == reason) {
            Some((_, count)) => *count += 1,
            None => self.refused.push((Cow::Owned(reason.to_owned()), 1)),
        }
    }

    pub(crate) fn count_exit(&mut self, exit: ChildExit) {
        match exit {
            ChildExit::Exited(0) => self.exited_ok += 1,
            ChildExit::Exited(_) => self.exited_error += 1,
            ChildExit::Signaled { .. } => self.signaled += 1,
            _ => self.ended_unknown += 1,
        }
    }
}

impl fmt::Display for Stats {
    /// `accepted 12, refused 3 (denied by the access rules 3), deferred 0,
    /// active 2, exited 0: 9, exited otherwise 1, killed by a signal 0, ended
    /// unknown 0, fork failures 0, accept errors 0`, and with datagrams,
    /// `; datagrams received 9, answered 6, guarded port 1, over the rate 2,
    /// unsent 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accepted {}, refused {}", self.accepted, self.refused_total())?;
        if !self.refused.is_empty() {
            let reasons: Vec<String> =
                self.refused.iter().map(|(reason, count)| format!("{reason} {count}")).collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        write!(
            f,
            ", deferred {}, active {}, exited 0: {}, exited otherwise {}, killed by a signal {}, \
             ended unknown {}, fork failures {}, accept errors {}",
            self.deferred,
            self.active,
            self.exited_ok,
            self.exited_error,
            self.signaled,
            self.ended_unknown,
            self.fork_failures,
            self.accept_errors
        )?;
        if self.datagrams_received > 0 {
            write!(
                f,
                "; datagrams received {}, answered {}, guarded port {}, over the rate {}, unsent {}",
                self.datagrams_received,
                self.datagrams_answered,
                self.datagrams_guarded,
                self.datagrams_limited,
                self.datagrams_unsent
            )?;
        }
        Ok(())
    }
}

/// How a shutdown went, reported once every child is reaped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownSummary {
    /// Connections served over the server's life.
    pub served: u64,
    /// Children still running when shutdown began.
    pub running: usize,
    /// Of those, the ones that ended on their own.
    pub finished: usize,
    /// Of those, the ones SIGTERM ended.
    pub terminated: usize,
    /// Of those, the ones SIGKILL ended.
    pub killed: usize,
}

impl ShutdownSummary {
    pub(crate) fn count(&mut self, exit: ChildExit) {
        match exit {
            ChildExit::Signaled { signal: Signal::TERM, .. } => self.terminated += 1,
            ChildExit::Signaled { signal: Signal::KILL, .. } => self.killed += 1,
            _ => self.finished += 1,
        }
    }
}

impl fmt::Display for ShutdownSummary {
    /// `served 40; 3 running at shutdown: 1 finished, 1 ended by SIGTERM, 1 killed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {}; {} running at shutdown: {} finished, {} ended by SIGTERM, {} killed",
            self.served, self.running, self.finished, self.terminated, self.killed
        )
    }
}
