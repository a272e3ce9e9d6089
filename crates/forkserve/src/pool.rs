//! Pre-forked children: forked ahead of connections, so the fork is off the
//! connection's path. Two ways to bring a member its connections:
//!
//! - **Members accept** (when no decision needs the parent: the admission
//!   policy [admits everyone](crate::Admit::admits_everyone) and no PROXY
//!   header is read): each idle member waits on the listeners itself, one
//!   woken per connection (`EPOLLEXCLUSIVE`), and accepts; the parent is off
//!   the connection's path altogether.
//! - **The parent hands over**: the parent accepts, decides, and passes the
//!   connection to an idle member over that member's own channel
//!   (`SCM_RIGHTS`), so every decision (admission, limits) stays in the
//!   parent, as in fork mode.
//!
//! Either way each member reports on a datagram socket all members share:
//! a connection it took itself when it takes it (the parent counts, logs and
//! keeps the pool full), and a connection's end when it may serve another
//! (the parent knows it is idle again and releases its client's admission).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use netcore::{Listener, Recovery};
use procmgr::{ChildPid, CloseList, Handoff, SharedWait};
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

    /// The client being served, if the admission policy admitted it (and so
    /// must release it).
    pub(crate) fn admitted_peer(&self) -> Option<SocketAddr> {
        match self {
            Self::Conn(peer) => Some(*peer),
            Self::Member(member) => member.serving.filter(|_| member.admitted),
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
    /// That client was admitted by the policy (handed over by the parent),
    /// not accepted by the member itself: the policy owes it a release.
    pub(crate) admitted: bool,
}

/// The parent's side of the pool.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) settings: PoolSettings,
    /// Members accept connections on the listeners themselves.
    pub(crate) members_accept: bool,
    /// Where members report the connections they take and each one's end:
    /// the parent's end, non-blocking.
    reports: UnixDatagram,
    /// The members' end, inherited by each.
    members_end: UnixDatagram,
    /// Idle members, the most recently idle last (handed the next
    /// connection: its memory is the warmest), as far as the parent knows:
    /// when members accept, one may have taken a connection whose report is
    /// not read yet.
    pub(crate) idle: Vec<ChildPid>,
    /// Members serving a connection.
    pub(crate) busy: usize,
    /// Forking a member failed: not again before then.
    pub(crate) refill_after: Option<Instant>,
    /// Since when the pool has been short of spares, if it is.
    pub(crate) short_since: Option<Instant>,
    /// More members than twice the spares are idle: the extra ones are
    /// retired then, unless they got work meanwhile.
    pub(crate) trim_at: Option<Instant>,
    /// The other members' channels, for the next member forked to close:
    /// listed in the parent just before that fork (the child finds the
    /// registry empty), in a list whose memory is kept.
    pub(crate) siblings: CloseList,
}

/// One member's report: what it is, the member's pid, then an address or an
/// exit code.
const REPORT_LEN: usize = 1 + 4 + ADDR_LEN;

/// What a member reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// It accepted a connection from `peer` itself, and serves it now.
    Took { pid: i32, peer: SocketAddr },
    /// It finished a connection, whose work returned `code`, and waits for
    /// the next.
    Ended { pid: i32, code: i32 },
}

