//! Address arithmetic: splitting a network into host subnets, picking the next free address,
//! VNIs and MACs. Pure functions shared by the two allocators: the controller's state machine
//! (VNIs, leases, macvlan addresses: every replica computes the same answer from the same
//! state) and each agent (the addresses of its own leases).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::mac::MacAddr;

/// First VNI handed out automatically (lower ones are left to operators choosing by hand).
pub const AUTO_VNI_START: u32 = 4096;
pub const VNI_MAX: u32 = 16_777_215;

/// How many `/host_prefix` subnets fit in `cidr`.
pub fn subnet_count(cidr: Ipv4Network, host_prefix: u8) -> u64 {
    1u64 << (host_prefix - cidr.prefix())
}

/// The `n`th `/host_prefix` subnet of `cidr` (0-based). `n` must be below [`subnet_count`].
pub fn nth_subnet(cidr: Ipv4Network, host_prefix: u8, n: u64) -> Ipv4Network {
    let base = u32::from(cidr.network()) as u64;
    let size = 1u64 << (32 - host_prefix);
    let addr = Ipv4Addr::from((base + n * size) as u32);
    Ipv4Network::new(addr, host_prefix).expect("prefix validated by caller")
}

/// The lowest subnet of `cidr` that is not in `used`.
pub fn first_free_subnet(
    cidr: Ipv4Network,
    host_prefix: u8,
    used: impl IntoIterator<Item = Ipv4Network>,
) -> Option<Ipv4Network> {
    let size_shift = 32 - host_prefix as u32;
    let base = u32::from(cidr.network()) as u64;
    let taken: BTreeSet<u64> = used
        .into_iter()
        .map(|s| ((u32::from(s.network()) as u64) - base) >> size_shift)
        .collect();
    let count = subnet_count(cidr, host_prefix);
    // The answer is the first gap in the sorted indices, at most `taken.len()`.
    let mut candidate = 0u64;
    for &t in &taken {
        if t != candidate {
            break;
        }
        candidate += 1;
    }
    (candidate < count).then(|| nth_subnet(cidr, host_prefix, candidate))
}

/// The gateway of a host subnet: its first host address, held by the host's bridge.
pub fn subnet_gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Addresses endpoints may take in a host subnet: everything but the network address, the
/// gateway and the broadcast address. `None` when the subnet has no room for one.
pub fn endpoint_range(subnet: Ipv4Network) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let first = u32::from(subnet.network()) as u64 + 2;
    let last = u32::from(subnet.broadcast()) as u64 - 1;
    (subnet.prefix() <= 30 && first <= last)
        .then(|| (Ipv4Addr::from(first as u32), Ipv4Addr::from(last as u32)))
}

/// Next free address in `first..=last`, starting after `cursor` and wrapping around, skipping
/// `used` and `reserved`. Round-robin rather than lowest-free, so a just-released address is
/// the last to be reused.
pub fn next_free_ip<V>(
    first: Ipv4Addr,
    last: Ipv4Addr,
    cursor: Option<Ipv4Addr>,
    used: &BTreeMap<Ipv4Addr, V>,
    reserved: &[Ipv4Addr],
) -> Option<Ipv4Addr> {
    let (lo, hi) = (u32::from(first), u32::from(last));
    if lo > hi {
        return None;
    }
    let start = match cursor.map(u32::from) {
        Some(c) if c >= lo && c < hi => c + 1,
        _ => lo,
    };
    let free = |a: u32| {
        let ip = Ipv4Addr::from(a);
        !used.contains_key(&ip) && !reserved.contains(&ip)
    };
    (start..=hi)
        .chain(lo..start)
        .find(|&a| free(a))
        .map(Ipv4Addr::from)
}

/// Number of addresses in `first..=last`.
pub fn range_len(first: Ipv4Addr, last: Ipv4Addr) -> u64 {
    (u32::from(last) as u64 + 1).saturating_sub(u32::from(first) as u64)
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
}
