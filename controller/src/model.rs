//! The records the replicated state machine holds. Plain data: no I/O, no clocks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
pub use overlay_proto::ports::PublishedPort;
use serde::{Deserialize, Serialize};

/// The modes and their capabilities are the proto crate's, shared with the agent and the CLI.
pub use overlay_proto::modes::{MacvlanMode, Mode};

pub use overlay_proto::mac::MacAddr;

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
    /// vxlan: route same-segment peers without the tunnel. Absent in log entries written
    /// before the option existed.
    #[serde(default)]
    pub direct_routing: bool,
    pub macvlan: Option<MacvlanSpec>,
    /// Dual stack: an IPv6 CIDR besides `cidr`, and each host's IPv6 prefix length in it
    /// (`None`: 64). Absent in log entries written before IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<Ipv6Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_prefix6: Option<u8>,
}

/// A host's slice of a vxlan/nat network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    /// Last address handed out from this subnet: allocation continues after it, so a freed
    /// address is not reused at once (stale ARP caches on peers would misdeliver).
    pub cursor: Option<Ipv4Addr>,
    /// Dual stack: the host's IPv6 subnet. Its endpoints' IPv6 addresses pair with their
    /// IPv4 ones (`overlay_proto::ipam::paired_v6`), so there is no second cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
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
    /// vxlan: peers on a host's underlay subnet are routed directly (each agent decides
    /// which peers share its segment). Absent in snapshots from before the option existed.
    #[serde(default)]
    pub direct_routing: bool,
    pub macvlan: Option<MacvlanSpec>,
    pub created_ms: i64,
    /// Host name → lease (vxlan/nat only).
    pub leases: std::collections::BTreeMap<String, Lease>,
    /// Cluster-wide allocation cursor (macvlan only).
    pub cursor: Option<Ipv4Addr>,
    /// Dual stack (vxlan): the network's IPv6 CIDR and its hosts' IPv6 prefix length. Every
    /// lease then holds a subnet of each family. Absent in snapshots from before IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<Ipv6Network>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_prefix6: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Network {
    /// The IPv6 address and gateway of `host`'s endpoint whose IPv4 address is `ip`, in a
    /// dual-stack network (see [`Lease::subnet6`]).
    pub fn address6(&self, host: &str, ip: Ipv4Addr) -> Option<Address6> {
        let lease = self.leases.get(host)?;
        let subnet6 = lease.subnet6?;
        Some(Address6 {
            ip: overlay_proto::ipam::paired_v6(lease.subnet, subnet6, ip)?,
            prefix_len: subnet6.prefix(),
            gateway: overlay_proto::ipam::subnet_gateway(subnet6),
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Where its peers reach it: IPv4 or IPv6 (the overlay itself is IPv4 either way). Logs
    /// and snapshots written when this was an `Ipv4Addr` hold the same dotted-quad string,
    /// which reads as `IpAddr::V4`.
    pub underlay_ip: IpAddr,
    pub underlay_iface: String,
    pub underlay_mtu: u32,
    /// Source MAC of this host's VXLAN devices. Derived from the name once, then kept.
    pub vtep_mac: MacAddr,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
    /// Instance id of the agent that holds this host name (see `overlay_proto::instance`);
    /// "" = none recorded (registered by a client without one: any agent may claim it).
    #[serde(default)]
    pub claimant: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EndpointStatus {
    /// Asked for through the controller (`overlayctl endpoint attach`); the host's agent has
    /// not taken it up yet, so it has no address. A request that the agent could not carry out
    /// turns `Failed` and keeps no address either (see [`Endpoint::is_request`]).
    Requested,
    /// Recorded; its agent has not wired it yet.
    Pending,
    Ready,
    Failed(String),
    /// Its namespace is gone or was replaced (why); the agent no longer wires it and releases
    /// it after its grace period.
    Gone(String),
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
    /// Its gateway is the namespace's default route (decided by its host's agent, which sees
    /// every endpoint of the namespace; asked for with `--default-route`).
    #[serde(default)]
    pub default_route: bool,
    /// The host's key for it, unique on the host: CNI "<container id>/<ifname>", and
    /// "req-<id>" for an endpoint asked for through the controller.
    #[serde(default)]
    pub key: String,
    /// The agent's own number for it: names its devices (`ovv-<hex>`).
    #[serde(default)]
    pub host_id: u64,
    /// Who attached it: cni, docker, overlayctl.
    #[serde(default)]
    pub owner: String,
    /// Names it answers to in the network's DNS.
    #[serde(default)]
    pub names: Vec<String>,
    /// The address a request asks for (requests only).
    #[serde(default)]
    pub requested_ip: Option<Ipv4Addr>,
    /// Ports published on its host (asked for, or as the agent reports them).
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// Dual stack: its IPv6 address, paired with `ip` in its host's IPv6 subnet when the
    /// record is made (see [`Network::address6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Address6>,
}

/// An endpoint's IPv6 address, the prefix length it sees and its gateway.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address6 {
    pub ip: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
}

impl Endpoint {
    /// Asked for through the controller and not (yet) taken up by the agent: it has no address.
    pub fn is_request(&self) -> bool {
        self.ip.is_unspecified()
    }
}

/// One endpoint of a host as its agent reports it (see `Command::SyncEndpoints`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HostEndpoint {
    pub key: String,
    pub host_id: u64,
    pub network: String,
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub default_route: bool,
    pub owner: String,
    pub names: Vec<String>,
    pub status: EndpointStatus,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host record as snapshots held it while `underlay_ip` was an `Ipv4Addr` (a
    /// dotted-quad string) still reads, as the same IPv4 address; and the IPv6 form
    /// round-trips as a string too.
    #[test]
    fn an_old_host_record_with_an_ipv4_string_still_reads() {
        let old = r#"{"name":"h1","underlay_ip":"192.0.2.11","underlay_iface":"eth0","underlay_mtu":1500,"vtep_mac":"02:00:00:00:00:01","registered_ms":1,"last_seen_ms":2}"#;
        let host: Host = serde_json::from_str(old).expect("old host record");
        assert_eq!(host.underlay_ip, IpAddr::from([192, 0, 2, 11]));
        assert!(host.claimant.is_empty());
        // Written back, an IPv4 host is byte for byte what an older replica reads.
        let again = serde_json::to_value(&host).expect("encode");
        assert_eq!(again["underlay_ip"], "192.0.2.11");

        let v6 = Host {
            underlay_ip: "2001:db8::11".parse().expect("v6"),
            ..host
        };
        let json = serde_json::to_string(&v6).expect("encode");
        assert!(json.contains(r#""underlay_ip":"2001:db8::11""#), "{json}");
        assert_eq!(serde_json::from_str::<Host>(&json).ok(), Some(v6));
    }
}
