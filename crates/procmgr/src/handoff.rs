//! Passing an open descriptor to another process: `SCM_RIGHTS` over a
//! `SOCK_SEQPACKET` socket pair, one descriptor and a few bytes per message.
//!
//! A parent that accepts a connection and hands it to a child it forked
//! earlier (a pre-forked pool) needs exactly this, and nothing more: no
//! allocation per message (the control buffer lives on the stack), message
//! boundaries kept, and end of file once the other side is closed everywhere.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

use crate::ProcError;

/// The control message of one descriptor, laid out as `CMSG_SPACE(sizeof(int))`
/// bytes: the header, then the descriptor at `CMSG_DATA` (the header's size is
/// already a multiple of its alignment on Linux, so no padding sits between).
/// The space holds two descriptors (`CMSG_SPACE` rounds up to 8 bytes): a
/// message with two fits whole, so the second must be found and closed.
#[repr(C)]
struct FdMessage {
    header: libc::cmsghdr,
    fds: [RawFd; 2],
}

impl FdMessage {
    /// `CMSG_LEN(sizeof(int))`: what `cmsg_len` says for one descriptor.
    const LEN: usize = mem::offset_of!(FdMessage, fds) + mem::size_of::<RawFd>();

    fn empty() -> Self {
        // SAFETY: cmsghdr is plain integers (and, on some C libraries,
        // padding), for which all-zero bytes are a valid value.
        let header: libc::cmsghdr = unsafe { mem::zeroed() };
        Self { header, fds: [-1, -1] }
    }

    /// How many descriptors the kernel put in (at most two), given the
    /// control length it reported.
    fn count(&self, controllen: impl TryInto<usize>) -> usize {
        let room = as_usize(controllen);
        let len = as_usize(self.header.cmsg_len);
        if room < Self::LEN
            || self.header.cmsg_level != libc::SOL_SOCKET
            || self.header.cmsg_type != libc::SCM_RIGHTS
        {
            return 0;
        }
        let data = len.min(room).saturating_sub(mem::offset_of!(FdMessage, fds));
        (data / mem::size_of::<RawFd>()).min(2)
    }
}

/// One end of a hand-off channel: a `SOCK_SEQPACKET` Unix socket pair, both
/// ends close-on-exec. Each message carries one descriptor and up to
/// [`Handoff::MAX_DATA`] bytes of the caller's data.
#[derive(Debug)]
pub struct Handoff {
    fd: OwnedFd,
}

impl Handoff {
    /// The most data bytes one message carries.
    pub const MAX_DATA: usize = 256;

