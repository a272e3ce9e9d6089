//! Pre-forked children: forked ahead of connections, each waits on its own
//! hand-off channel; the parent accepts, decides, and hands the connection
//! over (`SCM_RIGHTS`), so the fork is off the connection's path while every
//! decision (admission, limits, logs) stays in the parent, as in fork mode.
//!
//! A child that may serve another connection reports each one's end on a
//! datagram socket all children share, so the parent knows it is idle again
//! and can release its client's admission.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use procmgr::{ChildPid, CloseList, Handoff};
use tracing::warn;

use crate::child::ChildSetup;
use crate::error::chain;
use crate::{Connection, SETUP_FAILED};

/// What the parent asked of the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    /// Idle children kept ready.
    pub(crate) spares: usize,
    /// Connections a child serves before it exits; 0 for no limit.
    pub(crate) per_child: u32,
}

/// What a live child of the server is for.
#[derive(Debug)]
pub(crate) enum Job {
    /// Forked for this client's connection (fork mode).
    Conn(SocketAddr),
    /// A pool member.
    Member(Member),
}

impl Job {
    /// The client being served, if any.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        match self {
            Self::Conn(peer) => Some(*peer),
            Self::Member(member) => member.serving,
        }
    }

    /// The parent's end of a member's channel, while it is open.
    pub(crate) fn channel(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Self::Member(Member { channel: Some(channel), .. }) => Some(channel.as_fd()),
            _ => None,
        }
    }
}

/// The parent's view of a pool member.
#[derive(Debug)]
pub(crate) struct Member {
    /// The parent's end of its hand-off channel; `None` once it was told to
    /// exit (end of file on its side) or found gone.
    pub(crate) channel: Option<Handoff>,
    /// The client it is serving.
    pub(crate) serving: Option<SocketAddr>,
}

/// The parent's side of the pool.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) settings: PoolSettings,
    /// Where members report a connection's end: the parent's end,
    /// non-blocking.
    reports: UnixDatagram,
    /// The members' end, inherited by each.
    members_end: UnixDatagram,
    /// Idle members, the most recently idle last (handed the next
    /// connection: its memory is the warmest).
    pub(crate) idle: Vec<ChildPid>,
    /// Members serving a connection.
    pub(crate) busy: usize,
    /// Forking a member failed: not again before then.
    pub(crate) refill_after: Option<Instant>,
    /// More members than twice the spares are idle: the extra ones are
    /// retired then, unless they got work meanwhile.
    pub(crate) trim_at: Option<Instant>,
    /// The other members' channels, for the next member forked to close:
    /// listed in the parent just before that fork (the child finds the
    /// registry empty), in a list whose memory is kept.
    pub(crate) siblings: CloseList,
}

/// One member's report: its pid and the connection's exit code.
const REPORT_LEN: usize = 8;

/// A connection's end, as a member reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) pid: i32,
    pub(crate) code: i32,
}

impl Pool {
    pub(crate) fn new(settings: PoolSettings, capacity: usize) -> io::Result<Self> {
        let (reports, members_end) = UnixDatagram::pair()?;
        reports.set_nonblocking(true)?;
        Ok(Self {
            settings,
            reports,
            members_end,
            // Reserved once: the loop never grows it per connection.
            idle: Vec::with_capacity(capacity.min(4096)),
            busy: 0,
            refill_after: None,
            trim_at: None,
            siblings: CloseList::new(),
        })
    }

