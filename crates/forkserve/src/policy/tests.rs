//! The policy's decisions, on addresses alone: no socket, no process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Cidr, DENIED, Policy, TOO_MANY_FROM_SOURCE};
use crate::{Admit, Verdict};

fn peer(text: &str) -> SocketAddr {
    match text.parse() {
        Ok(addr) => addr,
        Err(_) => SocketAddr::new(text.parse().unwrap(), 40000),
    }
}

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

fn refused(reason: &str) -> Verdict {
    Verdict::Refuse(reason.to_owned().into())
}

#[test]
fn prefixes_parse_bare_addresses_and_normalise() {
    assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
    assert_eq!(cidr("[::1]").to_string(), "::1/128");
    assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
    // An IPv4-mapped prefix is the IPv4 prefix it carries.
    assert_eq!(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
    for bad in ["", "10.0.0.0/33", "::/129", "localhost", "10.0.0", "1.2.3.4/x"] {
        let err = bad.parse::<Cidr>().unwrap_err();
        assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
    }
}

#[test]
fn without_rules_everyone_is_admitted() {
    let policy = Policy::new();
    assert!(policy.permits("203.0.113.9".parse().unwrap()));
    assert!(policy.permits("2001:db8::9".parse().unwrap()));
}

#[test]
fn the_most_specific_rule_decides_whatever_the_order() {
    for policy in [
        Policy::new().deny(cidr("10.0.0.0/8")).allow(cidr("10.1.0.0/16")),
        Policy::new().allow(cidr("10.1.0.0/16")).deny(cidr("10.0.0.0/8")),
    ] {
        assert!(policy.permits("10.1.2.3".parse().unwrap()));
        assert!(!policy.permits("10.2.3.4".parse().unwrap()));
        // There is an allow rule, so what no rule contains is refused.
        assert!(!policy.permits("192.0.2.1".parse().unwrap()));
    }
}

#[test]
fn deny_only_rules_admit_the_rest_and_deny_wins_a_tie() {
    let policy = Policy::new().deny(cidr("192.0.2.0/24")).deny(cidr("2001:db8::/32"));
    assert!(!policy.permits("192.0.2.200".parse().unwrap()));
    assert!(!policy.permits("2001:db8:1::1".parse().unwrap()));
    assert!(policy.permits("198.51.100.1".parse().unwrap()));
    // IPv4 rules apply to IPv4-mapped IPv6 peers (a dual-stack socket's view).
    assert!(!policy.permits("::ffff:192.0.2.1".parse().unwrap()));
    let tie = Policy::new().allow(cidr("127.0.0.0/8")).deny(cidr("127.0.0.0/8"));
    assert!(!tie.permits("127.0.0.1".parse().unwrap()));
}

#[test]
fn a_denied_peer_is_refused_with_the_reason() {
    let mut policy = Policy::new().allow(cidr("127.0.0.1"));
    assert_eq!(policy.admit(peer("127.0.0.1")), Verdict::Serve);
    assert_eq!(policy.admit(peer("127.0.0.2")), refused(DENIED));
}

#[test]
fn the_per_source_limit_counts_live_connections_and_frees_on_release() {
    let mut policy = Policy::new().max_per_source(2);
    let (a, b) = (peer("127.0.0.2:1000"), peer("127.0.0.2:1001"));
    assert_eq!(policy.admit(a), Verdict::Serve);
    assert_eq!(policy.admit(b), Verdict::Serve);
    assert_eq!(policy.admit(peer("127.0.0.2:1002")), refused(TOO_MANY_FROM_SOURCE));
    // Another address is unaffected.
    assert_eq!(policy.admit(peer("127.0.0.3")), Verdict::Serve);
    policy.release(a);
    assert_eq!(policy.admit(peer("127.0.0.2:1003")), Verdict::Serve);
    // A refused connection was never counted, so it is never released.
    assert_eq!(policy.live.values().sum::<usize>(), 3);
    for released in [b, peer("127.0.0.2:1003"), peer("127.0.0.3")] {
        policy.release(released);
    }
    assert!(policy.live.is_empty(), "no entry outlives its connections: {:?}", policy.live);
}

#[test]
fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
    let mut policy = Policy::new().max_per_source(1);
    assert_eq!(policy.admit(peer("[2001:db8:0:1::1]:5")), Verdict::Serve);
    // Same /64, another address: the same source.
    assert_eq!(policy.admit(peer("[2001:db8:0:1::2]:5")), refused(TOO_MANY_FROM_SOURCE));
    // Another /64: another source.
    assert_eq!(policy.admit(peer("[2001:db8:0:2::1]:5")), Verdict::Serve);
    assert_eq!(policy.admit(peer("192.0.2.1")), Verdict::Serve);
    assert_eq!(policy.admit(peer("[::ffff:192.0.2.1]:5")), refused(TOO_MANY_FROM_SOURCE));
}

#[test]
fn the_rate_admits_a_burst_then_asks_to_wait_until_a_token_is_due() {
    let mut policy = Policy::new().max_rate(4);
    let start = Instant::now();
    for i in 0..4 {
        assert_eq!(policy.admit_at(peer("127.0.0.1"), start), Verdict::Serve, "burst {i}");
    }
    let Verdict::Wait(wait) = policy.admit_at(peer("127.0.0.1"), start) else {
        panic!("a fifth connection in the same instant must wait")
    };
    assert!(wait > Duration::from_millis(240) && wait <= Duration::from_millis(250), "{wait:?}");
    // A quarter of a second later one token is back, and only one.
    let later = start + Duration::from_millis(250);
    assert_eq!(policy.admit_at(peer("127.0.0.1"), later), Verdict::Serve);
    assert!(matches!(policy.admit_at(peer("127.0.0.1"), later), Verdict::Wait(_)));
    // After a long pause the bucket holds one second's worth, no more.
    let much_later = later + Duration::from_secs(60);
    let served = (0..10)
        .filter(|_| policy.admit_at(peer("127.0.0.1"), much_later) == Verdict::Serve)
        .count();
    assert_eq!(served, 4);
}

#[test]
fn refusals_take_no_rate_token_and_checks_run_in_order() {
    let mut policy = Policy::new().deny(cidr("192.0.2.0/24")).max_per_source(1).max_rate(1);
    let now = Instant::now();
    assert_eq!(policy.admit_at(peer("192.0.2.1"), now), refused(DENIED));
    assert_eq!(policy.admit_at(peer("127.0.0.1"), now), Verdict::Serve);
    assert_eq!(policy.admit_at(peer("127.0.0.1"), now), refused(TOO_MANY_FROM_SOURCE));
    assert!(matches!(policy.admit_at(peer("127.0.0.2"), now), Verdict::Wait(_)));
}
