//! One home per network mode on the agent's side: what a network of that mode wants in the
//! host's kernel (devices, how each peer host is reached, what cannot be reached), as data.
//! The planner ([`crate::plan`]) diffs these wants against a dump, the audit reads the same
//! plan, and the firewall asks [`crosses_underlay`]. A new mode is one file here and one arm
//! in each `match` below, which the compiler points at.

mod macvlan;
mod nat;
mod route;
mod vxlan;

use std::net::{IpAddr, Ipv4Addr};

use overlay_proto::modes::Mode;

use crate::kernel::Kernel;
use crate::spec::{BridgeSpec, NetworkSpec, PeerSpec, VxlanSpec};

/// This host's underlay segment, as the kernel shows it: whether a peer can be reached by a
/// plain route through the underlay device, with no router in between.
#[derive(Clone, Copy)]
pub struct Segment<'k> {
    kernel: &'k Kernel,
    /// The underlay device's index.
    pub underlay_index: u32,
}

impl<'k> Segment<'k> {
    pub fn new(kernel: &'k Kernel, underlay_index: u32) -> Self {
        Segment {
            kernel,
            underlay_index,
        }
    }

    /// `ip` as the next hop of a plain route through the underlay device, when it is on one
    /// of the underlay's own IPv4 subnets. Never an IPv6 address: overlays are IPv4, and an
    /// IPv4 route via an IPv6 next hop is not something overlay writes.
    pub fn next_hop(&self, ip: IpAddr) -> Option<Ipv4Addr> {
        let IpAddr::V4(ip) = ip else { return None };
        self.kernel
            .addresses_of(self.underlay_index)
            .iter()
            .any(|net| net.prefix() < 32 && net.contains(ip))
            .then_some(ip)
    }
}

/// A peer reached by a plain route through the underlay device.
#[derive(Debug)]
pub struct Direct<'a> {
    pub peer: &'a PeerSpec,
    /// Its underlay address, on this host's segment.
    pub via: Ipv4Addr,
}

/// What one network wants in the host's kernel.
#[derive(Debug, Default)]
pub struct Wants<'a> {
    /// The workloads' bridge, holding the gateway address.
    pub bridge: Option<&'a BridgeSpec>,
    /// The VXLAN device, holding its /32 address.
    pub vxlan: Option<&'a VxlanSpec>,
    /// An 802.1Q parent for macvlan endpoints: (its name, the base NIC, the VLAN id).
    pub vlan: Option<(&'a str, &'a str, u16)>,
    /// Peers reached through the VXLAN device: a permanent neighbour, a `self permanent` FDB
    /// entry and an onlink route via the peer's VTEP address each.
    pub tunnelled: Vec<&'a PeerSpec>,
    /// Peers on this host's underlay segment: an onlink route to their subnet via their
    /// underlay address, through the underlay device.
    pub direct: Vec<Direct<'a>>,
    /// Peers this network cannot reach, one line each: what the audit (and so `doctor`) says.
    pub unreachable: Vec<String>,
}

/// What `net` wants in the kernel of a host on `segment`.
pub fn wants<'a>(net: &'a NetworkSpec, segment: &Segment<'_>) -> Wants<'a> {
    match net.mode {
        Mode::Vxlan => vxlan::wants(net, segment),
        Mode::Route => route::wants(net, segment),
        Mode::Nat => nat::wants(net),
        Mode::Macvlan => macvlan::wants(net),
    }
}

/// Whether a network's plan reads what no counted netlink notification covers (the underlay's
/// addresses, NICs that are not overlay's): a pass must then plan from a fresh dump.
pub fn reads_outside(net: &NetworkSpec) -> bool {
    match net.mode {
        // Which peers share the segment comes from the underlay's addresses.
        Mode::Vxlan => net.direct_routing,
        Mode::Route => true,
        Mode::Nat => false,
        // Parents are NICs nobody reports on.
        Mode::Macvlan => true,
    }
}

/// Whether the network's workload traffic crosses the underlay device unencapsulated, so the
/// firewall lets the network's own addresses through between its bridge and the underlay.
pub fn crosses_underlay(net: &NetworkSpec) -> bool {
    match net.mode {
        Mode::Route => true,
        Mode::Vxlan => net.direct_routing,
        Mode::Nat | Mode::Macvlan => false,
    }
}