    /// The descriptor the loop watches for reports.
    pub(crate) fn reports_fd(&self) -> BorrowedFd<'_> {
        self.reports.as_fd()
    }

    /// The next report, if one is waiting.
    pub(crate) fn next_report(&self) -> io::Result<Option<Report>> {
        let mut bytes = [0_u8; REPORT_LEN];
        loop {
            match self.reports.recv(&mut bytes) {
                Ok(REPORT_LEN) => return Ok(Some(Report::decode(bytes))),
                // Nothing else writes there; a short datagram is skipped.
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Takes `pid` off the idle list (it ended, or was retired).
    pub(crate) fn forget_idle(&mut self, pid: ChildPid) {
        if let Some(index) = self.idle.iter().position(|&idle| idle == pid) {
            self.idle.remove(index);
        }
    }
}

impl Report {
    fn encode(self) -> [u8; REPORT_LEN] {
        let mut bytes = [0; REPORT_LEN];
        bytes[..4].copy_from_slice(&self.pid.to_le_bytes());
        bytes[4..].copy_from_slice(&self.code.to_le_bytes());
        bytes
    }

    fn decode(bytes: [u8; REPORT_LEN]) -> Self {
        let [a, b, c, d, e, f, g, h] = bytes;
        Self { pid: i32::from_le_bytes([a, b, c, d]), code: i32::from_le_bytes([e, f, g, h]) }
    }
}

/// One address on the wire: family, 16 address bytes, port, flow info and
/// scope id (the last two for IPv6).
const ADDR_LEN: usize = 27;
/// A hand-off message: the client's address, then the listener's.
pub(crate) const MESSAGE_LEN: usize = 2 * ADDR_LEN;

/// The data sent with a connection: who the client is and which listener
/// took it. On the stack, like everything on the parent's accept path.
pub(crate) fn encode(peer: SocketAddr, listener: SocketAddr) -> [u8; MESSAGE_LEN] {
    let mut message = [0; MESSAGE_LEN];
    let (first, second) = message.split_at_mut(ADDR_LEN);
    put(peer, first);
    put(listener, second);
    message
}

/// The client's and the listener's addresses, from a hand-off message.
pub(crate) fn decode(message: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    if message.len() != MESSAGE_LEN {
        return None;
    }
    let (first, second) = message.split_at(ADDR_LEN);
    Some((get(first)?, get(second)?))
}

fn put(addr: SocketAddr, out: &mut [u8]) {
    match addr {
        SocketAddr::V4(v4) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&v6.ip().octets());
            out[19..23].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[23..27].copy_from_slice(&v6.scope_id().to_be_bytes());
        }
    }
    out[17..19].copy_from_slice(&addr.port().to_be_bytes());
}

fn get(bytes: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(bytes.get(17..19)?.try_into().ok()?);
    match bytes.first()? {
        4 => {
            let octets: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(octets), port)))
        }
        6 => {
            let octets: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
            let flowinfo = u32::from_be_bytes(bytes.get(19..23)?.try_into().ok()?);
            let scope = u32::from_be_bytes(bytes.get(23..27)?.try_into().ok()?);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
        }
        _ => None,
    }
}

/// The member's side, in a new child whose other descriptors are already
/// closed: set the process up once, then serve each connection handed over,
/// reporting each one's end, until the connection limit or until the parent
/// closes the channel (end of file: exit 0). Returns the exit code: that of
/// the last connection's work.
pub(crate) fn member(
    channel: &Handoff,
    pool: &Pool,
    setup: &ChildSetup,
    work: &mut impl FnMut(Connection) -> i32,
) -> i32 {
    if let Err(err) = setup.prepare_process() {
        warn!(error = chain(&err), "cannot set up the child");
        return SETUP_FAILED;
    }
    let per_child = pool.settings.per_child;
    let me = std::process::id();
    let pid = i32::try_from(me).unwrap_or(i32::MAX);
    let mut served: u32 = 0;
    let mut message = [0_u8; MESSAGE_LEN];
    loop {
        let (fd, len) = match channel.recv(&mut message) {
            Ok(Some(received)) => received,
            Ok(None) => return 0,
            Err(err) => {
                warn!(error = chain(&err), "cannot receive a connection from the parent");
                return SETUP_FAILED;
            }
        };
        let stream = TcpStream::from(fd);
        let Some((peer, listener)) = decode(&message[..len]) else {
            warn!(len, "the parent handed over a connection without its addresses");
            return SETUP_FAILED;
        };
        let code = setup.serve(me, stream, peer, listener, work);
        served = served.saturating_add(1);
        if per_child != 0 && served >= per_child {
            return code;
        }
        // The parent is gone if this fails: nothing more will come.
        if pool.members_end.send(&Report { pid, code }.encode()).is_err() {
            return code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address, v4 and v6 with flow and scope, survives the wire.
    #[test]
    fn addresses_survive_the_hand_off_message() {
        let pairs: [(SocketAddr, SocketAddr); 3] = [
            ("127.0.0.1:40000".parse().unwrap(), "0.0.0.0:7".parse().unwrap()),
            (
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 65535, 0x0012_3456, 7)),
                "[::]:7000".parse().unwrap(),
            ),
            ("[::ffff:10.0.0.1]:1".parse().unwrap(), "192.168.1.1:65535".parse().unwrap()),
        ];
        for (peer, listener) in pairs {
            assert_eq!(decode(&encode(peer, listener)), Some((peer, listener)));
        }
        let message = encode(pairs[0].0, pairs[0].1);
        assert_eq!(decode(&message[..MESSAGE_LEN - 1]), None, "a short message");
        let mut wrong = message;
        wrong[0] = 5;
        assert_eq!(decode(&wrong), None, "an unknown family");
        assert_eq!(decode(&[0; MESSAGE_LEN]), None, "all zeros");
    }

    #[test]
    fn reports_survive_the_wire() {
        for report in [Report { pid: 1, code: 0 }, Report { pid: i32::MAX, code: -1 }] {
            assert_eq!(Report::decode(report.encode()), report);
        }
    }
}
