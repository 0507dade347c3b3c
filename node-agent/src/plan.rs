//! The diff: what to change so the kernel matches the desired state, and nothing more.
//!
//! What each network wants comes from its mode's module ([`crate::modes`]); this is the
//! generic differ over those wants, the same for every mode.
//!
//! Planning happens in three passes against fresh dumps, because later passes need the
//! interface indexes the earlier ones create: [`links`] (bridges, vxlan devices, stray
//! devices), [`entries`] (addresses, neighbours, FDB, routes), [`endpoints`] (veth pairs).
//! An empty plan means the kernel already matches: a reconcile with nothing to do changes
//! nothing, and an agent restart does not touch working entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::mac::MacAddr;
use overlay_proto::names;

use crate::kernel::{Kernel, LinkKind, MacvlanRecord, ROUTE_PROTOCOL, Route, Route6};
use crate::modes::{self, Segment, Wants};
use crate::spec::{Attachment, EndpointSpec, HostSpec, VXLAN_PORT, VxlanSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkOp {
    CreateBridge {
        name: String,
        mtu: u32,
        mac: MacAddr,
    },
    CreateVxlan {
        spec: VxlanSpec,
        underlay_index: u32,
    },
    /// An 802.1Q parent for a macvlan network, marked as overlay's.
    CreateVlan {
        name: String,
        base_index: u32,
        vid: u16,
    },
    Delete {
        name: String,
        index: u32,
        why: String,
    },
    SetMtu {
        name: String,
        index: u32,
        mtu: u32,
    },
    SetMac {
        name: String,
        index: u32,
        mac: MacAddr,
    },
    SetUp {
        name: String,
        index: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryOp {
    AddAddress {
        index: u32,
        addr: Ipv4Network,
    },
    DelAddress {
        index: u32,
        addr: Ipv4Network,
    },
    /// Add or replace a permanent neighbour.
    SetNeighbour {
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    DelNeighbour {
        index: u32,
        ip: Ipv4Addr,
    },
    /// Add or replace a `self permanent` FDB entry.
    SetFdb {
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    },
    DelFdb {
        index: u32,
        mac: MacAddr,
        dst: Option<IpAddr>,
    },
    /// Add or replace an onlink route tagged with [`ROUTE_PROTOCOL`].
    SetRoute {
        dst: Ipv4Network,
        via: Ipv4Addr,
        index: u32,
    },
    DelRoute {
        route: Route,
    },
    /// The IPv6 side of a dual-stack network: the same entries, IPv6 (addresses without
    /// duplicate detection).
    AddAddress6 {
        index: u32,
        addr: Ipv6Network,
    },
    DelAddress6 {
        index: u32,
        addr: Ipv6Network,
    },
    SetNeighbour6 {
        index: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    },
    DelNeighbour6 {
        index: u32,
        ip: Ipv6Addr,
    },
    SetRoute6 {
        dst: Ipv6Network,
        via: Ipv6Addr,
        index: u32,
    },
    DelRoute6 {
        route: Route6,
    },
}

impl EntryOp {
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            EntryOp::DelAddress { .. }
                | EntryOp::DelNeighbour { .. }
                | EntryOp::DelFdb { .. }
                | EntryOp::DelRoute { .. }
                | EntryOp::DelAddress6 { .. }
                | EntryOp::DelNeighbour6 { .. }
                | EntryOp::DelRoute6 { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointOp {
    /// Create the veth pair and wire the namespace side (after removing any broken remains).
    Wire {
        spec: EndpointSpec,
        stale: Vec<(String, u32)>,
        bridge_index: u32,
    },
    /// The host end exists but is detached, down or has the wrong MTU.
    FixHostSide {
        spec: EndpointSpec,
        index: u32,
        master: u32,
    },
    /// The host end looks right; check and repair the namespace side (re-wire if missing).
    Verify {
        spec: EndpointSpec,
        stale: Vec<(String, u32)>,
        bridge_index: u32,
    },
    /// Check a macvlan endpoint inside its namespace; create it there if it is missing.
    VerifyMacvlan { spec: EndpointSpec, parent_index: u32 },
    /// A macvlan endpoint that is no longer desired: delete it inside its namespace.
    RemoveMacvlan { record: MacvlanRecord },
    /// The endpoint cannot be worked on because `device` is missing; the reason is reported.
    Blocked { id: u64, device: String, reason: String },
    /// A runtime-wired endpoint whose veth pair is gone: so is its sandbox (released after
    /// the grace period, like any endpoint whose namespace went).
    Gone { id: u64, reason: String },
}

/// What each network wants, in the order of the spec's networks (see [`modes`]).
fn wants<'a>(spec: &'a HostSpec, kernel: &Kernel, underlay_index: u32) -> Vec<Wants<'a>> {
    let segment = Segment::new(kernel, underlay_index);
    spec.networks.iter().map(|n| modes::wants(n, &segment)).collect()
}

/// Links to create, change or delete. `underlay_index` is the device VXLAN sends through.
pub fn links(spec: &HostSpec, kernel: &Kernel, underlay_index: u32) -> Vec<LinkOp> {
    let mut ops = Vec::new();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    let all = wants(spec, kernel, underlay_index);
    for want in &all {
        if let Some(bridge) = want.bridge {
            wanted.insert(&bridge.name);
            match kernel.link(&bridge.name) {
                None => ops.push(LinkOp::CreateBridge {
                    name: bridge.name.clone(),
                    mtu: bridge.mtu,
                    mac: bridge.mac,
                }),
                Some(l) if l.kind != LinkKind::Bridge => {
                    ops.push(LinkOp::Delete {
                        name: l.name.clone(),
                        index: l.index,
                        why: "not a bridge".into(),
                    });
                    ops.push(LinkOp::CreateBridge {
                        name: bridge.name.clone(),
                        mtu: bridge.mtu,
                        mac: bridge.mac,
                    });
                }
                Some(l) => {
                    if l.mtu != bridge.mtu {
                        ops.push(LinkOp::SetMtu {
                            name: l.name.clone(),
                            index: l.index,
                            mtu: bridge.mtu,
                        });
                    }
                    if l.mac != Some(bridge.mac) {
                        ops.push(LinkOp::SetMac {
                            name: l.name.clone(),
                            index: l.index,
                            mac: bridge.mac,
                        });
                    }
                    if !l.up {
                        ops.push(LinkOp::SetUp {
                            name: l.name.clone(),
                            index: l.index,
                        });
                    }
                }
            }
        }
        if let Some(vx) = want.vxlan {
            wanted.insert(&vx.name);
            let create = LinkOp::CreateVxlan {
                spec: vx.clone(),
                underlay_index,
            };
            match kernel.link(&vx.name) {
                None => ops.push(create),
                Some(l) => match &l.kind {
                    LinkKind::Vxlan(attrs)
                        if attrs.vni == vx.vni
                            && attrs.port == VXLAN_PORT
                            && attrs.local == Some(vx.local)
                            && attrs.link == Some(underlay_index)
                            && !attrs.learning =>
                    {
                        if l.mac != Some(vx.mac) {
                            ops.push(LinkOp::SetMac {
                                name: l.name.clone(),
                                index: l.index,
                                mac: vx.mac,
                            });
                        }
                        if l.mtu != vx.mtu {
                            ops.push(LinkOp::SetMtu {
                                name: l.name.clone(),
                                index: l.index,
                                mtu: vx.mtu,
                            });
                        }
                        if !l.up {
                            ops.push(LinkOp::SetUp {
                                name: l.name.clone(),
                                index: l.index,
                            });
                        }
                    }
                    // VNI, port, local address and underlay device cannot change in place.
                    other => {
                        let why = match other {
                            LinkKind::Vxlan(a) => format!("vxlan attributes differ ({a:?})"),
                            _ => "not a vxlan device".into(),
                        };
                        ops.push(LinkOp::Delete {
                            name: l.name.clone(),
                            index: l.index,
                            why,
                        });
                        ops.push(create);
                    }
                },
            }
        }
    }
    // 802.1Q parents of macvlan networks: created when missing, never taken over if someone
    // else made them.
    let mut wanted_vlans: BTreeSet<&str> = BTreeSet::new();
    for (name, base, vid) in all.iter().filter_map(|w| w.vlan) {
        wanted_vlans.insert(name);
        match (kernel.link(name), kernel.link(base)) {
            (Some(l), _) if !l.up && l.owned_by_overlay() => {
                ops.push(LinkOp::SetUp {
                    name: l.name.clone(),
                    index: l.index,
                });
            }
            (Some(_), _) => {}
            (None, Some(b)) => {
                if !ops
                    .iter()
                    .any(|o| matches!(o, LinkOp::CreateVlan { name: made, .. } if made == name))
                {
                    ops.push(LinkOp::CreateVlan {
                        name: name.to_string(),
                        base_index: b.index,
                        vid,
                    });
                }
            }
            // The base NIC is missing: the endpoints report it.
            (None, None) => {}
        }
    }
    for l in kernel.links.values() {
        if matches!(l.kind, LinkKind::Vlan(_))
            && l.owned_by_overlay()
            && !wanted_vlans.contains(l.name.as_str())
        {
            ops.push(LinkOp::Delete {
                name: l.name.clone(),
                index: l.index,
                why: "no macvlan network uses it".into(),
            });
        }
    }
    let endpoint_names: BTreeSet<&str> = spec
        .endpoints()
        .filter_map(|e| match &e.attachment {
            Attachment::Veth { host_ifname, .. } => Some(host_ifname.as_str()),
            Attachment::Macvlan { .. } => None,
        })
        .collect();
    // Workload ends waiting for their runtime to take them into its sandbox.
    let runtime_peers: BTreeSet<&str> = spec
        .endpoints()
        .filter(|e| matches!(e.attachment, Attachment::Veth { runtime: true, .. }))
        .map(|e| e.peer_ifname.as_str())
        .collect();
    for l in kernel.links.values() {
        let stray_device = (l.name.starts_with(names::BRIDGE_PREFIX)
            || l.name.starts_with(names::VXLAN_PREFIX))
            && !wanted.contains(l.name.as_str());
        let stray_endpoint =
            l.name.starts_with(names::ENDPOINT_PREFIX) && !endpoint_names.contains(l.name.as_str());
        // A workload end still in the host namespace is left over from an interrupted wiring
        // (wiring moves it out within the same reconcile).
        let stranded_peer = l.name.starts_with(names::PEER_PREFIX)
            || (l.name.starts_with(names::RUNTIME_PEER_PREFIX) && !runtime_peers.contains(l.name.as_str()));
        if stray_device || stray_endpoint || stranded_peer {
            ops.push(LinkOp::Delete {
                name: l.name.clone(),
                index: l.index,
                why: "no longer desired".into(),
            });
        }
    }
    ops
}

/// Per network, the subnets of the peers this host routes directly through the underlay: all
/// the firewall lets in from (and out to) the underlay for that network. Tunnelled and
/// unreachable peers are not among them, whatever the default route says.
pub fn direct_subnets(
    spec: &HostSpec,
    kernel: &Kernel,
    underlay_index: u32,
) -> BTreeMap<String, BTreeSet<Ipv4Network>> {
    spec.networks
        .iter()
        .zip(wants(spec, kernel, underlay_index))
        .map(|(n, w)| (n.name.clone(), w.direct.iter().map(|d| d.peer.subnet).collect()))
        .collect()
}

/// Peers the host's networks cannot reach (a route network's peers off this host's underlay
/// segment), one line each, for the audit (and so `doctor`).
pub fn unreachable_peers(spec: &HostSpec, kernel: &Kernel, underlay_index: u32) -> Vec<String> {
    wants(spec, kernel, underlay_index)
        .into_iter()
        .flat_map(|w| w.unreachable)
        .collect()
}

/// Addresses, neighbours, FDB entries and routes. Links must already exist (see [`links`]);
/// a network whose devices are still missing is skipped and picked up by the next reconcile.
/// `underlay_index`: the device peers reached directly are routed through.
pub fn entries(spec: &HostSpec, kernel: &Kernel, underlay_index: u32) -> Vec<EntryOp> {
    let mut ops = Vec::new();
    let mut wanted_routes: BTreeMap<Ipv4Network, (Ipv4Addr, u32)> = BTreeMap::new();
    let mut wanted_routes6: BTreeMap<Ipv6Network, (Ipv6Addr, u32)> = BTreeMap::new();
    let dual_stack = spec.networks.iter().any(|n| n.cidr6.is_some());
    for want in wants(spec, kernel, underlay_index) {
        if let Some(bridge) = want.bridge
            && let Some(l) = kernel.link(&bridge.name)
        {
            sync_addresses(
                &mut ops,
                l.index,
                &kernel.addresses_of(l.index),
                &[bridge.address],
            );
            if dual_stack {
                sync_addresses6(&mut ops, l.index, &kernel.addresses6_of(l.index), bridge.address6);
            }
        }
        // host-gw: the peer's subnet via its underlay address, on the segment they share.
        for d in &want.direct {
            wanted_routes.insert(d.peer.subnet, (d.via, underlay_index));
        }
        let Some(vx) = want.vxlan else { continue };
        let Some(l) = kernel.link(&vx.name) else { continue };
        let index = l.index;
        let own = Ipv4Network::new(vx.address, 32).expect("/32 is valid");
        sync_addresses(&mut ops, index, &kernel.addresses_of(index), &[own]);

        let want_neigh: BTreeMap<Ipv4Addr, MacAddr> =
            want.tunnelled.iter().map(|p| (p.vtep_ip, p.vtep_mac)).collect();
        let mut seen = BTreeSet::new();
        for n in kernel.neighbours.iter().filter(|n| n.ifindex == index) {
            match want_neigh.get(&n.ip) {
                Some(mac) if n.mac == Some(*mac) && n.permanent => {
                    seen.insert(n.ip);
                }
                Some(_) => {}
                None => ops.push(EntryOp::DelNeighbour { index, ip: n.ip }),
            }
        }
        for (ip, mac) in &want_neigh {
            if !seen.contains(ip) {
                ops.push(EntryOp::SetNeighbour {
                    index,
                    ip: *ip,
                    mac: *mac,
                });
            }
        }

        let want_fdb: BTreeMap<MacAddr, IpAddr> = want
            .tunnelled
            .iter()
            .map(|p| (p.vtep_mac, p.underlay_ip))
            .collect();
        let mut seen = BTreeSet::new();
        for f in kernel.fdb.iter().filter(|f| f.ifindex == index) {
            match want_fdb.get(&f.mac) {
                Some(dst) if f.dst == Some(*dst) && f.permanent && !seen.contains(&f.mac) => {
                    seen.insert(f.mac);
                }
                // Wrong destination (host moved) or a duplicate: remove, then set the right one.
                _ => ops.push(EntryOp::DelFdb {
                    index,
                    mac: f.mac,
                    dst: f.dst,
                }),
            }
        }
        for (mac, dst) in &want_fdb {
            if !seen.contains(mac) {
                ops.push(EntryOp::SetFdb {
                    index,
                    mac: *mac,
                    dst: *dst,
                });
            }
        }
        for p in &want.tunnelled {
            wanted_routes.insert(p.subnet, (p.vtep_ip, index));
        }
        if dual_stack {
            tunnel6(&mut ops, kernel, vx, index, &want.tunnelled, &mut wanted_routes6);
        }
    }
    if dual_stack {
        routes6(&mut ops, kernel, wanted_routes6);
    }
    let mut seen = BTreeSet::new();
    for r in kernel.routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
        match wanted_routes.get(&r.dst) {
            Some((via, index)) if r.gateway == Some(*via) && r.oif == Some(*index) && r.onlink => {
                seen.insert(r.dst);
            }
            Some(_) => {}
            None => ops.push(EntryOp::DelRoute { route: r.clone() }),
        }
    }
    for (dst, (via, index)) in wanted_routes {
        if !seen.contains(&dst) {
            ops.push(EntryOp::SetRoute { dst, via, index });
        }
    }
    ops
}

/// The IPv6 side of a tunnel (dual-stack networks): the vxlan device's own /128, and per peer
/// with an IPv6 subnet a permanent neighbour for its IPv6 VTEP address (the FDB entry is the
/// IPv4 side's: one MAC, one underlay destination) and an onlink route to its subnet.
fn tunnel6(
    ops: &mut Vec<EntryOp>,
    kernel: &Kernel,
    vx: &VxlanSpec,
    index: u32,
    tunnelled: &[&crate::spec::PeerSpec],
    wanted_routes6: &mut BTreeMap<Ipv6Network, (Ipv6Addr, u32)>,
) {
    let own = vx
        .address6
        .map(|a| Ipv6Network::new(a, 128).expect("/128 is valid"));
    sync_addresses6(ops, index, &kernel.addresses6_of(index), own);
    let want: BTreeMap<Ipv6Addr, MacAddr> = tunnelled
        .iter()
        .filter_map(|p| Some((p.vtep_ip6()?, p.vtep_mac)))
        .collect();
    let mut seen = BTreeSet::new();
    // Only permanent entries are overlay's: the kernel keeps its own (link-local, failed
    // lookups) on every IPv6 device.
    for n in kernel
        .neighbours6
        .iter()
        .filter(|n| n.ifindex == index && n.permanent)
    {
        match want.get(&n.ip) {
            Some(mac) if n.mac == Some(*mac) => {
                seen.insert(n.ip);
            }
            Some(_) => {}
            None => ops.push(EntryOp::DelNeighbour6 { index, ip: n.ip }),
        }
    }
    for (ip, mac) in &want {
        if !seen.contains(ip) {
            ops.push(EntryOp::SetNeighbour6 {
                index,
                ip: *ip,
                mac: *mac,
            });
        }
    }
    for p in tunnelled {
        if let (Some(subnet6), Some(vtep6)) = (p.subnet6, p.vtep_ip6()) {
            wanted_routes6.insert(subnet6, (vtep6, index));
        }
    }
}

/// Overlay's IPv6 routes (its protocol tag) against the wanted ones.
fn routes6(ops: &mut Vec<EntryOp>, kernel: &Kernel, wanted: BTreeMap<Ipv6Network, (Ipv6Addr, u32)>) {
    let mut seen = BTreeSet::new();
    for r in kernel.routes6.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
        match wanted.get(&r.dst) {
            Some((via, index)) if r.gateway == Some(*via) && r.oif == Some(*index) && r.onlink => {
                seen.insert(r.dst);
            }
            Some(_) => {}
            None => ops.push(EntryOp::DelRoute6 { route: r.clone() }),
        }
    }
    for (dst, (via, index)) in wanted {
        if !seen.contains(&dst) {
            ops.push(EntryOp::SetRoute6 { dst, via, index });
        }
    }
}

/// The global IPv6 addresses of an overlay device against the one it should hold.
fn sync_addresses6(
    ops: &mut Vec<EntryOp>,
    index: u32,
    have: &BTreeSet<Ipv6Network>,
    want: Option<Ipv6Network>,
) {
    for a in have.iter().filter(|a| Some(**a) != want) {
        ops.push(EntryOp::DelAddress6 { index, addr: *a });
    }
    if let Some(a) = want.filter(|a| !have.contains(a)) {
        ops.push(EntryOp::AddAddress6 { index, addr: a });
    }
}

fn sync_addresses(ops: &mut Vec<EntryOp>, index: u32, have: &BTreeSet<Ipv4Network>, want: &[Ipv4Network]) {
    for a in have.iter().filter(|a| !want.contains(a)) {
        ops.push(EntryOp::DelAddress { index, addr: *a });
    }
    for a in want.iter().filter(|a| !have.contains(a)) {
        ops.push(EntryOp::AddAddress { index, addr: *a });
    }
}

/// What the agent remembers of its endpoints beside the host-side dump.
#[derive(Clone, Copy, Debug)]
pub struct Known<'a> {
    /// Macvlan endpoints it put into namespaces: nothing of them stays in the host namespace,
    /// so these stand in for the host-side dump.
    pub macvlans: &'a BTreeMap<u64, MacvlanRecord>,
    /// Endpoint id → whether its namespace side was last configured as the namespace's
    /// default route. When the controller moves the default route, the endpoints it moved
    /// from and to are checked again without waiting for a deep pass.
    pub routes: &'a BTreeMap<u64, bool>,
}

/// Endpoint work. `deep` also verifies endpoints whose host end looks right (inside the
/// namespace), which costs a thread and a netlink socket per endpoint: done at start and
/// periodically, not on every change.
///
/// Order matters inside a namespace on several networks: detached macvlans go first, then
/// endpoints without the default route, then those with it, so the endpoint giving up the
/// default route has removed it by the time the one taking it over looks.
pub fn endpoints(spec: &HostSpec, kernel: &Kernel, deep: bool, known: Known<'_>) -> Vec<EndpointOp> {
    let Known { macvlans, routes } = known;
    let desired: BTreeSet<u64> = spec.endpoints().map(|e| e.id).collect();
    let mut ops: Vec<EndpointOp> = macvlans
        .values()
        .filter(|r| !desired.contains(&r.id))
        .map(|record| EndpointOp::RemoveMacvlan {
            record: record.clone(),
        })
        .collect();
    let ordered = spec
        .endpoints()
        .filter(|e| !e.default_route)
        .chain(spec.endpoints().filter(|e| e.default_route));
    for ep in ordered {
        // The routes inside the namespace are not what the endpoint's role now asks for.
        let role_changed = routes.get(&ep.id) != Some(&ep.default_route);
        match &ep.attachment {
            Attachment::Veth {
                bridge,
                host_ifname,
                runtime,
            } => {
                let Some(bridge) = kernel.link(bridge) else {
                    ops.push(EndpointOp::Blocked {
                        id: ep.id,
                        device: bridge.clone(),
                        reason: format!("bridge {bridge} is missing"),
                    });
                    continue;
                };
                let bridge_index = bridge.index;
                if *runtime {
                    // The runtime owns the workload end and the sandbox: only the host end is
                    // the agent's. Without it the pair is gone, and with it the sandbox's end.
                    match kernel.link(host_ifname) {
                        Some(l) if l.kind == LinkKind::Veth => {
                            if l.master != Some(bridge_index) || l.mtu != ep.mtu || !l.up {
                                ops.push(EndpointOp::FixHostSide {
                                    spec: ep.clone(),
                                    index: l.index,
                                    master: bridge_index,
                                });
                            }
                        }
                        _ => ops.push(EndpointOp::Gone {
                            id: ep.id,
                            reason: format!(
                                "its veth pair ({host_ifname}) is gone: the container's sandbox was destroyed"
                            ),
                        }),
                    }
                    continue;
                }
                match kernel.link(host_ifname) {
                    Some(l) if l.kind == LinkKind::Veth && l.peer_in_other_netns => {
                        let stale = vec![(l.name.clone(), l.index)];
                        if l.master != Some(bridge_index) || l.mtu != ep.mtu || !l.up {
                            ops.push(EndpointOp::FixHostSide {
                                spec: ep.clone(),
                                index: l.index,
                                master: bridge_index,
                            });
                            ops.push(EndpointOp::Verify {
                                spec: ep.clone(),
                                stale,
                                bridge_index,
                            });
                        } else if deep || role_changed {
                            ops.push(EndpointOp::Verify {
                                spec: ep.clone(),
                                stale,
                                bridge_index,
                            });
                        }
                    }
                    other => {
                        // Missing, not a veth, or its peer never left the host namespace.
                        let stale = other.map(|l| (l.name.clone(), l.index)).into_iter().collect();
                        ops.push(EndpointOp::Wire {
                            spec: ep.clone(),
                            stale,
                            bridge_index,
                        });
                    }
                }
            }
            Attachment::Macvlan { parent, .. } => match kernel.link(parent) {
                None => ops.push(EndpointOp::Blocked {
                    id: ep.id,
                    device: parent.clone(),
                    reason: format!("parent interface {parent} not found"),
                }),
                Some(p) => {
                    let known = macvlans
                        .get(&ep.id)
                        .is_some_and(|r| r.netns == ep.netns.as_text() && r.ifname == ep.ifname);
                    if deep || !known || role_changed {
                        ops.push(EndpointOp::VerifyMacvlan {
                            spec: ep.clone(),
                            parent_index: p.index,
                        });
                    }
                }
            },
        }
    }
    ops
}

#[cfg(test)]
mod tests;
