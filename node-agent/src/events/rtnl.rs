//! Which rtnetlink notifications concern overlay. Plain functions over decoded messages, so
//! the filter is tested without a kernel.
//!
//! The filter mirrors what a pass reads and writes (see [`crate::plan`]):
//! - links: devices with one of overlay's name prefixes or its ownership alias;
//! - IPv4 addresses on those devices; IPv6 ones on its bridges and vxlan devices (where
//!   dual-stack networks put theirs; every new veth gets a link-local address, which is not
//!   overlay's concern);
//! - neighbours (ARP and NDP) and FDB entries on overlay's vxlan devices (never the bridges':
//!   the ARP and MAC learning of workloads churn there and are not overlay's to program; FDB
//!   entries the bridge learned on a port are `master` ones, overlay's are `self`);
//! - routes of the main table with overlay's protocol, through an overlay device (for IPv6:
//!   a bridge or vxlan device, and not link-local), or into one of overlay's networks
//!   (whoever added them: a foreign route can shadow ours).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::names;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressHeader, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourHeader};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};

use super::Changes;
use crate::kernel::{Link, OWNED_ALIAS, ROUTE_PROTOCOL};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;

/// What overlay does with a device, as far as notifications go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `ovx-*`: carries overlay's neighbours and FDB entries too.
    Vxlan,
    /// `ovb-*`: carries a network's gateway addresses.
    Bridge,
    /// Bridges, endpoint veths (both ends, a container runtime's too), owned VLAN parents.
    Device,
}

