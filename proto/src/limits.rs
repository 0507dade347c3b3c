//! MTU limits, in one place for the controller (which refuses what lies outside them) and the
//! agent (which refuses to program it). One set on purpose: the controller must accept every
//! MTU it derives itself (a 9216 underlay gives vxlan networks 9166), and the agent every MTU
//! the controller accepts.

use std::ops::RangeInclusive;

/// Workload MTUs (`--mtu`, and whatever is derived from the underlay): from IPv4's minimum
/// datagram size (RFC 791) to the largest MTU Linux bridge, veth and vxlan devices take
/// (`IP_MAX_MTU`).
pub const MTU: RangeInclusive<u32> = 576..=65535;

/// Underlay MTUs an agent may report: from the smallest MTU of any IP link (IPv6's minimum,
/// RFC 8200) to `IP_MAX_MTU`.
pub const UNDERLAY_MTU: RangeInclusive<u32> = 1280..=65535;

/// What VXLAN over an IPv4 underlay costs per packet: outer IPv4 (20), UDP (8), VXLAN (8) and
/// the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// What VXLAN over an IPv6 underlay costs per packet: outer IPv6 (40, a fixed header twice
/// IPv4's), UDP (8), VXLAN (8) and the inner Ethernet header (14). Using the IPv4 figure over
/// IPv6 (a known flannel bug) leaves workloads 20 bytes too large: full-size packets are
/// dropped or fragmented on the underlay.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// Checks a workload MTU; the reason on failure.
pub fn mtu(mtu: u32) -> Result<(), String> {
    check(mtu, &MTU)
}

/// Checks an underlay MTU; the reason on failure.
pub fn underlay_mtu(mtu: u32) -> Result<(), String> {
    check(mtu, &UNDERLAY_MTU)
}

fn check(value: u32, range: &RangeInclusive<u32>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!("must be between {} and {}", range.start(), range.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every MTU derived from an accepted underlay (vxlan: minus the overhead of either family;
    /// nat: as is) is
    /// itself accepted.
    #[test]
    fn every_derived_mtu_is_accepted() {
        for underlay in [*UNDERLAY_MTU.start(), 1500, 9000, 9216, *UNDERLAY_MTU.end()] {
            assert!(underlay_mtu(underlay).is_ok());
            assert!(mtu(underlay - VXLAN_OVERHEAD).is_ok(), "vxlan on {underlay}");
            assert!(
                mtu(underlay - VXLAN6_OVERHEAD).is_ok(),
                "vxlan over IPv6 on {underlay}"
            );
            assert!(mtu(underlay).is_ok(), "nat on {underlay}");
        }
        assert_eq!(mtu(575).unwrap_err(), "must be between 576 and 65535");
        assert!(mtu(65536).is_err() && underlay_mtu(1279).is_err());
    }
}