    /// A connected pair of ends: what one sends, the other receives.
    ///
    /// # Errors
    /// [`ProcError::Handoff`] if `socketpair(2)` fails.
    pub fn pair() -> Result<(Self, Self), ProcError> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
        // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
        if rc != 0 {
            return Err(failed("create", io::Error::last_os_error()));
        }
        Ok((Self { fd: owned(fds[0]) }, Self { fd: owned(fds[1]) }))
    }

    /// Sends `fd` (the receiver gets its own copy) and `data` as one message,
    /// without blocking (`MSG_DONTWAIT`) and without SIGPIPE
    /// (`MSG_NOSIGNAL`): a full channel is `WouldBlock`, a closed one
    /// `BrokenPipe`. Allocates nothing.
    ///
    /// # Errors
    /// [`ProcError::Handoff`] with the OS error, or `InvalidInput` for more
    /// than [`Handoff::MAX_DATA`] bytes.
    pub fn send(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<(), ProcError> {
        if data.len() > Self::MAX_DATA {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "message too long");
            return Err(failed("send", source));
        }
        let mut control = FdMessage::empty();
        control.header.cmsg_level = libc::SOL_SOCKET;
        control.header.cmsg_type = libc::SCM_RIGHTS;
        control.header.cmsg_len = FdMessage::LEN as _;
        control.fds[0] = fd.as_raw_fd();
        let mut iov =
            libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        let msg = header(&mut iov, &mut control);
        loop {
            let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            // SAFETY: `msg` and everything it points to (`iov`, `data`,
            // `control`) are valid for the call; the kernel only reads them.
            let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &raw const msg, flags) };
            if sent >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(failed("send", err));
            }
        }
    }

    /// Waits for one message (blocking, unless the end was made non-blocking):
    /// its descriptor, close-on-exec, and how many bytes of `data` it filled;
    /// `None` once the other end is closed everywhere. Allocates nothing.
    ///
    /// # Errors
    /// [`ProcError::Handoff`] with the OS error, or `InvalidData` for a message
    /// without exactly one descriptor or longer than `data` (whatever
    /// descriptors it carried are closed).
    pub fn recv(&self, data: &mut [u8]) -> Result<Option<(OwnedFd, usize)>, ProcError> {
        let mut control = FdMessage::empty();
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let mut msg = header(&mut iov, &mut control);
        let received = loop {
            // SAFETY: `msg` points at `data` and `control`, both writable for
            // the lengths given; the kernel writes no further.
            let received =
                unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
            if received >= 0 {
                break received.unsigned_abs();
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(failed("receive", err));
            }
        };
        // Every descriptor the kernel installed is ours now, and closed if
        // the message is refused: the buffer holds two (any more are closed
        // by the kernel, which says so with MSG_CTRUNC).
        let count = control.count(msg.msg_controllen);
        let mut passed = control.fds[..count].iter().map(|&fd| owned(fd));
        let (first, second) = (passed.next(), passed.next());
        let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        match (first, second) {
            (None, None) if received == 0 && !truncated => Ok(None),
            (Some(fd), None) if !truncated => Ok(Some((fd, received))),
            _ => {
                let what = "a message without exactly one descriptor, or too long";
                Err(failed("receive", io::Error::new(io::ErrorKind::InvalidData, what)))
            }
        }
    }
}

/// A message header over one data buffer and one descriptor's control message.
fn header(iov: &mut libc::iovec, control: &mut FdMessage) -> libc::msghdr {
    // SAFETY: msghdr is plain integers and pointers (and, on some C libraries,
    // padding), for which all-zero bytes are a valid, empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut *control).cast();
    msg.msg_controllen = mem::size_of::<FdMessage>() as _;
    msg
}

/// A control length (`size_t` or `socklen_t`, by C library) as a `usize`.
fn as_usize(len: impl TryInto<usize>) -> usize {
    len.try_into().unwrap_or(0)
}

/// Takes ownership of a descriptor the kernel just gave this process.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: called only with a descriptor the kernel has just created for
    // this process (socketpair, or SCM_RIGHTS), which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl AsFd for Handoff {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Handoff> for OwnedFd {
    fn from(end: Handoff) -> Self {
        end.fd
    }
}

