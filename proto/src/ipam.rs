//! Address arithmetic: splitting a network into host subnets, picking the next free address,
//! VNIs and MACs. Pure functions shared by the two allocators: the controller's state machine
//! (VNIs, leases, macvlan addresses: every replica computes the same answer from the same
//! state) and each agent (the addresses of its own leases).
//!
//! The subnet and address functions work for both families ([`Family`]): addresses are
//! numbers (`u128` holds either), so IPv4 and IPv6 share one implementation and one set of
//! property tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::mac::MacAddr;

/// First VNI handed out automatically (lower ones are left to operators choosing by hand).
pub const AUTO_VNI_START: u32 = 4096;
pub const VNI_MAX: u32 = 16_777_215;

/// An address as the arithmetic below needs it: a number of its family's width.
pub trait Address: Copy + Ord + std::fmt::Debug {
    /// Address width in bits (32 or 128).
    const BITS: u8;
    /// Whether the last address of a subnet is its broadcast (IPv4), never an endpoint's.
    const BROADCAST: bool;
    fn to_u128(self) -> u128;
    /// The address `bits` stands for (its low [`Address::BITS`] bits).
    fn from_u128(bits: u128) -> Self;
}

impl Address for Ipv4Addr {
    const BITS: u8 = 32;
    const BROADCAST: bool = true;
    fn to_u128(self) -> u128 {
        u32::from(self) as u128
    }
    fn from_u128(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }
}

