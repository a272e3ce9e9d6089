//! Waiting beside other processes on descriptors they share: the members of a
//! pool of pre-forked children, each blocked on the same listeners.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::error::os;
use crate::{ProcError, Ready};

/// An `epoll(7)` set of at most [`Ready::CAPACITY`] descriptors, each named by
/// the index [`SharedWait::add`] or [`SharedWait::add_shared`] returned.
///
/// A descriptor added as shared is one that other processes wait on too, each
/// in a set of its own: a new connection on a listener that sixteen idle
/// children watch wakes one of them (`EPOLLEXCLUSIVE`), not all sixteen to
/// race for one `accept`. A waiter busy elsewhere is skipped, so no event is
/// lost to it; the one woken may still find the event taken (the parent
/// accepted first, say), so it must read without blocking.
///
/// Make the set in the process that waits on it, after `fork`: a set
/// inherited across `fork` is the same kernel object in both processes, and
/// they would share its readiness.
///
/// ```
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixDatagram;
///
/// let (a, b) = UnixDatagram::pair()?;
/// let mut wait = procmgr::SharedWait::new()?;
/// let index = wait.add(a.as_fd())?;
/// b.send(b"x")?;
/// assert!(wait.wait()?.is_ready(index));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SharedWait {
    epoll: Epoll,
    count: usize,
}

impl SharedWait {
    /// An empty set, close-on-exec.
    ///
    /// # Errors
    /// [`ProcError::Poll`] if `epoll_create1(2)` fails.
    pub fn new() -> Result<Self, ProcError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|errno| ProcError::Poll { source: os(errno) })?;
        Ok(Self { epoll, count: 0 })
    }

    /// Watches `fd` for input; returns its index.
    ///
    /// # Errors
    /// [`ProcError::Poll`] if `epoll_ctl(2)` fails, or (`InvalidInput`) for
    /// more than [`Ready::CAPACITY`] descriptors.
    pub fn add(&mut self, fd: BorrowedFd<'_>) -> Result<usize, ProcError> {
        self.watch(fd, EpollFlags::EPOLLIN)
    }

    /// Watches `fd`, which other processes wait on too, for input: an event
    /// wakes one waiting process, not every one (`EPOLLEXCLUSIVE`, Linux 4.5;
    /// where the kernel refuses it, every waiter wakes, which costs time,
    /// never an event). Returns its index.
    ///
    /// # Errors
    /// As [`SharedWait::add`].
    pub fn add_shared(&mut self, fd: BorrowedFd<'_>) -> Result<usize, ProcError> {
        match self.watch(fd, EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE) {
            Err(ProcError::Poll { source })
                if source.raw_os_error() == Some(Errno::EINVAL as i32) =>
            {
                self.watch(fd, EpollFlags::EPOLLIN)
            }
            other => other,
        }
    }

    fn watch(&mut self, fd: BorrowedFd<'_>, flags: EpollFlags) -> Result<usize, ProcError> {
        let index = self.count;
        if index >= Ready::CAPACITY {
            return Err(Ready::too_many());
        }
        let token = u64::try_from(index).unwrap_or(u64::MAX);
        self.epoll
            .add(fd, EpollEvent::new(flags, token))
            .map_err(|errno| ProcError::Poll { source: os(errno) })?;
        self.count += 1;
        Ok(index)
    }

    /// Blocks until at least one descriptor is readable, or in an error or
    /// hang-up state that the next read or accept will report. An
    /// interruption by a signal returns with nothing ready. Allocates nothing.
    ///
    /// # Errors
    /// [`ProcError::Poll`] if `epoll_wait(2)` fails.
    pub fn wait(&self) -> Result<Ready, ProcError> {
        let mut events = [EpollEvent::empty(); Ready::CAPACITY];
        let count = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(count) => count,
            Err(Errno::EINTR) => 0,
            Err(errno) => return Err(ProcError::Poll { source: os(errno) }),
        };
        let mut ready = Ready::default();
        for event in events.iter().take(count) {
            ready.mark(usize::try_from(event.data()).unwrap_or(usize::MAX));
        }
        Ok(ready)
    }
}

impl AsFd for SharedWait {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}