fn failed(step: &'static str, source: io::Error) -> ProcError {
    ProcError::Handoff { step, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-made control message has the C library's layout.
    #[test]
    fn the_control_message_is_laid_out_as_cmsg_says() {
        let int = mem::size_of::<RawFd>() as libc::c_uint;
        // SAFETY: CMSG_LEN and CMSG_SPACE compute on their argument only.
        let len = unsafe { libc::CMSG_LEN(int) } as usize;
        // SAFETY: as above.
        let space = unsafe { libc::CMSG_SPACE(int) } as usize;
        assert_eq!(FdMessage::LEN, len);
        assert_eq!(mem::size_of::<FdMessage>(), space);
        // SAFETY: as above.
        let two = unsafe { libc::CMSG_SPACE(2 * int) } as usize;
        assert_eq!(mem::size_of::<FdMessage>(), two, "two descriptors fit the same space");
    }

    fn kind(err: &ProcError) -> io::ErrorKind {
        match err {
            ProcError::Handoff { source, .. } => source.kind(),
            other => panic!("not a hand-off error: {other:?}"),
        }
    }

    /// A descriptor and its data arrive together, as a working, close-on-exec
    /// descriptor of the receiver's own.
    #[test]
    fn a_descriptor_and_its_data_arrive_together() {
        use std::io::{Read, Write};
        let (left, right) = Handoff::pair().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        left.send(writer.as_fd(), b"peer and listener").unwrap();
        drop(writer);
        let mut data = [0_u8; 64];
        let (fd, len) = right.recv(&mut data).unwrap().unwrap();
        assert_eq!(&data[..len], b"peer and listener");
        // SAFETY: F_GETFD only reads the flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "received without close-on-exec");
        std::fs::File::from(fd).write_all(b"through the copy").unwrap();
        let mut echoed = String::new();
        reader.read_to_string(&mut echoed).unwrap();
        assert_eq!(echoed, "through the copy");
    }

    /// Closing one end is end of file at the other; sending to a closed end
    /// fails at once, without SIGPIPE.
    #[test]
    fn a_closed_end_is_end_of_file_and_a_broken_pipe() {
        let (left, right) = Handoff::pair().unwrap();
        drop(left);
        assert!(right.recv(&mut [0; 8]).unwrap().is_none());
        let (left, right) = Handoff::pair().unwrap();
        drop(right);
        let err = left.send(std::io::stdin().as_fd(), b"x").unwrap_err();
        assert_eq!(kind(&err), io::ErrorKind::BrokenPipe, "{err:?}");
    }

    /// A message with two descriptors is refused, and neither stays open
    /// here (the second lands in the buffer's padding, where the kernel put
    /// it without a word).
    #[test]
    fn a_message_with_two_descriptors_is_refused_and_both_are_closed() {
        use std::io::Read;
        let (left, right) = Handoff::pair().unwrap();
        let (mut first_reader, first_writer) = std::io::pipe().unwrap();
        let (mut second_reader, second_writer) = std::io::pipe().unwrap();
        let mut control = FdMessage::empty();
        control.header.cmsg_level = libc::SOL_SOCKET;
        control.header.cmsg_type = libc::SCM_RIGHTS;
        control.header.cmsg_len = (FdMessage::LEN + mem::size_of::<RawFd>()) as _;
        control.fds = [first_writer.as_raw_fd(), second_writer.as_raw_fd()];
        let data = [1_u8];
        let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: 1 };
        let msg = header(&mut iov, &mut control);
        // SAFETY: `msg` points at `iov`, `data` and `control`, all alive and
        // valid for the call; the kernel only reads them.
        let sent = unsafe { libc::sendmsg(left.fd.as_raw_fd(), &raw const msg, 0) };
        assert_eq!(sent, 1, "{}", io::Error::last_os_error());
        drop((first_writer, second_writer));
        let err = right.recv(&mut [0; 8]).unwrap_err();
        assert_eq!(kind(&err), io::ErrorKind::InvalidData, "{err:?}");
        // No copy of either write end is left: both pipes are at end of file.
        assert_eq!(first_reader.read(&mut [0; 1]).unwrap(), 0);
        assert_eq!(second_reader.read(&mut [0; 1]).unwrap(), 0);
    }

    /// A message without a descriptor, or longer than the buffer, is refused,
    /// and the next one still arrives whole.
    #[test]
    fn malformed_messages_are_refused() {
        let (left, right) = Handoff::pair().unwrap();
        let raw = std::os::unix::net::UnixDatagram::from(OwnedFd::from(left));
        raw.send(b"no descriptor").unwrap();
        let err = right.recv(&mut [0; 64]).unwrap_err();
        assert_eq!(kind(&err), io::ErrorKind::InvalidData, "{err:?}");
        let left = Handoff { fd: OwnedFd::from(raw) };
        left.send(std::io::stdin().as_fd(), b"longer than four").unwrap();
        let err = right.recv(&mut [0; 4]).unwrap_err();
        assert_eq!(kind(&err), io::ErrorKind::InvalidData, "{err:?}");
        left.send(std::io::stdin().as_fd(), b"fits").unwrap();
        let mut data = [0; 4];
        let (_, len) = right.recv(&mut data).unwrap().unwrap();
        assert_eq!(&data[..len], b"fits");
        let err = left.send(std::io::stdin().as_fd(), &[0; Handoff::MAX_DATA + 1]).unwrap_err();
        assert_eq!(kind(&err), io::ErrorKind::InvalidInput, "{err:?}");
    }
}
