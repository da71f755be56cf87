//! The outbound destination policy: where the manager may send requests on a
//! caller's behalf (webhook deliveries, `POST /api/v1/troubleshooting/test-upstream`).
//!
//! Without the opt-in (the setting `webhooks.allow_private_targets`), addresses that
//! are not globally reachable unicast are refused: loopback, private, shared (CGNAT),
//! link-local, multicast, documentation, benchmarking and reserved ranges — and the
//! same ranges when they are carried inside IPv6 (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), so that
//! `http://[::127.0.0.1]/` cannot reach the manager itself.
//!
//! A host name is resolved once, every address it resolves to is checked, and the
//! caller connects to those checked addresses: a second lookup (which a hostile DNS
//! server could answer differently) never happens between check and connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why an IPv4 address is not a public destination, or `None` if it is one.
fn v4_restriction(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) => "documentation (192.0.2.0/24)",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (198, 51, 100) => "documentation (198.51.100.0/24)",
        (203, 0, 113) => "documentation (203.0.113.0/24)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

/// Why an IPv6 address is not a public destination, or `None` if it is one.
fn v6_restriction(ip: Ipv6Addr) -> Option<String> {
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() {
        return Some("unspecified (::)".into());
    }
    if ip.is_loopback() {
        return Some("loopback (::1)".into());
    }
    // IPv4 carried in IPv6: judged by the IPv4 address it reaches.
    let carried = if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        Some(("IPv4-mapped", embedded(s[6], s[7])))
    } else if s[..6] == [0; 6] {
        Some(("IPv4-compatible", embedded(s[6], s[7])))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(("NAT64", embedded(s[6], s[7])))
    } else if s[0] == 0x2002 {
        Some(("6to4", embedded(s[1], s[2])))
    } else {
        None
    };
    if let Some((how, v4)) = carried {
        return v4_restriction(v4).map(|why| format!("{how} {v4}, {why}"));
    }
    let why = match s[0] {
        // Local-use NAT64 translates into the operator's own networks.
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        0x0000..=0x00ff => "reserved (::/8)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        // Teredo, ORCHID, benchmarking and the other IETF protocol assignments.
        0x2001 if s[1] < 0x0200 => "IETF protocol assignments (2001::/23)",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x3fff if s[1] < 0x1000 => "documentation (3fff::/20)",
        0x5f00 => "segment routing (5f00::/16)",
        0xfc00..=0xfdff => "unique local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10)",
        0xff00..=0xffff => "multicast (ff00::/8)",
        _ => return None,
    };
    Some(why.into())
}

/// Why `ip` is not a public unicast destination, or `None` when it is one.
pub fn restriction(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_restriction(v4).map(str::to_string),
        IpAddr::V6(v6) => v6_restriction(v6),
    }
}

/// Whether `ip` is refused without the opt-in.
pub fn is_restricted(ip: IpAddr) -> bool {
    restriction(ip).is_some()
}

/// Why a destination was not resolved to addresses the policy admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The name did not resolve (or had no address); a fact about DNS, not policy.
    Resolve(String),
    /// An address is not public and the opt-in is off.
    Forbidden(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Resolve(m) | Refusal::Forbidden(m) => f.write_str(m),
        }
    }
}

/// Resolves `host` (a name or an IP literal, brackets allowed) once and checks every
/// address against the policy; the caller must connect only to the addresses
/// returned. If any address of a name is refused the whole name is: a name that
/// mixes public and private addresses is a rebinding attempt or a mistake.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
    limit: Duration,
) -> Result<Vec<SocketAddr>, Refusal> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(limit, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(Refusal::Resolve(format!("cannot resolve {host}: {e}"))),
            Err(_) => return Err(Refusal::Resolve(format!("resolving {host} timed out"))),
        },
    };
    if addrs.is_empty() {
        return Err(Refusal::Resolve(format!("{host} has no address")));
    }
    if !allow_private {
        for a in &addrs {
            if let Some(why) = restriction(a.ip()) {
                return Err(Refusal::Forbidden(format!(
                    "destination {host} is not a public address ({}: {why}); the setting webhooks.allow_private_targets allows it",
                    a.ip()
                )));
            }
        }
    }
    Ok(addrs)
}

/// A DNS resolver for the outgoing HTTP client that applies the policy to the
/// addresses it hands out, so that a delivery connects only to checked addresses.
/// IP literals never reach a resolver; they are checked before the request.
pub struct PolicyResolver {
    allow_private: Box<dyn Fn() -> bool + Send + Sync>,
}

impl PolicyResolver {
    /// `allow_private` reads the opt-in at each resolution (it is a live setting).
    pub fn new(allow_private: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            allow_private: Box::new(allow_private),
        }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = (self.allow_private)();
        Box::pin(async move {
            // The port is the client's to choose; 0 here is replaced when it connects.
            match resolve_checked(name.as_str(), 0, allow, Duration::from_secs(10)).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(e) => Err(e.to_string().into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn restricted(s: &str) -> bool {
        is_restricted(s.parse().expect("ip"))
    }

    #[test]
    fn special_ranges_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.5.5",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(restricted(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "192.0.3.1",
            "2606:2800:220:1::1",
            "2a00:1450:4001::1",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:200::1",
        ] {
            assert!(!restricted(ip), "{ip} must be allowed");
        }
    }

    proptest! {
        /// Every IPv4 address is judged the same whichever way IPv6 carries it.
        #[test]
        fn carried_ipv4_is_judged_as_itself(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            let direct = is_restricted(IpAddr::V4(v4));
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            prop_assert_eq!(is_restricted(IpAddr::V6(v4.to_ipv6_mapped())), direct);
            prop_assert_eq!(is_restricted(IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo))), direct);
            prop_assert_eq!(is_restricted(IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1))), direct);
            // IPv4-compatible: :: and ::1 themselves are refused regardless.
            prop_assert!(!direct || is_restricted(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo))));
        }

        /// The private ranges of the standard library are always refused.
        #[test]
        fn std_special_ipv4_is_refused(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            if v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast()
                || v4.is_broadcast() || v4.is_unspecified() || v4.is_documentation() {
                prop_assert!(is_restricted(IpAddr::V4(v4)));
            }
        }

        #[test]
        fn std_special_ipv6_is_refused(bits in any::<u128>()) {
            let v6 = Ipv6Addr::from(bits);
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
                || v6.is_unique_local() || v6.is_unicast_link_local() {
                prop_assert!(is_restricted(IpAddr::V6(v6)));
            }
        }
    }

    #[tokio::test]
    async fn literals_are_checked_without_dns_and_names_resolve_once() {
        let t = Duration::from_secs(5);
        assert!(matches!(
            resolve_checked("[::127.0.0.1]", 80, false, t).await,
            Err(Refusal::Forbidden(_))
        ));
        assert_eq!(
            resolve_checked("[::127.0.0.1]", 80, true, t).await,
            Ok(vec!["[::127.0.0.1]:80".parse().expect("addr")])
        );
        // `localhost` resolves from the hosts file, never the network.
        assert!(matches!(
            resolve_checked("localhost", 80, false, t).await,
            Err(Refusal::Forbidden(_))
        ));
        let ok = resolve_checked("localhost", 8080, true, t)
            .await
            .expect("resolves");
        assert!(ok.iter().all(|a| a.port() == 8080 && a.ip().is_loopback()));
    }
}
