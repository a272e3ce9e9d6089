//! The PROXY protocol (HAProxy's; v1 text, v2 binary), as a load balancer in
//! front of a server speaks it: the first bytes of each connection carry the
//! real client's address. Parsing is the `ppp` crate's; this module reads a
//! header off a socket without ever reading past it, so what follows (the
//! client's own bytes) is left for whoever serves the connection.
//!
//! ```
//! use netcore::proxy::{self, Header, Parsed};
//!
//! let bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\nhello";
//! let Parsed::Complete { header, len } = proxy::parse(bytes) else { panic!() };
//! assert_eq!(len, bytes.len() - b"hello".len());
//! assert_eq!(header, Header::Proxied {
//!     source: "192.0.2.7:40000".parse()?,
//!     destination: "198.51.100.1:7".parse()?,
//! });
//! assert_eq!(proxy::parse(b"PROXY TCP4 192.0.2.7"), Parsed::Incomplete);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};

use ppp::{HeaderResult, PartialResult, v1, v2};

/// The longest header read: a v1 header is at most 107 bytes; a v2 header
/// is 16 bytes and its addresses (216 bytes for Unix sockets) and TLVs. A
/// longer v2 header is refused, not read.
pub const MAX_HEADER: usize = 1024;

/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// How a v1 header starts (ppp's `v1::PROTOCOL_PREFIX` lacks the space).
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The balancer relays a client's connection: the client's address
    /// (`source`) and the address the client reached (`destination`).
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to, on the balancer.
        destination: SocketAddr,
    },
    /// The balancer speaks for itself (v2 `LOCAL`, a health check), or does
    /// not know the client's address (v1 `UNKNOWN`, v2 `UNSPEC` or a Unix
    /// socket): the connection's own addresses stand.
    Local,
}

/// What the first bytes of a connection hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes; the connection's own data follows it.
    Complete {
        /// What it says.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
    /// The start of a header, or nothing yet: more bytes may complete it.
    Incomplete,
    /// Not a valid header, whatever follows: the reason.
    Invalid(&'static str),
}

/// Parses the header at the start of `bytes`, if any. Pure: never panics,
/// never looks past the header's end.
#[must_use]
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.is_empty() {
        return Parsed::Incomplete;
    }
    let declared_v2 = bytes.starts_with(&v2::PROTOCOL_PREFIX[..bytes.len().min(12)]);
    if declared_v2 && bytes.len() >= 16 {
        let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if len > MAX_HEADER {
            return Parsed::Invalid("PROXY v2 header longer than 1024 bytes");
        }
    }
    // A v1 header ends at its CRLF and nowhere else: until that has come
    // (within 107 bytes), it is incomplete, whatever its fields look like
    // so far (a cut right after a space leaves an empty field that a parser
    // would call invalid).
    let n = bytes.len().min(V1_SIGNATURE.len());
    if bytes[..n] == V1_SIGNATURE[..n] && !bytes.windows(2).take(V1_MAX).any(|w| w == b"\r\n") {
        return if bytes.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V2(Ok(header)) => v2_header(&header),
        HeaderResult::V1(Ok(header)) => v1_header(&header),
        HeaderResult::V2(Err(_)) | HeaderResult::V1(Err(_)) if declared_v2 => {
            Parsed::Invalid("malformed PROXY v2 header")
        }
        HeaderResult::V2(Err(_)) | HeaderResult::V1(Err(_)) => {
            Parsed::Invalid("no PROXY header, or a malformed one")
        }
    }
}

fn v1_header(header: &v1::Header<'_>) -> Parsed {
    let len = header.header.len();
    let header = match header.addresses {
        v1::Addresses::Tcp4(a) => {
            proxied(a.source_address, a.source_port, a.destination_address, a.destination_port)
        }
        v1::Addresses::Tcp6(a) => {
            proxied(a.source_address, a.source_port, a.destination_address, a.destination_port)
        }
        v1::Addresses::Unknown => Header::Local,
    };
    Parsed::Complete { header, len }
}

