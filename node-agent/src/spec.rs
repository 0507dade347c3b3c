//! The desired state of this host, parsed from the controller's `HostDesiredState` into typed,
//! validated values. The agent never trusts its input: a network or endpoint that does not
//! parse is set aside with the reason (and reported), the rest is still programmed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::mac::MacAddr;
use overlay_proto::ports::PublishedPort;
use overlay_proto::v1 as pb;
use overlay_proto::{names, validate};

/// UDP port of every VXLAN device (IANA).
pub const VXLAN_PORT: u16 = 4789;

pub use overlay_proto::modes::{MacvlanMode, Mode};

/// Where a workload's network namespace is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetnsRef {
    /// A name under /run/netns (what `ip netns add` creates).
    Named(String),
    Path(PathBuf),
    /// The namespace of a running process.
    Pid(u32),
}

impl NetnsRef {
    pub fn parse(text: &str) -> Result<Self, String> {
        validate::netns(text).map_err(|r| format!("namespace {text:?}: {r}"))?;
        if text.starts_with('/') {
            Ok(NetnsRef::Path(PathBuf::from(text)))
        } else if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            text.parse()
                .map(NetnsRef::Pid)
                .map_err(|_| format!("namespace {text:?}: pid out of range"))
        } else {
            Ok(NetnsRef::Named(text.to_string()))
        }
    }

    /// The reference as the controller wrote it (parses back to the same value).
    pub fn as_text(&self) -> String {
        match self {
            NetnsRef::Named(n) => n.clone(),
            NetnsRef::Path(p) => p.display().to_string(),
            NetnsRef::Pid(pid) => pid.to_string(),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            NetnsRef::Named(n) => PathBuf::from("/run/netns").join(n),
            NetnsRef::Path(p) => p.clone(),
            NetnsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

impl std::fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetnsRef::Named(n) => write!(f, "{n}"),
            NetnsRef::Path(p) => write!(f, "{}", p.display()),
            NetnsRef::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// Gateway address with the subnet's prefix, e.g. 10.1.0.1/24.
    pub address: Ipv4Network,
    /// Dual stack: the IPv6 gateway with the host subnet's prefix, e.g. fd00:1:0:1::1/64.
    pub address6: Option<Ipv6Network>,
    pub mtu: u32,
    /// Set, never inherited: a bridge without an address of its own takes the lowest MAC of
    /// its ports and changes it when that port goes, and every workload that cached the
    /// gateway's old MAC loses its gateway until its ARP entry expires. Derived from the
    /// gateway address like endpoint MACs are from theirs, so it is unique in the network.
    pub mac: MacAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// This host's underlay address (IPv4 or IPv6): where its VXLAN comes from.
    pub local: IpAddr,
    pub mac: MacAddr,
    pub mtu: u32,
    /// This host's VTEP address: the network address of its subnet, as a /32.
    pub address: Ipv4Addr,
    /// Dual stack: the network address of its IPv6 subnet, as a /128.
    pub address6: Option<Ipv6Addr>,
}

/// Another host of the same vxlan network: one neighbour, one FDB entry, one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub host: String,
    /// IPv4 or IPv6: a peer whose underlay is of another family than this host's cannot be
    /// reached (the mode modules say so).
    pub underlay_ip: IpAddr,
    pub vtep_mac: MacAddr,
    pub vtep_ip: Ipv4Addr,
    pub subnet: Ipv4Network,
    /// Dual stack: the peer's IPv6 subnet; its network address is the peer's IPv6 VTEP
    /// address (routed onlink, with a permanent neighbour entry like the IPv4 one).
    pub subnet6: Option<Ipv6Network>,
}

impl PeerSpec {
    pub fn vtep_ip6(&self) -> Option<Ipv6Addr> {
        self.subnet6.map(|s| s.network())
    }
}

/// How an endpoint reaches its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A veth pair whose host end `host_ifname` is enslaved to `bridge` (vxlan, nat).
    /// `runtime`: a container runtime (Docker) moves the workload end into its sandbox and
    /// configures it there; the agent keeps the host side and never enters the sandbox.
    Veth {
        bridge: String,
        host_ifname: String,
        runtime: bool,
    },
    /// A macvlan sub-interface of `parent`, moved whole into the namespace.
    Macvlan { parent: String, mode: MacvlanMode },
}

