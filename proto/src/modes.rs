//! The network modes, one vocabulary for every crate: the command line parses them (clap), the
//! controller stores them (serde, in the Raft log: lowercase names, as before), the wire
//! carries them ([`pb::NetworkMode`]), and every component asks a mode what it does through
//! the capability methods below rather than comparing it with a variant. A new mode is a new
//! variant here, and the compiler points at every `match` that must learn it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Per-host subnets joined across hosts by VXLAN (flannel-style L3 over VXLAN).
    Vxlan,
    /// Workloads sit on the underlay LAN through a parent NIC (macvlan sub-interfaces).
    Macvlan,
    /// A host-local bridge with masquerade for egress; no path between hosts.
    Nat,
    /// Per-host subnets routed host to host on one L2 segment (host-gw): no tunnel, the
    /// underlay's MTU; peers behind a router are reported, not reached.
    Route,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Vxlan, Mode::Route, Mode::Macvlan, Mode::Nat];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Macvlan => "macvlan",
            Mode::Nat => "nat",
            Mode::Route => "route",
        }
    }

    pub fn wire(self) -> pb::NetworkMode {
        match self {
            Mode::Vxlan => pb::NetworkMode::Vxlan,
            Mode::Macvlan => pb::NetworkMode::Macvlan,
            Mode::Nat => pb::NetworkMode::Nat,
            Mode::Route => pb::NetworkMode::Route,
        }
    }

    /// From the wire; an unknown or unset value is an error naming it.
    pub fn from_wire(value: i32) -> Result<Mode, String> {
        match pb::NetworkMode::try_from(value) {
            Ok(pb::NetworkMode::Vxlan) => Ok(Mode::Vxlan),
            Ok(pb::NetworkMode::Macvlan) => Ok(Mode::Macvlan),
            Ok(pb::NetworkMode::Nat) => Ok(Mode::Nat),
            Ok(pb::NetworkMode::Route) => Ok(Mode::Route),
            Ok(pb::NetworkMode::Unspecified) | Err(_) => Err(format!("unknown network mode {value}")),
        }
    }

    /// The network is split into per-host subnets (leases), each host handing out its own
    /// addresses; otherwise the controller hands out every address (the LAN's range).
    pub fn uses_leases(self) -> bool {
        match self {
            Mode::Vxlan | Mode::Route | Mode::Nat => true,
            Mode::Macvlan => false,
        }
    }

    /// Each host has a bridge holding the gateway address, with the workloads' veths on it.
    pub fn has_bridge(self) -> bool {
        self.uses_leases()
    }

    /// Hosts reach each other's workloads through a VXLAN device.
    pub fn tunnels(self) -> bool {
        match self {
            Mode::Vxlan => true,
            Mode::Route | Mode::Macvlan | Mode::Nat => false,
        }
    }

    /// Each host's workloads reach the other hosts' (every peer is programmed): by tunnel, or
    /// routed through the peer's underlay address.
    pub fn crosses_hosts(self) -> bool {
        match self {
            Mode::Vxlan | Mode::Route => true,
            Mode::Macvlan | Mode::Nat => false,
        }
    }

    /// Peers are reached through their underlay address, with no tunnel: they must share
    /// this host's L2 segment.
    pub fn routes_to_peers(self) -> bool {
        match self {
            Mode::Route => true,
            Mode::Vxlan | Mode::Macvlan | Mode::Nat => false,
        }
    }

    /// Workloads' addresses are on the underlay LAN: the gateway is the LAN's router, and the
    /// host's own firewall, DNS and port publishing do not apply.
    pub fn on_the_lan(self) -> bool {
        !self.has_bridge()
    }

    /// Ports of the host may be forwarded to its workloads.
    pub fn publishes_ports(self) -> bool {
        self.has_bridge()
    }

    /// The agent answers the network's names on the gateway.
    pub fn serves_dns(self) -> bool {
        self.has_bridge()
    }

    /// What a packet costs on top of the workload's MTU on an underlay of the given family
    /// (`ipv6_underlay`: the host's underlay address is IPv6). Only a tunnel pays, and its
    /// outer header is the underlay's: 20 bytes more over IPv6.
    pub fn overhead(self, ipv6_underlay: bool) -> u32 {
        match self {
            Mode::Vxlan if ipv6_underlay => crate::limits::VXLAN6_OVERHEAD,
            Mode::Vxlan => crate::limits::VXLAN_OVERHEAD,
            Mode::Route | Mode::Macvlan | Mode::Nat => 0,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {s:?} (expected {})", names.join(", "))
        })
    }
}

/// macvlan modes, as the kernel knows them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl MacvlanMode {
    pub fn label(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

impl FromStr for MacvlanMode {
    type Err = String;
    /// "" is the default, bridge.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "bridge" => Ok(MacvlanMode::Bridge),
            "private" => Ok(MacvlanMode::Private),
            "vepa" => Ok(MacvlanMode::Vepa),
            "passthru" => Ok(MacvlanMode::Passthru),
            other => Err(format!(
                "unknown macvlan mode {other:?} (expected bridge, private, vepa or passthru)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only vxlan pays for a tunnel, and over IPv6 its outer header costs 20 bytes more.
    #[test]
    fn overhead_follows_the_underlay_family() {
        assert_eq!(Mode::Vxlan.overhead(false), 50);
        assert_eq!(Mode::Vxlan.overhead(true), 70);
        for m in [Mode::Route, Mode::Macvlan, Mode::Nat] {
            assert_eq!((m.overhead(false), m.overhead(true)), (0, 0), "{m}");
        }
    }

    #[test]
    fn every_mode_round_trips_through_text_wire_and_serde() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
            assert_eq!(Mode::from_wire(m.wire() as i32), Ok(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()), "the Raft log's spelling");
        }
        assert!(Mode::from_wire(0).is_err() && Mode::from_wire(99).is_err());
        assert!(
            "bgp"
                .parse::<Mode>()
                .unwrap_err()
                .contains("vxlan, route, macvlan, nat")
        );
    }
}