fn v2_header(header: &v2::Header<'_>) -> Parsed {
    let len = header.len();
    if header.command == v2::Command::Local {
        return Parsed::Complete { header: Header::Local, len };
    }
    let header = match (header.protocol, header.addresses) {
        (v2::Protocol::Datagram, _) => return Parsed::Invalid("PROXY v2 header for a datagram"),
        (_, v2::Addresses::IPv4(a)) => {
            proxied(a.source_address, a.source_port, a.destination_address, a.destination_port)
        }
        (_, v2::Addresses::IPv6(a)) => {
            proxied(a.source_address, a.source_port, a.destination_address, a.destination_port)
        }
        (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => Header::Local,
    };
    Parsed::Complete { header, len }
}

/// A header naming a client and the address it reached, from either version.
fn proxied(
    source: impl Into<IpAddr>,
    source_port: u16,
    destination: impl Into<IpAddr>,
    destination_port: u16,
) -> Header {
    Header::Proxied {
        source: SocketAddr::new(source.into(), source_port),
        destination: SocketAddr::new(destination.into(), destination_port),
    }
}

/// Whether `bytes` start with a whole PROXY signature (`PROXY ` or v2's 12
/// bytes): what a server that trusts no header looks for, to refuse a client
/// trying to pass one off. A shorter start proves nothing (a client may send
/// `P` or an empty line for its own reasons).
#[must_use]
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(V1_SIGNATURE) || bytes.starts_with(v2::PROTOCOL_PREFIX)
}

