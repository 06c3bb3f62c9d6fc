//! Client address ranges (`access.clientIps.allow`): the store validates
//! them with this parser, the filter matches the client's address with it.
//!
//! An entry is an address (`192.0.2.7`, `2001:db8::1`: one host) or a CIDR
//! block (`10.0.0.0/8`, `2001:db8::/32`). Host bits below the prefix are
//! refused, as a typo would otherwise widen or narrow the range silently.
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) match as the IPv4 address.

use std::net::IpAddr;

/// Longest entry accepted (an IPv6 address and a prefix fit easily).
pub const MAX_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `None` for anything but an address or a CIDR block without host bits.
    pub fn parse(text: &str) -> Option<Cidr> {
        if text.len() > MAX_LEN {
            return None;
        }
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let network = network.to_canonical();
        let width = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            // Digits only: `parse` would take `+8`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => width,
        };
        if prefix > width || bits(network) & !mask(prefix, width) != 0 {
            return None;
        }
        Some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let width = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 32,
            (IpAddr::V6(_), IpAddr::V6(_)) => 128,
            _ => return false,
        };
        bits(ip) & mask(self.prefix, width) == bits(self.network)
    }
}

/// Whether `ip` is in any of the `allow` entries (entries that do not parse
/// match nothing: the store refuses them before they get here).
pub fn allowed(allow: &[String], ip: IpAddr) -> bool {
    allow.iter().filter_map(|e| Cidr::parse(e)).any(|c| c.contains(ip))
}

/// The address of Envoy's `source.address` property (`192.0.2.7:51234`,
/// `[2001:db8::1]:51234`, or an address without a port).
pub fn parse_socket_address(text: &str) -> Option<IpAddr> {
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The network mask of `prefix` bits in an address `width` bits wide.
fn mask(prefix: u8, width: u8) -> u128 {
    let full: u128 = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    match u32::from(width - prefix.min(width)) {
        128 => 0,
        host => full & !((1u128 << host) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_hosts() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6 is the IPv4 address");
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")) && !ten.contains(ip("2001:db8::1")), "families never mix");
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("203.0.113.9")) && !all4.contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("192.0.2.0/31").unwrap().contains(ip("192.0.2.1")));
    }

    #[test]
    fn what_is_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.1/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08a",
            "10.0.0/8",
            "example.com",
            " 10.0.0.0/8",
            "10.0.0.0/8/8",
            "2001:db8::1/32",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        assert!(Cidr::parse(&"1".repeat(100)).is_none());
    }

    #[test]
    fn envoy_source_addresses() {
        assert_eq!(parse_socket_address("127.0.0.1:51234"), Some(ip("127.0.0.1")));
        assert_eq!(parse_socket_address("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_socket_address("[::ffff:192.0.2.7]:1"), Some(ip("192.0.2.7")));
        assert_eq!(parse_socket_address("192.0.2.7"), Some(ip("192.0.2.7")));
        assert_eq!(parse_socket_address("/tmp/envoy.sock"), None);
        assert_eq!(parse_socket_address(""), None);
    }

    #[test]
    fn allow_lists() {
        let list = vec!["10.0.0.0/8".to_string(), "2001:db8::/32".to_string(), "junk".to_string()];
        assert!(allowed(&list, ip("10.2.3.4")));
        assert!(allowed(&list, ip("2001:db8::9")));
        assert!(!allowed(&list, ip("192.0.2.1")));
        assert!(!allowed(&[], ip("10.2.3.4")), "an empty list allows nobody");
    }
}
