//! What the kernel holds, as far as overlay cares: a snapshot taken from netlink dumps
//! (links, addresses, neighbours and FDB entries of overlay's devices, routes). Plain data,
//! so the planner that diffs it against the desired state is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::mac::MacAddr;
use overlay_proto::names;

/// Kernel writes made outside a reconcile pass (the veth pairs the Docker plugin makes for
/// the runtime, and their removal). A pass reuses its last dump only while this has not
/// moved either (see [`crate::reconcile`]): such a write's notifications may still be unread
/// when the spec that depends on it arrives.
static OUTSIDE_WRITES: AtomicU64 = AtomicU64::new(0);

/// Call after any kernel write made outside a reconcile pass (whether it succeeded or not).
pub fn wrote_outside_a_pass() {
    OUTSIDE_WRITES.fetch_add(1, Ordering::AcqRel);
}

/// How many writes [`wrote_outside_a_pass`] has counted.
pub fn outside_writes() -> u64 {
    OUTSIDE_WRITES.load(Ordering::Acquire)
}

/// Routes overlay installs carry this protocol number (`ip route` shows `proto 79`), so a
/// reconcile can tell its routes from everyone else's.
pub const ROUTE_PROTOCOL: u8 = 79;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    /// The underlay address VXLAN is sent from: either family.
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub link: Option<u32>,
    pub learning: bool,
}

impl Default for VxlanAttrs {
    /// What the kernel assumes when an attribute is absent (learning is on by default).
    fn default() -> Self {
        Self {
            vni: 0,
            port: 0,
            local: None,
            link: None,
            learning: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Vxlan(VxlanAttrs),
    Veth,
    /// 802.1Q sub-interface with this VLAN id.
    Vlan(u16),
    Macvlan,
    Other(String),
}

/// Alias overlay writes on devices it creates without one of its name prefixes (VLAN parents
/// of macvlan networks): how it later knows it may delete them.
pub const OWNED_ALIAS: &str = "overlay-managed";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// For a veth: the peer lives in another namespace.
    pub peer_in_other_netns: bool,
    /// IFLA_LINK: the lower device (VLAN base, macvlan parent).
    pub lower: Option<u32>,
    pub alias: Option<String>,
}

impl Link {
    pub fn owned_by_overlay(&self) -> bool {
        self.alias.as_deref() == Some(OWNED_ALIAS)
    }
}

/// A neighbour entry; IPv4 unless `A` says otherwise (dual-stack networks' IPv6 VTEPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour<A = Ipv4Addr> {
    pub ifindex: u32,
    pub ip: A,
    pub mac: Option<MacAddr>,
    pub permanent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: MacAddr,
    /// The peer's underlay address (IPv4 or IPv6, as the underlay).
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

/// A route of the main table; IPv4 unless the types say otherwise ([`Route6`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route<N = Ipv4Network, A = Ipv4Addr> {
    pub dst: N,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub onlink: bool,
}

pub type Route6 = Route<Ipv6Network, Ipv6Addr>;

/// One consistent look at the host's kernel state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kernel {
    pub links: BTreeMap<String, Link>,
    /// IPv4 addresses per interface index.
    pub addresses: BTreeMap<u32, BTreeSet<Ipv4Network>>,
    /// Neighbours on overlay's vxlan devices.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries on overlay's vxlan devices.
    pub fdb: Vec<FdbEntry>,
    /// Routes in the main table.
    pub routes: Vec<Route>,
    /// Dual stack only (read when a network of the spec has IPv6): global IPv6 addresses of
    /// overlay's bridges and vxlan devices, IPv6 neighbours on its vxlan devices, and the
    /// IPv6 routes of the main table tagged with overlay's protocol.
    pub addresses6: BTreeMap<u32, BTreeSet<Ipv6Network>>,
    pub neighbours6: Vec<Neighbour<Ipv6Addr>>,
    pub routes6: Vec<Route6>,
}

impl Kernel {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.get(name)
    }

    pub fn addresses_of(&self, index: u32) -> BTreeSet<Ipv4Network> {
        self.addresses.get(&index).cloned().unwrap_or_default()
    }

    pub fn addresses6_of(&self, index: u32) -> BTreeSet<Ipv6Network> {
        self.addresses6.get(&index).cloned().unwrap_or_default()
    }

    /// Indexes of overlay's vxlan devices: the only ones whose neighbours and FDB we read.
    pub fn vxlan_indexes(&self) -> BTreeSet<u32> {
        self.links
            .values()
            .filter(|l| l.name.starts_with(names::VXLAN_PREFIX))
            .map(|l| l.index)
            .collect()
    }
}

/// A macvlan endpoint overlay moved into a namespace. Nothing of it stays in the host
/// namespace, so the agent remembers it (on disk) to remove it when it is detached.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacvlanRecord {
    pub id: u64,
    /// The namespace reference as the controller gave it.
    pub netns: String,
    pub ifname: String,
    pub mac: MacAddr,
}