impl Pool {
    pub(crate) fn new(
        settings: PoolSettings,
        members_accept: bool,
        capacity: usize,
    ) -> io::Result<Self> {
        let (reports, members_end) = UnixDatagram::pair()?;
        reports.set_nonblocking(true)?;
        Ok(Self {
            settings,
            members_accept,
            reports,
            members_end,
            // Reserved once: the loop never grows it per connection.
            idle: Vec::with_capacity(capacity.min(4096)),
            busy: 0,
            refill_after: None,
            short_since: None,
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
                // Only members write there: a report that does not decode is
                // skipped, as is a short one.
                Ok(REPORT_LEN) => {
                    if let Some(report) = Report::decode(bytes) {
                        return Ok(Some(report));
                    }
                }
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
    const TOOK: u8 = 1;
    const ENDED: u8 = 2;

    fn encode(self) -> [u8; REPORT_LEN] {
        let mut bytes = [0; REPORT_LEN];
        let (kind, pid) = match self {
            Self::Took { pid, peer } => {
                put(peer, &mut bytes[5..]);
                (Self::TOOK, pid)
            }
            Self::Ended { pid, code } => {
                bytes[5..9].copy_from_slice(&code.to_le_bytes());
                (Self::ENDED, pid)
            }
        };
        bytes[0] = kind;
        bytes[1..5].copy_from_slice(&pid.to_le_bytes());
        bytes
    }

    fn decode(bytes: [u8; REPORT_LEN]) -> Option<Self> {
        let pid = i32::from_le_bytes(bytes[1..5].try_into().ok()?);
        match bytes[0] {
            Self::TOOK => Some(Self::Took { pid, peer: get(&bytes[5..])? }),
            Self::ENDED => {
                Some(Self::Ended { pid, code: i32::from_le_bytes(bytes[5..9].try_into().ok()?) })
            }
            _ => None,
        }
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

/// Where a member's next connection comes from.
enum Next {
    /// The parent handed it over (already counted and logged there).
    Handed(TcpStream, SocketAddr, SocketAddr),
    /// The member accepted it itself: to report.
    Took(TcpStream, SocketAddr, SocketAddr),
    /// Nothing after all (another process took the connection, or a
    /// signal): wait again.
    Again,
    /// The member is done: exit with this code.
    Exit(i32),
}

/// What a member waits on when it accepts connections itself: its channel
/// (index 0) and the listeners (1 onwards).
struct Sources<'a> {
    wait: SharedWait,
    listeners: &'a [Listener],
    /// The listener looked at first on the next wake-up: the one after the
    /// last that yielded a connection, so a busy listener cannot starve the
    /// others (as the parent's loop does).
    first: std::cell::Cell<usize>,
}

impl<'a> Sources<'a> {
    const CHANNEL: usize = 0;

    fn new(channel: &Handoff, listeners: &'a [Listener]) -> Result<Self, procmgr::ProcError> {
        let mut wait = SharedWait::new()?;
        wait.add(channel.as_fd())?;
        for listener in listeners {
            wait.add_shared(listener.as_fd())?;
        }
        Ok(Self { wait, listeners, first: std::cell::Cell::new(0) })
    }

    /// Waits for the channel (the parent's word comes first: a connection
    /// for this member, or the end of file that retires it) or a connection
    /// on a listener, and takes it.
    fn next(&self, channel: &Handoff, message: &mut [u8; MESSAGE_LEN]) -> Next {
        let ready = match self.wait.wait() {
            Ok(ready) => ready,
            Err(err) => {
                warn!(error = chain(&err), "cannot wait for connections");
                return Next::Exit(SETUP_FAILED);
            }
        };
        if ready.is_ready(Self::CHANNEL) {
            return handed(channel, message);
        }
        let (count, first) = (self.listeners.len(), self.first.get());
        let Some(index) =
            (0..count).map(|i| (first + i) % count).find(|i| ready.is_ready(Self::CHANNEL + 1 + i))
        else {
            return Next::Again;
        };
        let listener = &self.listeners[index];
        match listener.accept() {
            Ok((stream, peer)) => {
                self.first.set((index + 1) % count);
                Next::Took(stream, peer, listener.local_addr())
            }
            Err(err) => match err.recovery() {
                Recovery::Drained | Recovery::Retry => Next::Again,
                // The parent stopped the listener at shutdown.
                _ if err.is_stopped_listener() => Next::Exit(0),
                // Out of descriptors or memory: this member gives up (the
                // parent replaces it after its back-off, and accepts itself
                // when no member is idle).
                _ => {
                    warn!(error = chain(&err), "cannot accept a connection");
                    Next::Exit(SETUP_FAILED)
                }
            },
        }
    }
}

/// The next connection the parent hands over, or the channel's end.
fn handed(channel: &Handoff, message: &mut [u8; MESSAGE_LEN]) -> Next {
    match channel.recv(message) {
        Ok(Some((fd, len))) => match decode(&message[..len]) {
            Some((peer, listener)) => Next::Handed(TcpStream::from(fd), peer, listener),
            None => {
                warn!(len, "the parent handed over a connection without its addresses");
                Next::Exit(SETUP_FAILED)
            }
        },
        Ok(None) => Next::Exit(0),
        Err(err) => {
            warn!(error = chain(&err), "cannot receive a connection from the parent");
            Next::Exit(SETUP_FAILED)
        }
    }
}

/// The member's side, in a new child whose other descriptors are already
/// closed: set the process up once, then serve each connection, reporting
/// those it took itself and each one's end, until the connection limit or
/// until the parent closes the channel (end of file: exit 0). `listeners` is
/// where it accepts (empty when the parent hands everything over);
/// `handed_first` says the parent hands it its first connection. Returns the exit code: that
/// of the last connection's work.
pub(crate) fn member(
    channel: &Handoff,
    pool: &Pool,
    listeners: &[Listener],
    handed_first: bool,
    setup: &ChildSetup,
    work: &mut impl FnMut(Connection) -> i32,
) -> i32 {
    if let Err(err) = setup.prepare_process() {
        warn!(error = chain(&err), "cannot set up the child");
        return SETUP_FAILED;
    }
    let sources = if listeners.is_empty() {
        None
    } else {
        match Sources::new(channel, listeners) {
            Ok(sources) => Some(sources),
            Err(err) => {
                warn!(error = chain(&err), "cannot wait for connections");
                return SETUP_FAILED;
            }
        }
    };
    let per_child = pool.settings.per_child;
    let me = std::process::id();
    let pid = i32::try_from(me).unwrap_or(i32::MAX);
    let mut served: u32 = 0;
    let mut message = [0_u8; MESSAGE_LEN];
    let mut expect_handed = handed_first;
    loop {
        let next = match &sources {
            Some(sources) if !expect_handed => sources.next(channel, &mut message),
            _ => handed(channel, &mut message),
        };
        expect_handed = false;
        let (stream, peer, listener) = match next {
            Next::Handed(stream, peer, listener) => (stream, peer, listener),
            Next::Took(stream, peer, listener) => {
                // Before serving, so the parent counts a long connection as
                // one; if the parent is gone, the client is served anyway.
                // This waits only when the socket's buffer holds a few
                // hundred unread reports: a parent stopped for that long.
                let _ = pool.members_end.send(&Report::Took { pid, peer }.encode());
                (stream, peer, listener)
            }
            Next::Again => continue,
            Next::Exit(code) => return code,
        };
        let code = setup.serve(me, stream, peer, listener, work);
        served = served.saturating_add(1);
        if per_child != 0 && served >= per_child {
            return code;
        }
        // The parent is gone if this fails: nothing more will come.
        if pool.members_end.send(&Report::Ended { pid, code }.encode()).is_err() {
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
        let peer = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 65535, 1, 2));
        for report in [
            Report::Ended { pid: 1, code: 0 },
            Report::Ended { pid: i32::MAX, code: -1 },
            Report::Took { pid: 7, peer },
            Report::Took { pid: 8, peer: "127.0.0.1:1".parse().unwrap() },
        ] {
            assert_eq!(Report::decode(report.encode()), Some(report));
        }
        let mut unknown = Report::Ended { pid: 1, code: 0 }.encode();
        unknown[0] = 0;
        assert_eq!(Report::decode(unknown), None, "an unknown kind");
    }
}
