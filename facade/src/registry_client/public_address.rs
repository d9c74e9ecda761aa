//! Which IP addresses are public: the only ones a redirect may lead to on its own (without
//! the operator naming the host as the upstream's storage).
//!
//! Everything a host or its network keeps for itself is not public: loopback, private
//! (RFC 1918, `fc00::/7`), link-local (`169.254/16` with the cloud metadata endpoint,
//! `fe80::/10`), unspecified (`0.0.0.0` reaches the host itself on Linux), shared (CGNAT
//! `100.64/10`), benchmarking, documentation, multicast, broadcast and reserved ranges. An IPv6
//! address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the IPv4
//! address it carries, so `::ffff:127.0.0.1` is loopback too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a public (globally routable) unicast address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let internal = a == 0 // "this network", 0.0.0.0 included
        || ip.is_loopback() // 127/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10, shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24, IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15, benchmarking
        || ip.is_documentation()
        || ip.is_multicast()
        || a >= 240; // 240/4 reserved, 255.255.255.255 broadcast
    !internal
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let internal = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local() // fc00::/7
        || ip.is_unicast_link_local() // fe80::/10
        || (first & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated, still routed inside)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // 2001:db8::/32, documentation
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0]); // 100::/64, discard
    !internal
}

/// The IPv4 address an IPv6 one carries: `::ffff:a.b.c.d` (mapped), `::a.b.c.d`
/// (compatible, deprecated), `64:ff9b::a.b.c.d` (NAT64) and `2002:AABB:CCDD::/48` (6to4).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback, judged as IPv6.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "52.216.8.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:52.216.8.1",
            "2002:34d8:0801::1",
        ] {
            assert!(public(ip), "{ip}");
        }
    }

    #[test]
    fn loopback_private_link_local_and_unspecified_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!public(ip), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_internal_ipv4_addresses_are_not_public() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:0001::1",
            "2002:c0a8:0101::1",
        ] {
            assert!(!public(ip), "{ip}");
        }
    }
}