fn role(name: &str, alias: Option<&str>) -> Option<Role> {
    if name.starts_with(names::VXLAN_PREFIX) {
        Some(Role::Vxlan)
    } else if name.starts_with(names::BRIDGE_PREFIX) {
        Some(Role::Bridge)
    } else if [
        names::ENDPOINT_PREFIX,
        names::PEER_PREFIX,
        names::RUNTIME_PEER_PREFIX,
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || alias == Some(OWNED_ALIAS)
    {
        Some(Role::Device)
    } else {
        None
    }
}

/// The filter, with the devices it has seen come and go.
pub struct RouteFilter {
    devices: HashMap<u32, Role>,
    networks: Vec<Ipv4Network>,
    networks6: Vec<Ipv6Network>,
}

impl RouteFilter {
    /// Starts from a listing of the links.
    pub fn new(links: &[Link]) -> Self {
        let devices = links
            .iter()
            .filter_map(|l| role(&l.name, l.alias.as_deref()).map(|r| (l.index, r)))
            .collect();
        Self {
            devices,
            networks: Vec::new(),
            networks6: Vec::new(),
        }
    }

    /// The overlay networks' prefixes (from the desired state).
    pub fn set_networks(&mut self, networks: Vec<Ipv4Network>) {
        self.networks = networks;
    }

    /// The dual-stack networks' IPv6 prefixes.
    pub fn set_networks6(&mut self, networks: Vec<Ipv6Network>) {
        self.networks6 = networks;
    }

    /// A bridge or vxlan device: where overlay's IPv6 addresses and routes are.
    fn carries_ipv6(&self, index: u32) -> bool {
        matches!(self.devices.get(&index), Some(Role::Bridge | Role::Vxlan))
    }

    /// Number of overlay devices currently known.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// What `msg` changed of overlay's, if anything; follows devices appearing, being renamed
    /// and going away.
    pub fn classify(&mut self, msg: &RouteNetlinkMessage) -> Changes {
        match msg {
            RouteNetlinkMessage::NewLink(m) => self.link(m, false),
            RouteNetlinkMessage::DelLink(m) => self.link(m, true),
            RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => {
                self.address(&m.header)
            }
            RouteNetlinkMessage::NewNeighbour(m) | RouteNetlinkMessage::DelNeighbour(m) => {
                self.neighbour(&m.header)
            }
            RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m) => self.route(m),
            _ => Changes::default(),
        }
    }

    /// Decides from the fixed header alone where that is enough: addresses and neighbours
    /// (ARP and FDB), what workloads can make churn at line rate, skip the full decode.
    /// `None`: the message needs [`RouteFilter::classify`].
    pub fn classify_header(&self, message_type: u16, payload: &[u8]) -> Option<Changes> {
        match message_type {
            RTM_NEWADDR | RTM_DELADDR => AddressHeader::parse(payload).ok().map(|h| self.address(&h)),
            RTM_NEWNEIGH | RTM_DELNEIGH => NeighbourHeader::parse(payload).ok().map(|h| self.neighbour(&h)),
            _ => None,
        }
    }

    fn address(&self, h: &AddressHeader) -> Changes {
        let ours = match h.family {
            AddressFamily::Inet => self.devices.contains_key(&h.index),
            // Not the link-local address every device gets (and announces again when its
            // duplicate address detection ends, a second or two after the device came up).
            AddressFamily::Inet6 => h.scope != AddressScope::Link && self.carries_ipv6(h.index),
            _ => false,
        };
        if ours {
            Changes::ADDRESS
        } else {
            Changes::default()
        }
    }

    fn link(&mut self, m: &LinkMessage, deleted: bool) -> Changes {
        // Per-family views of a device are not device changes: IPv6 settings (addrconf's
        // AF_INET6 RTM_NEWLINK) and bridge-port state (AF_BRIDGE: STP state, learning flags;
        // enslaving and releasing come as AF_UNSPEC messages too). Bridge-port messages carry
        // no alias either, so they must not change what a device is known as.
        if m.header.interface_family != AddressFamily::Unspec {
            return Changes::default();
        }
        let index = m.header.index;
        let mut name = None;
        let mut alias = None;
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.as_str()),
                LinkAttribute::IfAlias(a) => alias = Some(a.as_str()),
                _ => {}
            }
        }
        let now = name.and_then(|n| role(n, alias));
        let known = self.devices.get(&index).copied();
        if deleted {
            self.devices.remove(&index);
        } else {
            match now {
                Some(r) => {
                    self.devices.insert(index, r);
                }
                // Renamed away from overlay's names (or its alias dropped): it was ours.
                None => {
                    self.devices.remove(&index);
                }
            }
        }
        if known.is_some() || now.is_some() {
            Changes::LINK
        } else {
            Changes::default()
        }
    }

    fn neighbour(&self, h: &NeighbourHeader) -> Changes {
        if self.devices.get(&h.ifindex) != Some(&Role::Vxlan) {
            return Changes::default();
        }
        match h.family {
            AddressFamily::Inet | AddressFamily::Inet6 => Changes::NEIGHBOUR,
            AddressFamily::Bridge if !h.flags.contains(NeighbourFlags::Controller) => Changes::FDB,
            _ => Changes::default(),
        }
    }

    fn route(&self, m: &RouteMessage) -> Changes {
        let family = m.header.address_family;
        if family != AddressFamily::Inet && family != AddressFamily::Inet6 {
            return Changes::default();
        }
        let mut table = u32::from(m.header.table);
        let mut dst = None;
        let mut oif = None;
        for attr in &m.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(std::net::IpAddr::from(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(std::net::IpAddr::from(*a)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return Changes::default();
        }
        let len = m.header.destination_prefix_length;
        let ours = u8::from(m.header.protocol) == ROUTE_PROTOCOL;
        let (via_ours, into_ours) = if family == AddressFamily::Inet {
            let dst = match dst {
                Some(std::net::IpAddr::V4(d)) => d,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            let into = Ipv4Network::new(dst, len).is_ok_and(|d| {
                self.networks
                    .iter()
                    .any(|n| n.prefix() <= d.prefix() && n.contains(d.network()))
            });
            (oif.is_some_and(|i| self.devices.contains_key(&i)), into)
        } else {
            let dst = match dst {
                Some(std::net::IpAddr::V6(d)) => d,
                _ => Ipv6Addr::UNSPECIFIED,
            };
            // Every device gets fe80::/64: link-local routes are the kernel's, not overlay's.
            let link_local = (dst.segments()[0] & 0xffc0) == 0xfe80;
            let into = Ipv6Network::new(dst, len).is_ok_and(|d| {
                self.networks6
                    .iter()
                    .any(|n| n.prefix() <= d.prefix() && n.contains(d.network()))
            });
            (oif.is_some_and(|i| self.carries_ipv6(i)) && !link_local, into)
        };
        if ours || via_ours || into_ours {
            Changes::ROUTE
        } else {
            Changes::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::{Emitable, NetlinkHeader, NetlinkMessage};
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
    use rtnetlink::packet_route::route::RouteProtocol;

    use super::*;
    use crate::kernel::LinkKind;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: LinkKind::Other(String::new()),
            mtu: 1500,
            mac: None,
            up: true,
            master: None,
            peer_in_other_netns: false,
            lower: None,
            alias: None,
        }
    }

    fn link_msg(index: u32, name: &str, alias: Option<&str>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(a) = alias {
            m.attributes.push(LinkAttribute::IfAlias(a.into()));
        }
        m
    }

    fn neigh(family: AddressFamily, index: u32, flags: NeighbourFlags) -> RouteNetlinkMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = index;
        m.header.flags = flags;
        m.header.state = NeighbourState::Permanent;
        RouteNetlinkMessage::DelNeighbour(m)
    }

    fn route(dst: &str, protocol: u8, oif: Option<u32>, table: u8) -> RouteNetlinkMessage {
        let net: Ipv4Network = dst.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = net.prefix();
        m.header.protocol = RouteProtocol::from(protocol);
        m.header.table = table;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(net.network())));
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        RouteNetlinkMessage::DelRoute(m)
    }

    fn filter() -> RouteFilter {
        let mut f = RouteFilter::new(&[
            link(1, "lo"),
            link(2, "eth0"),
            link(5, "ovb-1"),
            link(6, "ovx-1"),
            link(9, "ovv-4"),
        ]);
        f.set_networks(vec!["10.1.0.0/16".parse().unwrap()]);
        f.set_networks6(vec!["fd00:10::/48".parse().unwrap()]);
        f
    }

    #[test]
    fn links_of_overlay_only_and_followed_through_renames() {
        let mut f = filter();
        assert_eq!(f.devices(), 3);
        let other = RouteNetlinkMessage::NewLink(link_msg(20, "veth1234", None));
        assert!(f.classify(&other).is_empty());
        assert_eq!(
            f.classify(&RouteNetlinkMessage::DelLink(link_msg(6, "ovx-1", None))),
            Changes::LINK
        );
        // Gone: its neighbours no longer count.
        assert!(
            f.classify(&neigh(AddressFamily::Inet, 6, NeighbourFlags::empty()))
                .is_empty()
        );
        // Re-created with a new index.
        assert_eq!(
            f.classify(&RouteNetlinkMessage::NewLink(link_msg(21, "ovx-1", None))),
            Changes::LINK
        );
        assert_eq!(
            f.classify(&neigh(AddressFamily::Inet, 21, NeighbourFlags::empty())),
            Changes::NEIGHBOUR
        );
        // A VLAN parent overlay owns is known by its alias.
        assert_eq!(
            f.classify(&RouteNetlinkMessage::NewLink(link_msg(
                22,
                "eth0.7",
                Some(OWNED_ALIAS)
            ))),
            Changes::LINK
        );
        // Its bridge-port messages (port state) are not device changes and carry no alias:
        // they do not make it a stranger either.
        let mut port = link_msg(22, "eth0.7", None);
        port.header.interface_family = AddressFamily::Bridge;
        assert!(f.classify(&RouteNetlinkMessage::NewLink(port)).is_empty());
        assert_eq!(f.devices(), 4);
        // Renamed away from overlay's prefixes: that change counts, later ones do not.
        assert_eq!(
            f.classify(&RouteNetlinkMessage::NewLink(link_msg(9, "stolen", None))),
            Changes::LINK
        );
        assert!(
            f.classify(&RouteNetlinkMessage::NewLink(link_msg(9, "stolen", None)))
                .is_empty()
        );
    }

    #[test]
    fn addresses_on_overlay_devices_only() {
        let mut f = filter();
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = 5;
        assert_eq!(
            f.classify(&RouteNetlinkMessage::DelAddress(m.clone())),
            Changes::ADDRESS
        );
        m.header.index = 2;
        assert!(f.classify(&RouteNetlinkMessage::NewAddress(m.clone())).is_empty());
        // IPv6: an endpoint veth's (its link-local address) is not overlay's concern.
        m.header.index = 9;
        m.header.family = AddressFamily::Inet6;
        assert!(f.classify(&RouteNetlinkMessage::NewAddress(m)).is_empty());
    }

    #[test]
    fn neighbours_and_fdb_of_vxlan_devices_only_and_not_bridge_learning() {
        let mut f = filter();
        assert_eq!(
            f.classify(&neigh(AddressFamily::Inet, 6, NeighbourFlags::empty())),
            Changes::NEIGHBOUR
        );
        assert_eq!(
            f.classify(&neigh(AddressFamily::Bridge, 6, NeighbourFlags::Own)),
            Changes::FDB
        );
        // Learned by a bridge the vxlan device is a port of, workloads' ARP on the bridge,
        // MAC learning on an endpoint port, IPv6 neighbours, other devices.
        assert!(
            f.classify(&neigh(AddressFamily::Bridge, 6, NeighbourFlags::Controller))
                .is_empty()
        );
        assert!(
            f.classify(&neigh(AddressFamily::Inet, 5, NeighbourFlags::empty()))
                .is_empty()
        );
        assert!(
            f.classify(&neigh(AddressFamily::Bridge, 9, NeighbourFlags::Controller))
                .is_empty()
        );
        assert!(
            f.classify(&neigh(AddressFamily::Inet6, 5, NeighbourFlags::empty()))
                .is_empty()
        );
        assert!(
            f.classify(&neigh(AddressFamily::Inet, 2, NeighbourFlags::empty()))
                .is_empty()
        );
        // Dual stack: the IPv6 VTEP neighbours on the vxlan device are overlay's.
        assert_eq!(
            f.classify(&neigh(AddressFamily::Inet6, 6, NeighbourFlags::empty())),
            Changes::NEIGHBOUR
        );
    }

    /// The header-only verdict agrees with the full decode, message by message.
    #[test]
    fn header_fast_path_agrees_with_the_full_decode() {
        let mut f = filter();
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        let mut cases = Vec::new();
        for index in [2, 5, 6, 9, 44] {
            addr.header.index = index;
            cases.push(RouteNetlinkMessage::NewAddress(addr.clone()));
            for family in [AddressFamily::Inet, AddressFamily::Bridge, AddressFamily::Inet6] {
                for flags in [NeighbourFlags::Own, NeighbourFlags::Controller] {
                    cases.push(neigh(family, index, flags));
                }
            }
        }
        for msg in cases {
            let mut nl = NetlinkMessage::new(NetlinkHeader::default(), msg.clone().into());
            nl.finalize();
            let mut bytes = vec![0; nl.buffer_len()];
            nl.emit(&mut bytes);
            let fast = f.classify_header(nl.header.message_type, &bytes[16..]);
            assert_eq!(fast, Some(f.classify(&msg)), "{msg:?}");
        }
        // Links and routes need their attributes.
        assert_eq!(f.classify_header(16, &[0; 16]), None);
        assert_eq!(f.classify_header(24, &[0; 12]), None);
        // A header too short to read is left to the full decode (which refuses it too).
        assert_eq!(f.classify_header(RTM_NEWNEIGH, &[0; 3]), None);
    }

    #[test]
    fn per_family_device_views_are_not_link_changes() {
        let mut f = filter();
        for family in [AddressFamily::Inet6, AddressFamily::Bridge] {
            let mut m = link_msg(6, "ovx-1", None);
            m.header.interface_family = family;
            assert!(f.classify(&RouteNetlinkMessage::NewLink(m)).is_empty());
        }
        assert_eq!(f.devices(), 3, "and the device is still known");
    }

    #[test]
    fn routes_by_protocol_device_or_prefix() {
        let mut f = filter();
        let main = RouteHeader::RT_TABLE_MAIN;
        assert_eq!(
            f.classify(&route("10.9.0.0/24", ROUTE_PROTOCOL, Some(2), main)),
            Changes::ROUTE
        );
        assert_eq!(
            f.classify(&route("172.16.0.0/24", 4, Some(5), main)),
            Changes::ROUTE
        );
        // A foreign route into an overlay network shadows overlay's.
        assert_eq!(
            f.classify(&route("10.1.7.0/24", 4, Some(2), main)),
            Changes::ROUTE
        );
        assert_eq!(
            f.classify(&route("10.1.7.9/32", 3, Some(2), main)),
            Changes::ROUTE
        );
        // Unrelated: another prefix on another device, a covering route, another table.
        assert!(f.classify(&route("198.51.100.0/24", 4, Some(2), main)).is_empty());
        assert!(f.classify(&route("10.0.0.0/8", 4, Some(2), main)).is_empty());
        assert!(
            f.classify(&route("10.1.7.0/24", ROUTE_PROTOCOL, Some(5), 255))
                .is_empty()
        );
    }

    fn route6(dst: &str, protocol: u8, oif: Option<u32>) -> RouteNetlinkMessage {
        let net: Ipv6Network = dst.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.destination_prefix_length = net.prefix();
        m.header.protocol = RouteProtocol::from(protocol);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(net.network())));
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        RouteNetlinkMessage::DelRoute(m)
    }

    #[test]
    fn ipv6_routes_and_addresses_of_dual_stack_networks() {
        let mut f = filter();
        // Overlay's (a peer's subnet via the vxlan), the bridge's connected subnet, a foreign
        // route into the network.
        assert_eq!(
            f.classify(&route6("fd00:10:0:1::/64", ROUTE_PROTOCOL, Some(6))),
            Changes::ROUTE
        );
        assert_eq!(f.classify(&route6("fd00:10::/64", 2, Some(5))), Changes::ROUTE);
        assert_eq!(
            f.classify(&route6("fd00:10:0:7::/64", 3, Some(2))),
            Changes::ROUTE
        );
        // The kernel's link-local routes on every device (a new veth's too), other prefixes.
        for oif in [5, 6, 9] {
            assert!(f.classify(&route6("fe80::/64", 2, Some(oif))).is_empty());
        }
        assert!(f.classify(&route6("2001:db8::/64", 3, Some(9))).is_empty());
        assert!(f.classify(&route6("2001:db8::/64", 3, Some(2))).is_empty());
        // Addresses: on bridges and vxlan devices, not on endpoint veths; never link-local
        // ones (every device's, announced again when its DAD ends: no pass for that).
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet6;
        for (index, want) in [
            (5, Changes::ADDRESS),
            (6, Changes::ADDRESS),
            (9, Changes::default()),
            (2, Changes::default()),
        ] {
            addr.header.index = index;
            assert_eq!(
                f.classify(&RouteNetlinkMessage::NewAddress(addr.clone())),
                want,
                "{index}"
            );
        }
        addr.header.index = 5;
        addr.header.scope = AddressScope::Link;
        let msg = RouteNetlinkMessage::NewAddress(addr);
        assert!(f.classify(&msg).is_empty());
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), msg.into());
        nl.finalize();
        let mut bytes = vec![0; nl.buffer_len()];
        nl.emit(&mut bytes);
        let fast = f.classify_header(RTM_NEWADDR, &bytes[16..]);
        assert_eq!(fast, Some(Changes::default()), "the header-only path agrees");
    }
}