impl Address for Ipv6Addr {
    const BITS: u8 = 128;
    const BROADCAST: bool = false;
    fn to_u128(self) -> u128 {
        u128::from(self)
    }
    fn from_u128(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
}

/// A network of either family ([`Ipv4Network`], [`Ipv6Network`]).
pub trait Family: Copy + Ord {
    type Addr: Address;
    const BITS: u8 = <Self::Addr as Address>::BITS;
    fn network_bits(&self) -> u128;
    fn prefix_len(&self) -> u8;
    /// The network of `prefix` bits at `bits` (the host part of `bits` is zero).
    fn from_parts(bits: u128, prefix: u8) -> Self;
}

impl Family for Ipv4Network {
    type Addr = Ipv4Addr;
    fn network_bits(&self) -> u128 {
        self.network().to_u128()
    }
    fn prefix_len(&self) -> u8 {
        self.prefix()
    }
    fn from_parts(bits: u128, prefix: u8) -> Self {
        Ipv4Network::new(Ipv4Addr::from_u128(bits), prefix).expect("prefix validated by caller")
    }
}

impl Family for Ipv6Network {
    type Addr = Ipv6Addr;
    fn network_bits(&self) -> u128 {
        self.network().to_u128()
    }
    fn prefix_len(&self) -> u8 {
        self.prefix()
    }
    fn from_parts(bits: u128, prefix: u8) -> Self {
        Ipv6Network::new(Ipv6Addr::from_u128(bits), prefix).expect("prefix validated by caller")
    }
}

/// Addresses in a `/prefix` network of family `F`, saturating at `u128::MAX` (an IPv6 /0).
fn size<F: Family>(prefix: u8) -> u128 {
    1u128
        .checked_shl(u32::from(F::BITS - prefix))
        .unwrap_or(u128::MAX)
}

/// How many `/host_prefix` subnets fit in `cidr` (saturating at `u64::MAX`: an IPv6 network
/// may hold more than a count can say, never more than the controller can lease).
pub fn subnet_count<F: Family>(cidr: F, host_prefix: u8) -> u64 {
    1u64.checked_shl(u32::from(host_prefix - cidr.prefix_len()))
        .unwrap_or(u64::MAX)
}

/// The `n`th `/host_prefix` subnet of `cidr` (0-based). `n` must be below [`subnet_count`].
pub fn nth_subnet<F: Family>(cidr: F, host_prefix: u8, n: u64) -> F {
    F::from_parts(
        cidr.network_bits() + u128::from(n) * size::<F>(host_prefix),
        host_prefix,
    )
}

/// The lowest subnet of `cidr` that is not in `used`.
pub fn first_free_subnet<F: Family>(
    cidr: F,
    host_prefix: u8,
    used: impl IntoIterator<Item = F>,
) -> Option<F> {
    let shift = u32::from(F::BITS - host_prefix);
    let base = cidr.network_bits();
    let taken: BTreeSet<u128> = used
        .into_iter()
        .map(|s| {
            s.network_bits()
                .wrapping_sub(base)
                .checked_shr(shift)
                .unwrap_or(0)
        })
        .collect();
    let count = subnet_count(cidr, host_prefix);
    // The answer is the first gap in the sorted indices, at most `taken.len()`.
    let mut candidate = 0u128;
    for &t in &taken {
        if t != candidate {
            break;
        }
        candidate += 1;
    }
    (candidate < u128::from(count)).then(|| nth_subnet(cidr, host_prefix, candidate as u64))
}

/// The gateway of a host subnet: its first host address, held by the host's bridge.
pub fn subnet_gateway<F: Family>(subnet: F) -> F::Addr {
    F::Addr::from_u128(subnet.network_bits() + 1)
}

/// Addresses endpoints may take in a host subnet: everything but the network address (in
/// IPv6 the subnet-router anycast address), the gateway and, in IPv4, the broadcast address.
/// `None` when the subnet has no room for one.
pub fn endpoint_range<F: Family>(subnet: F) -> Option<(F::Addr, F::Addr)> {
    let reserved_at_end = u128::from(<F::Addr as Address>::BROADCAST);
    let host_bits = F::BITS - subnet.prefix_len();
    // Room for the network address, the gateway, one endpoint (and the broadcast).
    if host_bits < 2 {
        return None;
    }
    let first = subnet.network_bits() + 2;
    let last = subnet.network_bits() + (size::<F>(subnet.prefix_len()) - 1) - reserved_at_end;
    (first <= last).then(|| (F::Addr::from_u128(first), F::Addr::from_u128(last)))
}

/// The IPv6 address of the endpoint that holds IPv4 `ip` in a dual-stack host subnet: the
/// same offset into the host's IPv6 subnet (`10.1.3.7` in `10.1.3.0/24` pairs with
/// `fd00:1:0:3::7` in `fd00:1:0:3::/64`). The IPv4 allocation is the only one: every address
/// it hands out once is unique, so its pair is too, and the gateway (offset 1) and VTEP
/// address (offset 0) pair the same way. `None` when `ip` is outside `subnet` or the offset
/// does not fit `subnet6` (the controller refuses such host prefixes).
pub fn paired_v6(subnet: Ipv4Network, subnet6: Ipv6Network, ip: Ipv4Addr) -> Option<Ipv6Addr> {
    if !subnet.contains(ip) {
        return None;
    }
    let offset = u128::from(u32::from(ip) - u32::from(subnet.network()));
    let host_bits6 = 128 - u32::from(subnet6.prefix());
    if host_bits6 < 128 && offset >> host_bits6 != 0 {
        return None;
    }
    Some(Ipv6Addr::from(u128::from(subnet6.network()) + offset))
}

/// Whether `cidr` is wholly global unicast (2000::/3) or unique local (fc00::/7): the only
/// IPv6 ranges an overlay network may use. Everything else either is not routed (link-local,
/// multicast, loopback, site-local) or is read as IPv4 by the workloads' sockets (the
/// IPv4-mapped and -compatible ranges).
pub fn overlay_range6(cidr: Ipv6Network) -> bool {
    let first = cidr.network().segments()[0];
    let within = |bits: u16, len: u8| first >> (16 - len) == bits >> (16 - len) && cidr.prefix() >= len;
    within(0x2000, 3) || within(0xfc00, 7)
}

/// Whether every offset of an IPv4 host subnet of `/host_prefix` fits an IPv6 one of
/// `/host_prefix6` (see [`paired_v6`]).
pub fn pairs_fit(host_prefix: u8, host_prefix6: u8) -> bool {
    u32::from(host_prefix6) <= 96 + u32::from(host_prefix)
}

/// Next free address in `first..=last`, starting after `cursor` and wrapping around, skipping
/// `used` and `reserved`. Round-robin rather than lowest-free, so a just-released address is
/// the last to be reused.
pub fn next_free_ip<A: Address, V>(
    first: A,
    last: A,
    cursor: Option<A>,
    used: &BTreeMap<A, V>,
    reserved: &[A],
) -> Option<A> {
    let (lo, hi) = (first.to_u128(), last.to_u128());
    if lo > hi {
        return None;
    }
    let start = match cursor.map(A::to_u128) {
        Some(c) if c >= lo && c < hi => c + 1,
        _ => lo,
    };
    let free = |a: &u128| {
        let ip = A::from_u128(*a);
        !used.contains_key(&ip) && !reserved.contains(&ip)
    };
    // Lazily: an IPv6 range is far larger than anything `used` can hold, so the search ends
    // within `used.len() + reserved.len() + 1` steps either way.
    (start..=hi).chain(lo..start).find(free).map(A::from_u128)
}

/// Number of addresses in `first..=last` (saturating at `u64::MAX`).
pub fn range_len<A: Address>(first: A, last: A) -> u64 {
    let (lo, hi) = (first.to_u128(), last.to_u128());
    match hi.checked_sub(lo) {
        Some(d) => u64::try_from(d)
            .ok()
            .and_then(|d| d.checked_add(1))
            .unwrap_or(u64::MAX),
        None => 0,
    }
}

/// Lowest VNI from [`AUTO_VNI_START`] not in `used`.
pub fn first_free_vni(used: &BTreeSet<u32>) -> Option<u32> {
    let mut candidate = AUTO_VNI_START;
    for &v in used.range(AUTO_VNI_START..) {
        if v != candidate {
            break;
        }
        candidate += 1;
    }
    (candidate <= VNI_MAX).then_some(candidate)
}

/// A workload's MAC, derived from its IPv4 address (`0a:58:` + the four octets). Stable across
/// re-attach and unique because addresses are unique cluster-wide.
pub fn mac_from_ip(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// A host's VTEP MAC: a hash of its name, locally administered and unicast, rehashed with a
/// counter until it differs from every MAC in `taken`.
pub fn vtep_mac(name: &str, taken: &BTreeSet<MacAddr>) -> MacAddr {
    (0u32..)
        .map(|salt| {
            let h = fnv1a(name.as_bytes(), salt);
            let b = h.to_be_bytes();
            // 0x02: locally administered; clear bit 0: unicast. 0x0a58 is kept for workloads.
            let first = (b[0] & 0xfc) | 0x02;
            MacAddr([
                if first == 0x0a { 0x0e } else { first },
                b[1],
                b[2],
                b[3],
                b[4],
                b[5],
            ])
        })
        .find(|mac| !taken.contains(mac))
        .expect("2^32 salts cannot all collide")
}

fn fnv1a(bytes: &[u8], salt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.iter().chain(salt.to_be_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn splits_and_finds_gaps() {
        let cidr = net("10.1.0.0/16");
        assert_eq!(subnet_count(cidr, 24), 256);
        assert_eq!(nth_subnet(cidr, 24, 3), net("10.1.3.0/24"));
        let used = [net("10.1.0.0/24"), net("10.1.1.0/24"), net("10.1.3.0/24")];
        assert_eq!(first_free_subnet(cidr, 24, used), Some(net("10.1.2.0/24")));
        let all: Vec<_> = (0..4).map(|n| nth_subnet(net("10.2.0.0/24"), 26, n)).collect();
        assert_eq!(first_free_subnet(net("10.2.0.0/24"), 26, all), None);
    }

    #[test]
    fn endpoint_range_skips_network_gateway_broadcast() {
        assert_eq!(
            endpoint_range(net("10.1.3.0/24")),
            Some(("10.1.3.2".parse().unwrap(), "10.1.3.254".parse().unwrap()))
        );
        assert_eq!(
            subnet_gateway(net("10.1.3.0/24")),
            "10.1.3.1".parse::<Ipv4Addr>().unwrap()
        );
        // A /30 holds exactly one endpoint; a /31 none.
        assert_eq!(
            endpoint_range(net("10.1.3.0/30")),
            Some(("10.1.3.2".parse().unwrap(), "10.1.3.2".parse().unwrap()))
        );
        assert_eq!(endpoint_range(net("10.1.3.0/31")), None);
    }

    #[test]
    fn next_free_ip_is_round_robin() {
        let (first, last) = ("10.0.0.2".parse().unwrap(), "10.0.0.5".parse().unwrap());
        let mut used = BTreeMap::new();
        used.insert("10.0.0.2".parse::<Ipv4Addr>().unwrap(), ());
        assert_eq!(
            next_free_ip(first, last, None, &used, &[]),
            Some("10.0.0.3".parse().unwrap())
        );
        // After .4, .5 comes next, then wrap to .3 (skipping the used .2).
        let cursor = Some("10.0.0.4".parse().unwrap());
        assert_eq!(
            next_free_ip(first, last, cursor, &used, &[]),
            Some("10.0.0.5".parse().unwrap())
        );
        let cursor = Some("10.0.0.5".parse().unwrap());
        assert_eq!(
            next_free_ip(first, last, cursor, &used, &[]),
            Some("10.0.0.3".parse().unwrap())
        );
        for a in ["10.0.0.3", "10.0.0.4", "10.0.0.5"] {
            used.insert(a.parse().unwrap(), ());
        }
        assert_eq!(next_free_ip(first, last, cursor, &used, &[]), None);
    }

    #[test]
    fn ipv6_subnets_and_ranges() {
        let cidr: Ipv6Network = "2001:db8:1::/48".parse().unwrap();
        assert_eq!(subnet_count(cidr, 64), 65_536);
        assert_eq!(nth_subnet(cidr, 64, 3), "2001:db8:1:3::/64".parse().unwrap());
        let lease: Ipv6Network = "2001:db8:1:3::/64".parse().unwrap();
        assert_eq!(
            subnet_gateway(lease),
            "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap()
        );
        // No broadcast in IPv6: the last address is an endpoint's; the subnet-router anycast
        // address (the network's) and the gateway are not.
        let (first, last) = endpoint_range(lease).unwrap();
        assert_eq!(first, "2001:db8:1:3::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            last,
            "2001:db8:1:3:ffff:ffff:ffff:ffff".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(range_len(first, last), u64::MAX - 1);
        let tiny: Ipv6Network = "2001:db8::/127".parse().unwrap();
        assert_eq!(endpoint_range(tiny), None);
        let one: Ipv6Network = "2001:db8::/126".parse().unwrap();
        assert_eq!(endpoint_range(one).map(|(f, l)| range_len(f, l)), Some(2));
        // Counts saturate instead of overflowing: a /32 holds 2^64 /96 leases.
        let wide: Ipv6Network = "2001:db8::/32".parse().unwrap();
        assert_eq!(subnet_count(wide, 96), u64::MAX);
        assert_eq!(
            range_len(
                Ipv6Addr::UNSPECIFIED,
                "::ffff:ffff:ffff:ffff:ffff".parse().unwrap()
            ),
            u64::MAX
        );
    }

    #[test]
    fn ipv6_addresses_pair_with_ipv4_offsets() {
        let v6 = |s: &str| s.parse::<Ipv6Network>().unwrap();
        let pair = |ip: &str, s6: &str| paired_v6(net("10.1.3.0/24"), v6(s6), ip.parse().unwrap());
        assert_eq!(
            pair("10.1.3.7", "fd00:1:0:3::/64"),
            Some("fd00:1:0:3::7".parse().unwrap())
        );
        assert_eq!(
            pair("10.1.3.255", "fd00::/120"),
            Some("fd00::ff".parse().unwrap())
        );
        // The gateway pairs with the gateway, the VTEP (network) address with the network's.
        assert_eq!(
            pair("10.1.3.1", "fd00::/64"),
            Some(subnet_gateway(v6("fd00::/64")))
        );
        assert_eq!(pair("10.1.3.0", "fd00::/64"), Some("fd00::".parse().unwrap()));
        // Outside the subnet, or an offset the IPv6 subnet cannot hold.
        assert_eq!(pair("10.1.4.7", "fd00::/64"), None);
        assert_eq!(pair("10.1.3.255", "fd00::/121"), None);
        assert!(pairs_fit(24, 120) && !pairs_fit(24, 121) && pairs_fit(30, 126) && pairs_fit(8, 64));
    }

    #[test]
    fn vni_and_macs() {
        let used: BTreeSet<u32> = [4096, 4097, 4099, 17].into_iter().collect();
        assert_eq!(first_free_vni(&used), Some(4098));
        assert_eq!(
            mac_from_ip("10.1.0.5".parse().unwrap()).to_string(),
            "0a:58:0a:01:00:05"
        );
        let a = vtep_mac("h1", &BTreeSet::new());
        assert_eq!(a, vtep_mac("h1", &BTreeSet::new()), "derivation is stable");
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
        let taken: BTreeSet<_> = [a].into_iter().collect();
        assert_ne!(vtep_mac("h1", &taken), a, "a collision is rehashed");
    }

    /// The allocators' properties, once per family: leases are the lowest free subnets,
    /// inside the network and aligned; addresses are never given twice nor lost (whatever is
    /// released can be given again, and an allocator says "full" only when it is).
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn v4_network() -> impl Strategy<Value = (Ipv4Network, u8)> {
            (8u8..=26, any::<u32>(), 1u8..=6).prop_map(|(prefix, bits, extra)| {
                let cidr = Ipv4Network::new(Ipv4Addr::from(bits), prefix).unwrap();
                let cidr = Ipv4Network::new(cidr.network(), prefix).unwrap();
                (cidr, (prefix + extra).min(30))
            })
        }

        fn v6_network() -> impl Strategy<Value = (Ipv6Network, u8)> {
            (32u8..=112, any::<u128>(), 1u8..=8).prop_map(|(prefix, bits, extra)| {
                let cidr = Ipv6Network::new(Ipv6Addr::from(bits), prefix).unwrap();
                let cidr = Ipv6Network::new(cidr.network(), prefix).unwrap();
                (cidr, (prefix + extra).min(120))
            })
        }

        fn v4_lease() -> impl Strategy<Value = Ipv4Network> {
            (26u8..=30, any::<u32>()).prop_map(|(p, bits)| {
                Ipv4Network::new(Ipv4Network::new(Ipv4Addr::from(bits), p).unwrap().network(), p).unwrap()
            })
        }

        fn v6_lease() -> impl Strategy<Value = Ipv6Network> {
            (122u8..=126, any::<u128>()).prop_map(|(p, bits)| {
                Ipv6Network::new(Ipv6Network::new(Ipv6Addr::from(bits), p).unwrap().network(), p).unwrap()
            })
        }

        fn leases_are_lowest_free<F: Family + std::fmt::Debug>(cidr: F, host_prefix: u8, taken: &[u64]) {
            let count = subnet_count(cidr, host_prefix);
            let used: BTreeSet<F> = taken
                .iter()
                .map(|n| nth_subnet(cidr, host_prefix, n % count))
                .collect();
            match first_free_subnet(cidr, host_prefix, used.iter().copied()) {
                Some(s) => {
                    assert!(!used.contains(&s), "{s:?} is leased already");
                    assert_eq!(s.prefix_len(), host_prefix);
                    let offset = s.network_bits() - cidr.network_bits();
                    let index = offset >> (F::BITS - host_prefix);
                    assert!(index < u128::from(count), "{s:?} lies outside {cidr:?}");
                    // Lowest: every subnet below it is taken.
                    for below in 0..index as u64 {
                        assert!(used.contains(&nth_subnet(cidr, host_prefix, below)));
                    }
                }
                None => assert_eq!(used.len() as u64, count, "full only when every subnet is leased"),
            }
        }

        /// Ops: `Some(i)` releases the `i`th held address (modulo), `None` allocates.
        fn addresses_never_twice_never_lost<F: Family>(lease: F, ops: &[Option<usize>]) {
            let Some((first, last)) = endpoint_range(lease) else {
                return;
            };
            let gateway = subnet_gateway(lease);
            let capacity = range_len(first, last);
            let mut held: BTreeMap<F::Addr, ()> = BTreeMap::new();
            let mut cursor = None;
            for op in ops {
                match op {
                    Some(i) if !held.is_empty() => {
                        let ip = *held.keys().nth(i % held.len()).unwrap();
                        held.remove(&ip);
                    }
                    _ => match next_free_ip(first, last, cursor, &held, &[gateway]) {
                        Some(ip) => {
                            assert!(ip >= first && ip <= last, "{ip:?} outside the range");
                            assert_ne!(ip, gateway);
                            assert!(held.insert(ip, ()).is_none(), "{ip:?} given twice");
                            cursor = Some(ip);
                        }
                        None => assert_eq!(held.len() as u64, capacity, "full only when full"),
                    },
                }
            }
            // Nothing leaks: released addresses come back until the range is full.
            while let Some(ip) = next_free_ip(first, last, cursor, &held, &[gateway]) {
                assert!(held.insert(ip, ()).is_none(), "{ip:?} given twice");
                cursor = Some(ip);
            }
            assert_eq!(held.len() as u64, capacity);
        }

        /// Dual stack: every IPv4 address of a host subnet has its own IPv6 twin inside the
        /// host's IPv6 subnet when (and only when) the prefixes fit; the gateway pairs with the
        /// gateway, so no endpoint's twin is the IPv6 gateway or the VTEP (the network address).
        fn pairs_are_unique_and_inside(subnet: Ipv4Network, prefix6: u8, bits6: u128) {
            let subnet6 = Ipv6Network::new(Ipv6Addr::from(bits6), prefix6).unwrap();
            let subnet6 = Ipv6Network::new(subnet6.network(), prefix6).unwrap();
            let fits = pairs_fit(subnet.prefix(), prefix6);
            let pair = |ip| paired_v6(subnet, subnet6, ip);
            assert_eq!(pair(subnet.broadcast()).is_some(), fits, "{subnet} in {subnet6}");
            if !fits {
                return;
            }
            assert_eq!(pair(subnet_gateway(subnet)), Some(subnet_gateway(subnet6)));
            assert_eq!(pair(subnet.network()), Some(subnet6.network()));
            let (first, last) = endpoint_range(subnet).unwrap();
            let mut seen = BTreeSet::new();
            for ip in (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from) {
                let ip6 = pair(ip).expect("fits");
                assert!(subnet6.contains(ip6), "{ip6} outside {subnet6}");
                assert!(
                    ip6 != subnet6.network() && ip6 != subnet_gateway(subnet6)
                        || ip == subnet_gateway(subnet)
                );
                assert!(seen.insert(ip6), "{ip6} paired twice");
            }
            assert_eq!(
                pair(Ipv4Addr::from(u32::from(subnet.broadcast()).wrapping_add(1))),
                None
            );
        }

        proptest! {
            #[test]
            fn ipv4_leases((cidr, host) in v4_network(), taken in prop::collection::vec(0u64..80, 0..40)) {
                leases_are_lowest_free(cidr, host, &taken);
            }

            #[test]
            fn ipv6_leases((cidr, host) in v6_network(), taken in prop::collection::vec(0u64..300, 0..40)) {
                leases_are_lowest_free(cidr, host, &taken);
            }

            #[test]
            fn ipv4_addresses(lease in v4_lease(), ops in prop::collection::vec(prop::option::weighted(0.3, 0usize..64), 0..120)) {
                addresses_never_twice_never_lost(lease, &ops);
            }

            #[test]
            fn ipv6_addresses(lease in v6_lease(), ops in prop::collection::vec(prop::option::weighted(0.3, 0usize..64), 0..120)) {
                addresses_never_twice_never_lost(lease, &ops);
            }

            #[test]
            fn dual_stack_pairs(subnet in (22u8..=30, any::<u32>()).prop_map(|(p, bits)| {
                    Ipv4Network::new(Ipv4Network::new(Ipv4Addr::from(bits), p).unwrap().network(), p).unwrap()
                }),
                (prefix6, bits6) in (48u8..=120, any::<u128>())) {
                pairs_are_unique_and_inside(subnet, prefix6, bits6);
            }
        }
    }
}