/// Looks at what has arrived on `stream` without taking it (`MSG_PEEK`): the
/// header, as far as it has come, or `None` if nothing has arrived yet. The
/// stream must be non-blocking ([`TcpStream::set_nonblocking`]), so this
/// never waits; a connection closed before a whole header is `Invalid`.
///
/// # Errors
/// A failed `recv(2)` other than "nothing yet" (a reset, say).
pub fn peek(stream: &TcpStream) -> io::Result<Option<Parsed>> {
    let mut buf = [0_u8; MAX_HEADER];
    let received = match stream.peek(&mut buf) {
        Ok(0) => return Ok(Some(Parsed::Invalid("closed before a whole PROXY header"))),
        Ok(received) => received,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(Some(match parse(&buf[..received]) {
        Parsed::Incomplete if received == MAX_HEADER => Parsed::Invalid("PROXY header too long"),
        parsed => parsed,
    }))
}

/// Takes exactly `len` bytes off `stream` (a header [`peek`] saw whole, so
/// they are there to take), so that the next read returns the connection's
/// own data.
///
/// # Errors
/// A failed read, or `UnexpectedEof` if fewer bytes are there.
pub fn consume(mut stream: &TcpStream, len: usize) -> io::Result<()> {
    let mut buf = [0_u8; MAX_HEADER];
    stream.read_exact(&mut buf[..len.min(MAX_HEADER)])
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// A v1 header for these addresses (same family), as balancers write it.
    fn v1_bytes(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    /// A v2 header: command (0 LOCAL, 1 PROXY), family and protocol byte,
    /// the address block, then `tlvs` (any bytes: the parser must skip them
    /// by length).
    fn v2_bytes(command: u8, family_protocol: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut bytes = v2::PROTOCOL_PREFIX.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family_protocol);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(addresses);
        bytes.extend_from_slice(tlvs);
        bytes
    }

    fn v4_block(source: SocketAddrV4Parts, destination: SocketAddrV4Parts) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&source.0);
        block.extend_from_slice(&destination.0);
        block.extend_from_slice(&source.1.to_be_bytes());
        block.extend_from_slice(&destination.1.to_be_bytes());
        block
    }

    type SocketAddrV4Parts = ([u8; 4], u16);

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| (Ipv4Addr::from(ip), port).into()),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| (Ipv6Addr::from(ip), port).into()),
        ]
    }

    /// Every strict prefix of a header is incomplete: a server waits for
    /// the rest rather than refusing (or accepting) half a header.
    fn every_prefix_is_incomplete(header: &[u8]) -> Result<(), TestCaseError> {
        for cut in 0..header.len() {
            prop_assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {}", cut);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the bytes: no panic, and a complete header never claims
        /// more bytes than there are, or than MAX_HEADER.
        #[test]
        fn arbitrary_bytes_never_panic_or_overreach(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            if let Parsed::Complete { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_HEADER);
            }
        }

        /// The same, for bytes that start with either signature.
        #[test]
        fn bytes_after_a_signature_never_panic_or_overreach(
            v2_signature in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = if v2_signature { v2::PROTOCOL_PREFIX.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&rest);
            if let Parsed::Complete { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_HEADER);
            }
            prop_assert!(looks_like_header(&bytes));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// v1, TCP4 and TCP6: the addresses come out as they went in, the
        /// length is the header's exactly, whatever follows it.
        #[test]
        fn v1_headers_parse_exactly(
            (source, destination) in any_addr().prop_flat_map(|s| {
                let same = if s.is_ipv4() {
                    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((Ipv4Addr::from(ip), p))).boxed()
                } else {
                    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))).boxed()
                };
                (Just(s), same)
            }),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = v1_bytes(source, destination);
            let mut bytes = header.clone();
            bytes.extend_from_slice(&payload);
            prop_assert_eq!(
                parse(&bytes),
                Parsed::Complete { header: Header::Proxied { source, destination }, len: header.len() }
            );
            every_prefix_is_incomplete(&header)?;
        }

        /// v2, every address family, both commands, any TLV bytes, any
        /// payload: the length is the header's exactly; LOCAL, UNSPEC and
        /// Unix keep the connection's own addresses.
        #[test]
        fn v2_headers_parse_exactly(
            family in 0_u8..4,
            local in any::<bool>(),
            source in any::<([u8; 16], u16)>(),
            destination in any::<([u8; 16], u16)>(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..200),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (block, proxied): (Vec<u8>, Option<(SocketAddr, SocketAddr)>) = match family {
                0 => (Vec::new(), None),
                1 => {
                    let s: [u8; 4] = source.0[..4].try_into().unwrap();
                    let d: [u8; 4] = destination.0[..4].try_into().unwrap();
                    let addrs = (
                        SocketAddr::new(IpAddr::from(s), source.1),
                        SocketAddr::new(IpAddr::from(d), destination.1),
                    );
                    (v4_block((s, source.1), (d, destination.1)), Some(addrs))
                }
                2 => {
                    let mut block = Vec::new();
                    block.extend_from_slice(&source.0);
                    block.extend_from_slice(&destination.0);
                    block.extend_from_slice(&source.1.to_be_bytes());
                    block.extend_from_slice(&destination.1.to_be_bytes());
                    let addrs = (
                        SocketAddr::new(IpAddr::from(source.0), source.1),
                        SocketAddr::new(IpAddr::from(destination.0), destination.1),
                    );
                    (block, Some(addrs))
                }
                _ => (vec![b'/'; 216], None),
            };
            let family_protocol = (family << 4) | 1; // stream
            let header = v2_bytes(u8::from(!local), family_protocol, &block, &tlvs);
            let mut bytes = header.clone();
            bytes.extend_from_slice(&payload);
            let expected = match proxied {
                Some((source, destination)) if !local => Header::Proxied { source, destination },
                _ => Header::Local,
            };
            prop_assert_eq!(parse(&bytes), Parsed::Complete { header: expected, len: header.len() });
            every_prefix_is_incomplete(&header)?;
        }
    }

    #[test]
    fn datagrams_too_long_headers_and_plain_data_are_invalid() {
        let block = v4_block(([10, 0, 0, 1], 1), ([10, 0, 0, 2], 2));
        assert!(matches!(parse(&v2_bytes(1, 0x12, &block, &[])), Parsed::Invalid(_)));
        let long = v2_bytes(1, 0x11, &block, &[0; MAX_HEADER]);
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        assert!(matches!(parse(b"hello\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP4 not an address\r\n"), Parsed::Invalid(_)));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nhi"),
            Parsed::Complete { header: Header::Local, len: 15 }
        );
        assert!(!looks_like_header(b"hello") && !looks_like_header(b""));
        assert!(!looks_like_header(b"PROX") && !looks_like_header(b"\r\n"));
        assert!(looks_like_header(b"PROXY TCP4 1.2") && looks_like_header(v2::PROTOCOL_PREFIX));
    }

    /// On a real connection: the header is peeked whole, taken off exactly,
    /// and the client's bytes after it are still there to read.
    #[test]
    fn peek_then_consume_leaves_the_clients_bytes() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, _) = listener.accept().unwrap();
        served.set_nonblocking(true).unwrap();
        assert_eq!(peek(&served).unwrap(), None, "nothing sent yet");
        client.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 7\r\nafter").unwrap();
        let parsed = loop {
            match peek(&served).unwrap() {
                None | Some(Parsed::Incomplete) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Some(parsed) => break parsed,
            }
        };
        let Parsed::Complete { len, header } = parsed else { panic!("{parsed:?}") };
        assert!(matches!(header, Header::Proxied { .. }));
        served.set_nonblocking(false).unwrap();
        consume(&served, len).unwrap();
        let mut rest = [0; 5];
        (&served).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"after");
        drop(client);
        let served = served;
        served.set_nonblocking(true).unwrap();
        assert!(matches!(peek(&served).unwrap(), Some(Parsed::Invalid(_))), "closed");
    }
}