/// The parent of a macvlan network. A `base.vid` name is an 802.1Q sub-interface overlay
/// creates when missing (and removes when no network needs it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacvlanParent {
    pub name: String,
    pub vlan: Option<(String, u16)>,
    pub mode: MacvlanMode,
}

impl MacvlanParent {
    pub fn parse(parent: &str, mode: &str) -> Result<Self, String> {
        validate::ifname(parent).map_err(|r| format!("parent {parent:?}: {r}"))?;
        let vlan = match parent.rsplit_once('.') {
            Some((base, vid))
                if !base.is_empty() && !vid.is_empty() && vid.chars().all(|c| c.is_ascii_digit()) =>
            {
                let vid: u16 = vid
                    .parse()
                    .map_err(|_| format!("parent {parent:?}: VLAN id out of range"))?;
                if !(1..=4094).contains(&vid) {
                    return Err(format!("parent {parent:?}: VLAN id must be 1 to 4094"));
                }
                Some((base.to_string(), vid))
            }
            _ => None,
        };
        Ok(Self {
            name: parent.to_string(),
            vlan,
            mode: mode.parse()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub id: u64,
    pub network: String,
    pub netns: NetnsRef,
    pub ifname: String,
    /// Workload address with prefix, e.g. 10.1.0.2/24.
    pub address: Ipv4Network,
    pub mac: MacAddr,
    pub gateway: Ipv4Addr,
    /// Dual stack: the IPv6 address with the host subnet's prefix and its gateway.
    pub address6: Option<(Ipv6Network, Ipv6Addr)>,
    /// 0 = inherit (macvlan takes its parent's).
    pub mtu: u32,
    /// Name of the workload end while it is still in the host namespace.
    pub peer_ifname: String,
    pub attachment: Attachment,
    /// The whole network, e.g. 10.1.0.0/16: routed via the gateway when this endpoint does
    /// not hold its namespace's default route.
    pub cidr: Ipv4Network,
    /// Dual stack: the whole IPv6 network (routed like `cidr`).
    pub cidr6: Option<Ipv6Network>,
    /// This endpoint's gateway is its namespace's default route (one per namespace, decided
    /// by this agent's book).
    pub default_route: bool,
    /// Ports of the host forwarded to it.
    pub ports: Vec<PublishedPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub id: u32,
    pub mode: Mode,
    pub cidr: Ipv4Network,
    /// Dual stack: the whole IPv6 network.
    pub cidr6: Option<Ipv6Network>,
    pub mtu: u32,
    pub nat_egress: bool,
    /// vxlan: peers on this host's underlay subnet are routed directly (no tunnel).
    pub direct_routing: bool,
    pub bridge: Option<BridgeSpec>,
    pub vxlan: Option<VxlanSpec>,
    pub macvlan: Option<MacvlanParent>,
    pub peers: Vec<PeerSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSpec {
    pub revision: u64,
    /// Bumped by every new spec the agent builds (a new desired state, or a change of its own
    /// endpoints): a pass report says which spec it converged to.
    pub generation: u64,
    pub host_name: String,
    pub networks: Vec<NetworkSpec>,
    /// Parts of the desired state that could not be used: (what, why).
    pub rejected: Vec<(String, String)>,
}

fn ipv4(what: &str, text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{what}: malformed address {text:?}"))
}

fn ip(what: &str, text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{what}: malformed address {text:?}"))
}

fn net(what: &str, text: &str) -> Result<Ipv4Network, String> {
    text.parse()
        .map_err(|_| format!("{what}: malformed CIDR {text:?}"))
}

fn net6(what: &str, text: &str) -> Result<Ipv6Network, String> {
    text.parse()
        .map_err(|_| format!("{what}: malformed IPv6 CIDR {text:?}"))
}

/// An optional IPv6 field: "" = absent (IPv4-only network, or a controller that predates it).
fn opt6<T>(text: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

fn mac(what: &str, text: &str) -> Result<MacAddr, String> {
    text.parse().map_err(|e: String| format!("{what}: {e}"))
}

/// Only names with overlay's prefixes are accepted for devices overlay creates: the agent must
/// never be told to create (and later delete) a device it does not own.
fn owned_name(what: &str, name: &str, prefix: &str) -> Result<String, String> {
    validate::ifname(name).map_err(|r| format!("{what} {name:?}: {r}"))?;
    if !name.starts_with(prefix) {
        return Err(format!("{what} {name:?} does not start with {prefix:?}"));
    }
    Ok(name.to_string())
}

impl HostSpec {
    pub fn from_proto(d: &pb::HostDesiredState, underlay_ip: IpAddr) -> Self {
        let mut spec = HostSpec {
            revision: d.revision,
            host_name: d.host_name.clone(),
            ..Default::default()
        };
        let vtep_mac = match mac("VTEP MAC", &d.vtep_mac) {
            Ok(m) => m,
            Err(e) => {
                spec.rejected.push(("host".into(), e));
                return spec;
            }
        };
        for n in &d.networks {
            match network(n, vtep_mac, underlay_ip) {
                Ok((network, rejected)) => {
                    spec.rejected.extend(rejected);
                    spec.networks.push(network);
                }
                Err(e) => spec.rejected.push((format!("network {}", n.name), e)),
            }
        }
        spec
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointSpec> {
        self.networks.iter().flat_map(|n| n.endpoints.iter())
    }
}

fn network(
    n: &pb::NetworkState,
    vtep_mac: MacAddr,
    underlay_ip: IpAddr,
) -> Result<(NetworkSpec, Vec<(String, String)>), String> {
    let mode = Mode::from_wire(n.mode)?;
    let cidr = net("cidr", &n.cidr)?;
    let subnet = net("subnet", &n.subnet)?;
    let gateway = ipv4("gateway", &n.gateway)?;
    let cidr6 = opt6(&n.cidr6, |t| net6("IPv6 cidr", t))?;
    let subnet6 = opt6(&n.subnet6, |t| net6("IPv6 subnet", t))?;
    let gateway6 = opt6(&n.gateway6, |t| {
        t.parse::<Ipv6Addr>()
            .map_err(|_| format!("IPv6 gateway: malformed address {t:?}"))
    })?;
    // Both or neither: a host subnet without its network (or gateway) cannot be wired whole.
    let v6 = match (cidr6, subnet6, gateway6) {
        (None, None, None) => None,
        // The host's subnet inside the network's, the gateway one of its addresses other than
        // the VTEP's (the subnet's network address), in a range overlay may use at all.
        (Some(c), Some(s), Some(g))
            if overlay_proto::ipam::overlay_range6(c)
                && c.contains(s.network())
                && s.prefix() > c.prefix()
                && s.contains(g)
                && g != s.network() =>
        {
            Some((c, s, g))
        }
        _ => return Err("IPv6 cidr, subnet and gateway do not fit together".into()),
    };
    if v6.is_some() && !mode.tunnels() {
        return Err(format!("IPv6 subnets are not supported in {mode} networks"));
    }
    let inherit_mtu = mode.on_the_lan() && n.mtu == 0;
    if !inherit_mtu {
        overlay_proto::limits::mtu(n.mtu).map_err(|why| format!("invalid MTU {}: {why}", n.mtu))?;
    }
    let (bridge, macvlan) = match mode {
        Mode::Vxlan | Mode::Route | Mode::Nat => {
            let bridge = BridgeSpec {
                name: owned_name("bridge", &n.bridge_name, names::BRIDGE_PREFIX)?,
                address: Ipv4Network::new(gateway, subnet.prefix()).map_err(|e| e.to_string())?,
                address6: v6
                    .map(|(_, s, g)| Ipv6Network::new(g, s.prefix()).map_err(|e| e.to_string()))
                    .transpose()?,
                mtu: n.mtu,
                mac: overlay_proto::ipam::mac_from_ip(gateway),
            };
            (Some(bridge), None)
        }
        Mode::Macvlan => {
            let opts = n.macvlan.as_ref().ok_or("macvlan options missing")?;
            (None, Some(MacvlanParent::parse(&opts.parent, &opts.mode)?))
        }
    };
    let vxlan = if mode.tunnels() {
        if n.vni == 0 || n.vni > 16_777_215 {
            return Err(format!("invalid VNI {}", n.vni));
        }
        Some(VxlanSpec {
            name: owned_name("vxlan device", &n.vxlan_name, names::VXLAN_PREFIX)?,
            vni: n.vni,
            local: underlay_ip,
            mac: vtep_mac,
            mtu: n.mtu,
            address: subnet.network(),
            address6: v6.map(|(_, s, _)| s.network()),
        })
    } else {
        None
    };
    let mut rejected = Vec::new();
    let mut peers = Vec::new();
    if mode.crosses_hosts() {
        for p in &n.peers {
            let parsed = (|| -> Result<PeerSpec, String> {
                let subnet = net("peer subnet", &p.subnet)?;
                Ok(PeerSpec {
                    host: p.host.clone(),
                    underlay_ip: ip("peer underlay", &p.underlay_ip)?,
                    vtep_mac: mac("peer VTEP MAC", &p.vtep_mac)?,
                    vtep_ip: subnet.network(),
                    subnet,
                    subnet6: match v6 {
                        Some((cidr6, own6, _)) => {
                            let s6 = opt6(&p.subnet6, |t| net6("peer IPv6 subnet", t))?;
                            // Routed onlink via the peer's VTEP with `replace`: a subnet outside
                            // the network, or this host's own, would take over other routes.
                            if let Some(s6) = s6
                                && (!cidr6.contains(s6.network())
                                    || s6.prefix() != own6.prefix()
                                    || s6.network() == own6.network())
                            {
                                return Err(format!(
                                    "peer IPv6 subnet {s6} is not another host's subnet of {cidr6}"
                                ));
                            }
                            s6
                        }
                        None => None,
                    },
                })
            })();
            match parsed {
                Ok(peer) => peers.push(peer),
                Err(e) => rejected.push((format!("peer {} of {}", p.host, n.name), e)),
            }
        }
    }
    let mut endpoints = Vec::new();
    for e in &n.endpoints {
        let parsed = (|| -> Result<EndpointSpec, String> {
            validate::ifname(&e.ifname).map_err(|r| format!("interface {:?}: {r}", e.ifname))?;
            let attachment = match (&bridge, &macvlan) {
                (Some(b), _) => Attachment::Veth {
                    bridge: b.name.clone(),
                    host_ifname: owned_name("endpoint device", &e.host_ifname, names::ENDPOINT_PREFIX)?,
                    runtime: e.runtime_wired,
                },
                (None, Some(_)) if e.runtime_wired => {
                    return Err("a runtime-wired endpoint needs a network with a bridge".into());
                }
                (None, Some(m)) => Attachment::Macvlan {
                    parent: m.name.clone(),
                    mode: m.mode,
                },
                (None, None) => return Err("network has neither bridge nor parent".into()),
            };
            Ok(EndpointSpec {
                id: e.id,
                network: n.name.clone(),
                netns: NetnsRef::parse(&e.netns)?,
                ifname: e.ifname.clone(),
                address: net("endpoint address", &e.address)?,
                mac: mac("endpoint MAC", &e.mac)?,
                gateway: ipv4("endpoint gateway", &e.gateway)?,
                address6: endpoint_v6(v6, e)?,
                mtu: n.mtu,
                peer_ifname: format!(
                    "{}{:x}",
                    if e.runtime_wired {
                        names::RUNTIME_PEER_PREFIX
                    } else {
                        names::PEER_PREFIX
                    },
                    e.id
                ),
                attachment,
                cidr,
                cidr6,
                default_route: e.default_route.unwrap_or(true),
                ports: overlay_proto::ports::from_wire(&e.ports)
                    .map_err(|why| format!("published ports: {why}"))?,
            })
        })();
        match parsed {
            Ok(ep) => endpoints.push(ep),
            Err(err) => rejected.push((format!("endpoint {}", e.id), err)),
        }
    }
    Ok((
        NetworkSpec {
            name: n.name.clone(),
            id: n.id,
            mode,
            cidr,
            cidr6,
            mtu: n.mtu,
            nat_egress: n.nat_egress,
            direct_routing: n.direct_routing && mode.tunnels(),
            bridge,
            vxlan,
            macvlan,
            peers,
            endpoints,
        },
        rejected,
    ))
}

/// An endpoint's IPv6 address and gateway in a dual-stack network: both given, inside this
/// host's IPv6 subnet (`v6`), and not its gateway or VTEP address. An endpoint without them
/// in a dual-stack network is refused: it would be half-wired.
fn endpoint_v6(
    v6: Option<(Ipv6Network, Ipv6Network, Ipv6Addr)>,
    e: &pb::LocalEndpoint,
) -> Result<Option<(Ipv6Network, Ipv6Addr)>, String> {
    let Some((_, subnet6, gateway6)) = v6 else {
        return Ok(None);
    };
    // A request (no address yet) has none either: it is filled by this agent.
    if e.address.is_empty() && e.address6.is_empty() {
        return Ok(None);
    }
    let address = net6("endpoint IPv6 address", &e.address6)?;
    let gateway: Ipv6Addr = e
        .gateway6
        .parse()
        .map_err(|_| format!("endpoint IPv6 gateway: malformed address {:?}", e.gateway6))?;
    if address.prefix() != subnet6.prefix()
        || !subnet6.contains(address.ip())
        || gateway != gateway6
        || address.ip() == gateway6
        || address.ip() == subnet6.network()
    {
        return Err(format!(
            "endpoint IPv6 address {address} (gateway {gateway}) does not fit this host's subnet {subnet6}"
        ));
    }
    Ok(Some((address, gateway)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> pb::HostDesiredState {
        pb::HostDesiredState {
            revision: 7,
            host_name: "h1".into(),
            underlay_ip: "192.0.2.21".into(),
            vtep_mac: "02:00:00:00:00:01".into(),
            networks: vec![pb::NetworkState {
                name: "blue".into(),
                id: 1,
                mode: pb::NetworkMode::Vxlan as i32,
                cidr: "10.1.0.0/16".into(),
                subnet: "10.1.0.0/24".into(),
                gateway: "10.1.0.1".into(),
                vni: 4096,
                mtu: 1450,
                nat_egress: false,
                direct_routing: false,
                bridge_name: "ovb-1".into(),
                vxlan_name: "ovx-1".into(),
                macvlan: None,
                peers: vec![pb::Peer {
                    host: "h2".into(),
                    underlay_ip: "192.0.2.22".into(),
                    vtep_mac: "02:00:00:00:00:02".into(),
                    subnet: "10.1.1.0/24".into(),
                    ..Default::default()
                }],
                endpoints: vec![pb::LocalEndpoint {
                    id: 26,
                    netns: "w1".into(),
                    ifname: "eth0".into(),
                    address: "10.1.0.2/24".into(),
                    mac: "0a:58:0a:01:00:02".into(),
                    gateway: "10.1.0.1".into(),
                    host_ifname: "ovv-1a".into(),
                    default_route: Some(true),
                    ..Default::default()
                }],
                directory: vec![],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn parses_a_vxlan_network() {
        let spec = HostSpec::from_proto(&sample(), "192.0.2.21".parse().unwrap());
        assert!(spec.rejected.is_empty(), "{:?}", spec.rejected);
        let n = &spec.networks[0];
        assert_eq!(n.bridge.as_ref().unwrap().address.to_string(), "10.1.0.1/24");
        let vx = n.vxlan.as_ref().unwrap();
        assert_eq!(
            (vx.vni, vx.address.to_string().as_str(), vx.mtu),
            (4096, "10.1.0.0", 1450)
        );
        assert_eq!(n.peers[0].vtep_ip.to_string(), "10.1.1.0");
        assert_eq!(n.endpoints[0].peer_ifname, "ovp-1a");
        assert_eq!(n.endpoints[0].netns.path(), PathBuf::from("/run/netns/w1"));
    }

    fn dual_stack() -> pb::HostDesiredState {
        let mut d = sample();
        let n = &mut d.networks[0];
        n.cidr6 = "fd00:10::/48".into();
        n.subnet6 = "fd00:10::/64".into();
        n.gateway6 = "fd00:10::1".into();
        n.peers[0].subnet6 = "fd00:10:0:1::/64".into();
        n.endpoints[0].address6 = "fd00:10::2/64".into();
        n.endpoints[0].gateway6 = "fd00:10::1".into();
        d
    }

    #[test]
    fn dual_stack_parts_must_fit_together() {
        let ul: IpAddr = "192.0.2.21".parse().unwrap();
        let spec = HostSpec::from_proto(&dual_stack(), ul);
        assert!(spec.rejected.is_empty(), "{:?}", spec.rejected);
        let n = &spec.networks[0];
        assert_eq!(
            n.vxlan.as_ref().unwrap().address6.unwrap().to_string(),
            "fd00:10::"
        );
        assert_eq!(n.peers[0].subnet6.unwrap().to_string(), "fd00:10:0:1::/64");
        assert_eq!(n.endpoints[0].address6.unwrap().0.to_string(), "fd00:10::2/64");

        // The whole network refused: ranges no workload can use, a host subnet as wide as the
        // network, a gateway on the VTEP's address.
        let network_cases: [(&str, &str, &str); 4] = [
            ("fe80::/48", "fe80::/64", "fe80::1"),
            ("::ffff:0:0/96", "::ffff:0:0/120", "::ffff:0:1"),
            ("fd00:10::/48", "fd00:10::/48", "fd00:10::1"),
            ("fd00:10::/48", "fd00:10::/64", "fd00:10::"),
        ];
        for (cidr6, subnet6, gateway6) in network_cases {
            let mut d = dual_stack();
            d.networks[0].cidr6 = cidr6.into();
            d.networks[0].subnet6 = subnet6.into();
            d.networks[0].gateway6 = gateway6.into();
            let spec = HostSpec::from_proto(&d, ul);
            assert!(spec.networks.is_empty(), "{cidr6} {subnet6} {gateway6} accepted");
        }
        // A peer refused alone: a subnet outside the network, this host's own, or wider.
        for peer6 in ["fd00:99::/64", "fd00:10::/64", "fd00:10::/56", "::/0"] {
            let mut d = dual_stack();
            d.networks[0].peers[0].subnet6 = peer6.into();
            let spec = HostSpec::from_proto(&d, ul);
            assert!(spec.networks[0].peers.is_empty(), "peer {peer6} accepted");
            assert_eq!(spec.rejected.len(), 1, "{peer6}: {:?}", spec.rejected);
        }
    }

    #[test]
    fn bad_parts_are_set_aside_not_fatal() {
        let mut d = sample();
        d.networks[0].endpoints[0].netns = "../../etc".into();
        d.networks[0].peers[0].vtep_mac = "nonsense".into();
        let mut bad_net = d.networks[0].clone();
        bad_net.name = "evil".into();
        bad_net.bridge_name = "eth0".into();
        d.networks.push(bad_net);
        let spec = HostSpec::from_proto(&d, "192.0.2.21".parse().unwrap());
        assert_eq!(
            spec.networks.len(),
            1,
            "the network naming a foreign device is refused"
        );
        assert!(spec.networks[0].endpoints.is_empty() && spec.networks[0].peers.is_empty());
        assert_eq!(spec.rejected.len(), 3, "{:?}", spec.rejected);
    }

    #[test]
    fn route_roles_and_what_an_older_controller_means() {
        let mut d = sample();
        d.networks[0].endpoints[0].default_route = Some(false);
        let ep = &HostSpec::from_proto(&d, "192.0.2.21".parse().unwrap()).networks[0].endpoints[0];
        assert!(!ep.default_route);
        assert_eq!(ep.cidr.to_string(), "10.1.0.0/16");
        // A controller that does not know the field: every endpoint routes by default, as then.
        d.networks[0].endpoints[0].default_route = None;
        let ep = &HostSpec::from_proto(&d, "192.0.2.21".parse().unwrap()).networks[0].endpoints[0];
        assert!(ep.default_route);
    }

    #[test]
    fn macvlan_parents() {
        let p = MacvlanParent::parse("eth0.50", "passthru").unwrap();
        assert_eq!(
            (p.vlan, p.mode),
            (Some(("eth0".to_string(), 50)), MacvlanMode::Passthru)
        );
        assert_eq!(MacvlanParent::parse("eth0", "").unwrap().vlan, None);
        assert!(MacvlanParent::parse("eth0.5000", "bridge").is_err());
        assert!(MacvlanParent::parse("eth0", "sideways").is_err());
        assert!(MacvlanParent::parse("a/b", "bridge").is_err());
    }

    #[test]
    fn netns_references() {
        assert_eq!(
            NetnsRef::parse("1234").unwrap().path(),
            PathBuf::from("/proc/1234/ns/net")
        );
        assert_eq!(
            NetnsRef::parse("/var/run/x").unwrap().path(),
            PathBuf::from("/var/run/x")
        );
        assert!(NetnsRef::parse("a/b").is_err());
    }
}
