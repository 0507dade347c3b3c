//! The records the replicated state machine holds. Plain data: no I/O, no clocks.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Vxlan,
    Macvlan,
    Nat,
}

impl Mode {
    /// Modes that split the network into per-host subnets (leases).
    pub fn uses_leases(self) -> bool {
        matches!(self, Mode::Vxlan | Mode::Nat)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::Macvlan => "macvlan",
            Mode::Nat => "nat",
        })
    }
}

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

/// An Ethernet address. Serialized as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("malformed MAC address {s:?}"))?;
            if part.len() != 2 {
                return Err(format!("malformed MAC address {s:?}"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("malformed MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("malformed MAC address {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MacvlanSpec {
    /// Parent NIC on every host (`eth0`, or a VLAN sub-interface such as `eth0.50`).
    pub parent: String,
    pub gateway: Ipv4Addr,
    /// Addresses the controller hands out; inside the subnet.
    pub ip_range: Ipv4Network,
    pub mode: MacvlanMode,
}

/// What `network create` asks for, already parsed but not yet checked against the state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub mode: Mode,
    pub cidr: Ipv4Network,
    pub host_prefix: Option<u8>,
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    pub nat_egress: bool,
    pub macvlan: Option<MacvlanSpec>,
}

/// A host's slice of a vxlan/nat network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    /// Last address handed out from this subnet: allocation continues after it, so a freed
    /// address is not reused at once (stale ARP caches on peers would misdeliver).
    pub cursor: Option<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub id: u32,
    pub mode: Mode,
    pub cidr: Ipv4Network,
    /// Prefix length of each host's subnet (vxlan/nat); the network prefix for macvlan.
    pub host_prefix: u8,
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    pub nat_egress: bool,
    pub macvlan: Option<MacvlanSpec>,
    pub created_ms: i64,
    /// Host name → lease (vxlan/nat only).
    pub leases: std::collections::BTreeMap<String, Lease>,
    /// Cluster-wide allocation cursor (macvlan only).
    pub cursor: Option<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub underlay_iface: String,
    pub underlay_mtu: u32,
    /// Source MAC of this host's VXLAN devices. Derived from the name once, then kept.
    pub vtep_mac: MacAddr,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EndpointStatus {
    Pending,
    Ready,
    Failed(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub id: u64,
    pub network: String,
    pub host: String,
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    pub status: EndpointStatus,
    pub created_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "0a:58:0a:01:00:05".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:58:0a:01:00:05");
        for bad in [
            "",
            "0a:58:0a:01:00",
            "0a:58:0a:01:00:05:07",
            "zz:58:0a:01:00:05",
            "0a5:8:0a:01:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
