//! `--bind` addresses: IPv4, or IPv6 with the zone a link-local address needs
//! (`fe80::1%eth0`), refusing at once what a listener could never bind.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// A local address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BindAddr {
    ip: IpAddr,
    /// The IPv6 zone (interface index); 0 for none.
    scope: u32,
}

impl BindAddr {
    /// Every local IPv4 address, the textbook server's choice.
    pub(crate) const ANY_V4: Self = Self { ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED), scope: 0 };
    /// Every local IPv6 address (a v6-only listener beside [`Self::ANY_V4`]).
    pub(crate) const ANY_V6: Self = Self { ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED), scope: 0 };

    /// This address on `port`.
    pub(crate) fn with_port(self, port: u16) -> SocketAddr {
        match self.ip {
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, self.scope)),
            IpAddr::V4(_) => SocketAddr::new(self.ip, port),
        }
    }

    /// Parses `1.2.3.4`, `::1`, `[::1]`, `fe80::1%eth0` or `fe80::1%2`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
        let (addr, zone) = match bare.split_once('%') {
            Some((addr, zone)) => (addr, Some(zone)),
            None => (bare, None),
        };
        let ip: IpAddr =
            addr.parse().map_err(|_| format!("'{text}' is not an IPv4 or IPv6 address"))?;
        let v6 = match ip {
            IpAddr::V4(_) if zone.is_some() => {
                return Err(format!("'{text}': a zone (%…) only goes with an IPv6 address"));
            }
            IpAddr::V4(_) => return Ok(Self { ip, scope: 0 }),
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(format!(
                "'{text}' is an IPv4-mapped IPv6 address, which an IPv6 listener (v6-only) \
                 cannot bind: use --bind {v4}"
            ));
        }
        let scope = match zone {
            Some(zone) => interface_index(zone)
                .ok_or_else(|| format!("'{text}': no network interface named '{zone}'"))?,
            None if v6.is_unicast_link_local() => {
                return Err(format!(
                    "'{text}' is link-local: name its interface, as in {v6}%eth0 (or %lo)"
                ));
            }
            None => 0,
        };
        Ok(Self { ip, scope })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            0 => self.ip.fmt(f),
            scope => write!(f, "{}%{scope}", self.ip),
        }
    }
}

/// The index of the interface named `zone`, or `zone` itself if it is a
/// number; read from `/sys/class/net`, which needs no system call of ours.
fn interface_index(zone: &str) -> Option<u32> {
    if let Ok(index) = zone.parse::<u32>() {
        return (index > 0).then_some(index);
    }
    if zone.is_empty() || zone.contains('/') || zone.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{zone}/ifindex")).ok()?;
    text.trim().parse().ok().filter(|&index| index > 0)
}

/// Where to listen: the `--bind` addresses if any; else with `-4` every IPv4
/// address, with `-6` every IPv6 one, and by default both, IPv4 first. The
/// flag says whether it is that default (both families, IPv6 optional).
pub(crate) fn listen_on(binds: &[BindAddr], v4_only: bool, v6_only: bool) -> (Vec<BindAddr>, bool) {
    match (binds, v4_only, v6_only) {
        ([_, ..], _, _) => (binds.to_vec(), false),
        (_, true, _) => (vec![BindAddr::ANY_V4], false),
        (_, _, true) => (vec![BindAddr::ANY_V6], false),
        _ => (vec![BindAddr::ANY_V4, BindAddr::ANY_V6], true),
    }
}

/// Whether `err` says this host has no IPv6 (the address family is not
/// supported, or `::` cannot be assigned), rather than anything else.
pub(crate) fn no_ipv6(err: &netcore::NetError) -> bool {
    let (netcore::NetError::Socket { addr, source } | netcore::NetError::Bind { addr, source }) =
        err
    else {
        return false;
    };
    let family = matches!(source.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL));
    addr.is_ipv6() && family
}

#[cfg(test)]
mod tests {
    use super::{BindAddr, listen_on, no_ipv6};

    #[test]
    fn by_default_both_families_else_what_is_asked() {
        let v4 = [BindAddr::ANY_V4];
        let both = [BindAddr::ANY_V4, BindAddr::ANY_V6];
        assert_eq!(listen_on(&[], false, false), (both.to_vec(), true));
        assert_eq!(listen_on(&[], true, false), (v4.to_vec(), false));
        assert_eq!(listen_on(&[], false, true), (vec![BindAddr::ANY_V6], false));
        let given = [BindAddr::parse("::1").unwrap()];
        assert_eq!(listen_on(&given, false, false), (given.to_vec(), false));
        assert_eq!(BindAddr::ANY_V6.with_port(7).to_string(), "[::]:7");
    }

    #[test]
    fn only_a_missing_ipv6_family_allows_the_fallback() {
        let v6 = BindAddr::ANY_V6.with_port(7);
        let v4 = BindAddr::ANY_V4.with_port(7);
        let os = std::io::Error::from_raw_os_error;
        let socket = |addr, errno| netcore::NetError::Socket { addr, source: os(errno) };
        let bind = |addr, errno| netcore::NetError::Bind { addr, source: os(errno) };
        assert!(no_ipv6(&socket(v6, libc::EAFNOSUPPORT)));
        assert!(no_ipv6(&bind(v6, libc::EADDRNOTAVAIL)));
        assert!(!no_ipv6(&bind(v6, libc::EADDRINUSE)), "a port in use is an error");
        assert!(!no_ipv6(&bind(v4, libc::EADDRNOTAVAIL)), "IPv4 is never optional");
        assert!(!no_ipv6(&bind(v6, libc::EACCES)));
    }

    #[test]
    fn addresses_parse_with_brackets_and_zones() {
        let v4 = BindAddr::parse("127.0.0.1").unwrap();
        assert_eq!(v4.with_port(7).to_string(), "127.0.0.1:7");
        assert_eq!(BindAddr::parse("[::1]").unwrap().with_port(7).to_string(), "[::1]:7");
        // The loopback interface is index 1 on Linux.
        let link_local = BindAddr::parse("fe80::1%lo").unwrap();
        assert_eq!(link_local.with_port(7).to_string(), "[fe80::1%1]:7");
        assert_eq!(BindAddr::parse("fe80::1%1").unwrap(), link_local);
        assert_eq!(BindAddr::ANY_V4.to_string(), "0.0.0.0");
    }

    #[test]
    fn what_a_listener_could_never_bind_is_refused_with_the_reason() {
        let cases = [
            ("::ffff:127.0.0.1", "use --bind 127.0.0.1"),
            ("fe80::1", "is link-local: name its interface"),
            ("fe80::1%no-such-if", "no network interface named 'no-such-if'"),
            ("fe80::1%../lo", "no network interface"),
            ("127.0.0.1%lo", "only goes with an IPv6 address"),
            ("localhost", "is not an IPv4 or IPv6 address"),
        ];
        for (text, reason) in cases {
            let err = BindAddr::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
