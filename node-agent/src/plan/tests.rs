//! Planner tests: the diff is exact, a converged kernel plans nothing, and nothing that does
//! not carry overlay's names or protocol is ever touched.

use super::*;
use crate::kernel::{FdbEntry, Link, MacvlanRecord, Neighbour, VxlanAttrs};
use overlay_proto::v1 as pb;

const UNDERLAY: u32 = 2;

fn spec() -> HostSpec {
    let d = pb::HostDesiredState {
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
            bridge_name: "ovb-1".into(),
            vxlan_name: "ovx-1".into(),
            peers: vec![
                pb::Peer {
                    host: "h2".into(),
                    underlay_ip: "192.0.2.22".into(),
                    vtep_mac: "02:00:00:00:00:02".into(),
                    subnet: "10.1.1.0/24".into(),
                    ..Default::default()
                },
                pb::Peer {
                    host: "h3".into(),
                    underlay_ip: "192.0.2.23".into(),
                    vtep_mac: "02:00:00:00:00:03".into(),
                    subnet: "10.1.2.0/24".into(),
                    ..Default::default()
                },
            ],
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
            ..Default::default()
        }],
    };
    HostSpec::from_proto(&d, "192.0.2.21".parse().unwrap())
}

/// Endpoint plans for an agent that configured every endpoint's routes as the spec says.
fn plan_eps(
    s: &HostSpec,
    k: &Kernel,
    deep: bool,
    macvlans: &BTreeMap<u64, MacvlanRecord>,
) -> Vec<EndpointOp> {
    let routes: BTreeMap<u64, bool> = s.endpoints().map(|e| (e.id, e.default_route)).collect();
    endpoints(
        s,
        k,
        deep,
        Known {
            macvlans,
            routes: &routes,
        },
    )
}

fn link(index: u32, name: &str, kind: LinkKind, mtu: u32) -> Link {
    Link {
        index,
        name: name.into(),
        kind,
        mtu,
        mac: None,
        up: true,
        master: None,
        peer_in_other_netns: false,
        lower: None,
        alias: None,
    }
}

/// The kernel exactly as the spec wants it, plus foreign objects overlay must leave alone.
fn converged() -> Kernel {
    let mut k = Kernel::default();
    let mut vx = link(
        11,
        "ovx-1",
        LinkKind::Vxlan(VxlanAttrs {
            vni: 4096,
            port: 4789,
            local: Some("192.0.2.21".parse().unwrap()),
            link: Some(UNDERLAY),
            learning: false,
        }),
        1450,
    );
    vx.mac = Some("02:00:00:00:00:01".parse().unwrap());
    let mut veth = link(12, "ovv-1a", LinkKind::Veth, 1450);
    veth.master = Some(10);
    veth.peer_in_other_netns = true;
    for l in [
        link(1, "lo", LinkKind::Other("".into()), 65536),
        link(UNDERLAY, "eth0", LinkKind::Veth, 1500),
        link(3, "docker0", LinkKind::Bridge, 1500),
        Link {
            mac: Some(overlay_proto::ipam::mac_from_ip("10.1.0.1".parse().unwrap())),
            ..link(10, "ovb-1", LinkKind::Bridge, 1450)
        },
        vx,
        veth,
    ] {
        k.links.insert(l.name.clone(), l);
    }
    k.addresses
        .insert(10, ["10.1.0.1/24".parse().unwrap()].into_iter().collect());
    k.addresses
        .insert(11, ["10.1.0.0/32".parse().unwrap()].into_iter().collect());
    k.addresses
        .insert(UNDERLAY, ["192.0.2.21/24".parse().unwrap()].into_iter().collect());
    for (ip, mac, dst) in [
        ("10.1.1.0", "02:00:00:00:00:02", "192.0.2.22"),
        ("10.1.2.0", "02:00:00:00:00:03", "192.0.2.23"),
    ] {
        k.neighbours.push(Neighbour {
            ifindex: 11,
            ip: ip.parse().unwrap(),
            mac: Some(mac.parse().unwrap()),
            permanent: true,
        });
        k.fdb.push(FdbEntry {
            ifindex: 11,
            mac: mac.parse().unwrap(),
            dst: Some(dst.parse().unwrap()),
            permanent: true,
        });
    }
    for (dst, via) in [("10.1.1.0/24", "10.1.1.0"), ("10.1.2.0/24", "10.1.2.0")] {
        k.routes.push(Route {
            dst: dst.parse().unwrap(),
            gateway: Some(via.parse().unwrap()),
            oif: Some(11),
            protocol: ROUTE_PROTOCOL,
            onlink: true,
        });
    }
    // Foreign: a static route and a kernel route must never be touched.
    k.routes.push(Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("192.0.2.1".parse().unwrap()),
        oif: Some(UNDERLAY),
        protocol: 4,
        onlink: false,
    });
    k.routes.push(Route {
        dst: "10.1.0.0/24".parse().unwrap(),
        gateway: None,
        oif: Some(10),
        protocol: 2,
        onlink: false,
    });
    k
}

#[test]
fn converged_kernel_plans_nothing() {
    let (s, k) = (spec(), converged());
    assert_eq!(links(&s, &k, UNDERLAY), vec![]);
    assert_eq!(entries(&s, &k, UNDERLAY), vec![]);
    assert_eq!(plan_eps(&s, &k, false, &BTreeMap::new()), vec![]);
    let deep = plan_eps(&s, &k, true, &BTreeMap::new());
    assert!(matches!(deep.as_slice(), [EndpointOp::Verify { .. }]), "{deep:?}");
}

#[test]
fn empty_kernel_creates_devices_then_entries() {
    let s = spec();
    let mut k = Kernel::default();
    k.links
        .insert("eth0".into(), link(UNDERLAY, "eth0", LinkKind::Veth, 1500));
    let ops = links(&s, &k, UNDERLAY);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[0],
        LinkOp::CreateBridge {
            name: "ovb-1".into(),
            mtu: 1450,
            mac: overlay_proto::ipam::mac_from_ip("10.1.0.1".parse().unwrap()),
        }
    );
    assert!(matches!(&ops[1], LinkOp::CreateVxlan { spec, underlay_index: UNDERLAY } if spec.vni == 4096));
    // Until the devices exist, no entry can be planned and endpoints are reported blocked.
    assert_eq!(entries(&s, &k, UNDERLAY), vec![]);
    assert!(matches!(
        &plan_eps(&s, &k, false, &BTreeMap::new())[..],
        [EndpointOp::Blocked { id: 26, .. }]
    ));

    // Devices present but empty: every entry is planned, one per peer.
    let mut k = converged();
    k.neighbours.clear();
    k.fdb.clear();
    k.routes.retain(|r| r.protocol != ROUTE_PROTOCOL);
    k.addresses.remove(&11);
    let ops = entries(&s, &k, UNDERLAY);
    let count = |f: fn(&EntryOp) -> bool| ops.iter().filter(|o| f(o)).count();
    assert_eq!(count(|o| matches!(o, EntryOp::SetNeighbour { index: 11, .. })), 2);
    assert_eq!(count(|o| matches!(o, EntryOp::SetFdb { index: 11, .. })), 2);
    assert_eq!(count(|o| matches!(o, EntryOp::SetRoute { index: 11, .. })), 2);
    assert_eq!(count(|o| matches!(o, EntryOp::AddAddress { index: 11, .. })), 1);
    assert_eq!(ops.len(), 7);
}

#[test]
fn removed_peer_loses_its_entries_and_nothing_else() {
    let mut s = spec();
    s.networks[0].peers.retain(|p| p.host != "h3");
    let ops = entries(&s, &converged(), UNDERLAY);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.contains(&EntryOp::DelNeighbour {
        index: 11,
        ip: "10.1.2.0".parse().unwrap()
    }));
    assert!(
        ops.iter()
            .any(|o| matches!(o, EntryOp::DelFdb { mac, .. } if mac.to_string() == "02:00:00:00:00:03"))
    );
    assert!(
        ops.iter()
            .any(|o| matches!(o, EntryOp::DelRoute { route } if route.dst.to_string() == "10.1.2.0/24"))
    );
}

#[test]
fn moved_peer_is_replaced() {
    let mut s = spec();
    s.networks[0].peers[0].underlay_ip = "192.0.2.99".parse().unwrap();
    let ops = entries(&s, &converged(), UNDERLAY);
    assert_eq!(
        ops,
        vec![
            EntryOp::DelFdb {
                index: 11,
                mac: "02:00:00:00:00:02".parse().unwrap(),
                dst: Some("192.0.2.22".parse().unwrap())
            },
            EntryOp::SetFdb {
                index: 11,
                mac: "02:00:00:00:00:02".parse().unwrap(),
                dst: "192.0.2.99".parse().unwrap()
            },
        ]
    );
}

#[test]
fn stray_overlay_devices_go_foreign_ones_stay() {
    let s = spec();
    let mut k = converged();
    for (i, name) in ["ovb-9", "ovx-9", "ovv-ff", "ovp-1a", "br-other", "vxlan0"]
        .iter()
        .enumerate()
    {
        k.links.insert(
            name.to_string(),
            link(50 + i as u32, name, LinkKind::Bridge, 1500),
        );
    }
    let deleted: Vec<String> = links(&s, &k, UNDERLAY)
        .into_iter()
        .map(|o| match o {
            LinkOp::Delete { name, .. } => name,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deleted, ["ovb-9", "ovp-1a", "ovv-ff", "ovx-9"]);
}

/// A bridge keeps the MAC it was created with: one that took another (a bridge without an
/// address of its own follows its ports') gets it back.
#[test]
fn bridge_mac_is_set_back() {
    let s = spec();
    let mut k = converged();
    if let Some(l) = k.links.get_mut("ovb-1") {
        l.mac = Some("02:11:22:33:44:55".parse().unwrap());
    }
    let want = overlay_proto::ipam::mac_from_ip("10.1.0.1".parse().unwrap());
    assert_eq!(
        links(&s, &k, UNDERLAY),
        vec![LinkOp::SetMac {
            name: "ovb-1".into(),
            index: 10,
            mac: want
        }]
    );
}

#[test]
fn vxlan_attribute_changes() {
    let s = spec();
    let mut k = converged();
    if let Some(l) = k.links.get_mut("ovx-1") {
        l.kind = LinkKind::Vxlan(VxlanAttrs {
            vni: 42,
            port: 4789,
            local: None,
            link: Some(UNDERLAY),
            learning: false,
        });
    }
    let ops = links(&s, &k, UNDERLAY);
    assert!(
        matches!(&ops[..], [LinkOp::Delete { name, .. }, LinkOp::CreateVxlan { .. }] if name == "ovx-1"),
        "{ops:?}"
    );

    let mut k = converged();
    if let Some(l) = k.links.get_mut("ovx-1") {
        l.mac = Some("02:00:00:00:00:99".parse().unwrap());
        l.mtu = 1500;
        l.up = false;
    }
    let ops = links(&s, &k, UNDERLAY);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(matches!(ops[0], LinkOp::SetMac { .. }) && matches!(ops[1], LinkOp::SetMtu { mtu: 1450, .. }));
}

#[test]
fn endpoint_repairs() {
    let s = spec();
    // Host end gone (namespace deleted, or someone removed it): wire again.
    let mut k = converged();
    k.links.remove("ovv-1a");
    assert!(
        matches!(&plan_eps(&s, &k, false, &BTreeMap::new())[..], [EndpointOp::Wire { stale, .. }] if stale.is_empty())
    );
    // Host end present but its peer never moved: remove it and wire again.
    let mut k = converged();
    k.links.get_mut("ovv-1a").unwrap().peer_in_other_netns = false;
    assert!(
        matches!(&plan_eps(&s, &k, false, &BTreeMap::new())[..], [EndpointOp::Wire { stale, .. }] if stale.len() == 1)
    );
    // Detached from the bridge: fix the host side and check the namespace side.
    let mut k = converged();
    k.links.get_mut("ovv-1a").unwrap().master = None;
    assert!(matches!(
        &plan_eps(&s, &k, false, &BTreeMap::new())[..],
        [
            EndpointOp::FixHostSide { master: 10, .. },
            EndpointOp::Verify { .. }
        ]
    ));
}

/// `spec()` with its endpoint wired by a container runtime (Docker): the agent keeps the host
/// end only.
fn runtime_spec() -> HostSpec {
    let mut s = spec();
    for ep in &mut s.networks[0].endpoints {
        ep.attachment = Attachment::Veth {
            bridge: "ovb-1".into(),
            host_ifname: "ovv-1a".into(),
            runtime: true,
        };
        ep.peer_ifname = "ovr-1a".into();
    }
    s
}

#[test]
fn runtime_endpoints_keep_their_host_end_and_never_enter_the_sandbox() {
    let s = runtime_spec();
    // Converged, even on a deep pass: nothing to check inside (the runtime owns the sandbox).
    let k = converged();
    assert!(plan_eps(&s, &k, true, &BTreeMap::new()).is_empty());
    // The workload end still waits in the host namespace for the runtime: left alone.
    let mut k = converged();
    k.links.get_mut("ovv-1a").unwrap().peer_in_other_netns = false;
    k.links
        .insert("ovr-1a".into(), link(13, "ovr-1a", LinkKind::Veth, 1450));
    assert!(plan_eps(&s, &k, true, &BTreeMap::new()).is_empty());
    assert!(
        !links(&s, &k, UNDERLAY)
            .iter()
            .any(|op| matches!(op, LinkOp::Delete { name, .. } if name == "ovr-1a"))
    );
    // One of no endpoint is a leftover: removed.
    k.links
        .insert("ovr-9".into(), link(14, "ovr-9", LinkKind::Veth, 1450));
    assert!(
        links(&s, &k, UNDERLAY)
            .iter()
            .any(|op| matches!(op, LinkOp::Delete { name, .. } if name == "ovr-9"))
    );
    // Not on the bridge yet (just created): put it there, nothing more.
    let mut k = converged();
    k.links.get_mut("ovv-1a").unwrap().master = None;
    assert!(matches!(
        &plan_eps(&s, &k, false, &BTreeMap::new())[..],
        [EndpointOp::FixHostSide { master: 10, .. }]
    ));
    // The pair is gone, so is the sandbox: never re-created by the agent.
    let mut k = converged();
    k.links.remove("ovv-1a");
    assert!(matches!(
        &plan_eps(&s, &k, false, &BTreeMap::new())[..],
        [EndpointOp::Gone { id: 26, .. }]
    ));
}

fn macvlan_spec(parent: &str) -> HostSpec {
    let d = pb::HostDesiredState {
        revision: 3,
        host_name: "h1".into(),
        underlay_ip: "192.0.2.21".into(),
        vtep_mac: "02:00:00:00:00:01".into(),
        networks: vec![pb::NetworkState {
            name: "lan".into(),
            id: 4,
            mode: pb::NetworkMode::Macvlan as i32,
            cidr: "198.51.100.0/24".into(),
            subnet: "198.51.100.0/24".into(),
            gateway: "198.51.100.1".into(),
            mtu: 0,
            macvlan: Some(pb::MacvlanOptions {
                parent: parent.into(),
                gateway: "198.51.100.1".into(),
                ip_range: "198.51.100.128/25".into(),
                mode: "bridge".into(),
            }),
            endpoints: vec![pb::LocalEndpoint {
                id: 9,
                netns: "m1".into(),
                ifname: "eth0".into(),
                address: "198.51.100.130/24".into(),
                mac: "0a:58:c6:33:64:82".into(),
                gateway: "198.51.100.1".into(),
                host_ifname: "ovv-9".into(),
                default_route: Some(true),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let spec = HostSpec::from_proto(&d, "192.0.2.21".parse().unwrap());
    assert!(spec.rejected.is_empty(), "{:?}", spec.rejected);
    spec
}

#[test]
fn macvlan_vlan_parent_is_created_and_only_our_vlans_removed() {
    let s = macvlan_spec("eth0.50");
    let k = converged();
    let ops = links(&s, &k, UNDERLAY);
    assert!(
        ops.contains(&LinkOp::CreateVlan {
            name: "eth0.50".into(),
            base_index: UNDERLAY,
            vid: 50
        }),
        "{ops:?}"
    );

    let mut k = converged();
    let mut ours = link(60, "eth0.60", LinkKind::Vlan(60), 1500);
    ours.alias = Some(crate::kernel::OWNED_ALIAS.into());
    let foreign = link(61, "eth0.61", LinkKind::Vlan(61), 1500);
    k.links.insert(ours.name.clone(), ours);
    k.links.insert(foreign.name.clone(), foreign);
    let deleted: Vec<_> = links(&s, &k, UNDERLAY)
        .into_iter()
        .filter_map(|o| match o {
            LinkOp::Delete { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert!(
        deleted.contains(&"eth0.60".to_string()),
        "overlay's unused VLAN goes: {deleted:?}"
    );
    assert!(
        !deleted.contains(&"eth0.61".to_string()),
        "a VLAN overlay did not make stays"
    );
}

#[test]
fn macvlan_endpoints_use_records() {
    let s = macvlan_spec("eth0");
    let k = converged();
    let none = BTreeMap::new();
    assert!(matches!(
        &plan_eps(&s, &k, false, &none)[..],
        [EndpointOp::VerifyMacvlan {
            parent_index: UNDERLAY,
            ..
        }]
    ));
    let record = MacvlanRecord {
        id: 9,
        netns: "m1".into(),
        ifname: "eth0".into(),
        mac: "0a:58:c6:33:64:82".parse().unwrap(),
    };
    let known: BTreeMap<u64, MacvlanRecord> = [(9, record.clone())].into_iter().collect();
    assert_eq!(
        plan_eps(&s, &k, false, &known),
        vec![],
        "a known endpoint needs no work between deep passes"
    );
    assert_eq!(
        plan_eps(&s, &k, true, &known).len(),
        1,
        "deep passes check it inside its namespace"
    );
    // Detached: the record is all that is left to find it by.
    let mut gone = s.clone();
    gone.networks[0].endpoints.clear();
    assert_eq!(
        plan_eps(&gone, &k, false, &known),
        vec![EndpointOp::RemoveMacvlan { record }]
    );
    // Parent missing: reported, nothing attempted.
    let s = macvlan_spec("eth7");
    assert!(matches!(
        &plan_eps(&s, &k, false, &none)[..],
        [EndpointOp::Blocked { id: 9, .. }]
    ));
}

/// One namespace on two networks: blue's endpoint (26) and red's (27, ifname eth1).
fn two_networks(default_on_red: bool) -> HostSpec {
    let mut s = spec();
    let mut red = s.networks[0].clone();
    red.name = "red".into();
    red.id = 2;
    red.cidr = "10.2.0.0/16".parse().unwrap();
    red.bridge = Some(crate::spec::BridgeSpec {
        name: "ovb-2".into(),
        address: "10.2.0.1/24".parse().unwrap(),
        address6: None,
        mtu: 1450,
        mac: overlay_proto::ipam::mac_from_ip("10.2.0.1".parse().unwrap()),
    });
    let mut ep = red.endpoints[0].clone();
    ep.id = 27;
    ep.ifname = "eth1".into();
    ep.cidr = red.cidr;
    ep.default_route = default_on_red;
    ep.attachment = Attachment::Veth {
        bridge: "ovb-2".into(),
        host_ifname: "ovv-1b".into(),
        runtime: false,
    };
    red.endpoints = vec![ep];
    s.networks[0].endpoints[0].default_route = !default_on_red;
    s.networks.push(red);
    s
}

fn with_red(mut k: Kernel) -> Kernel {
    k.links.insert(
        "ovb-2".into(),
        Link {
            mac: Some(overlay_proto::ipam::mac_from_ip("10.2.0.1".parse().unwrap())),
            ..link(20, "ovb-2", LinkKind::Bridge, 1450)
        },
    );
    let mut veth = link(21, "ovv-1b", LinkKind::Veth, 1450);
    veth.master = Some(20);
    veth.peer_in_other_netns = true;
    k.links.insert("ovv-1b".into(), veth);
    k
}

#[test]
fn a_moved_default_route_rechecks_both_endpoints_giver_first() {
    let k = with_red(converged());
    let before = two_networks(false);
    let configured: BTreeMap<u64, bool> = before.endpoints().map(|e| (e.id, e.default_route)).collect();
    let none = BTreeMap::new();
    let known = Known {
        macvlans: &none,
        routes: &configured,
    };
    assert_eq!(
        endpoints(&before, &k, false, known),
        vec![],
        "converged: nothing to do"
    );
    // The controller gave red's endpoint the default route: both are looked at again, blue's
    // (which gives it up) first, though blue sorts first anyway; then with red holding it
    // before, the order flips.
    let after = two_networks(true);
    let ids: Vec<u64> = endpoints(&after, &k, false, known)
        .iter()
        .map(|op| match op {
            EndpointOp::Verify { spec, .. } => spec.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, [26, 27]);
    let configured: BTreeMap<u64, bool> = after.endpoints().map(|e| (e.id, e.default_route)).collect();
    let known = Known {
        macvlans: &none,
        routes: &configured,
    };
    let ids: Vec<u64> = endpoints(&before, &k, false, known)
        .iter()
        .map(|op| match op {
            EndpointOp::Verify { spec, .. } => spec.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, [27, 26], "red gives the route up before blue takes it");
}

#[test]
fn endpoints_carry_their_route_role_and_network() {
    let s = two_networks(true);
    let eps: Vec<(u64, bool, String)> = s
        .endpoints()
        .map(|e| (e.id, e.default_route, e.cidr.to_string()))
        .collect();
    assert_eq!(
        eps,
        [
            (26, false, "10.1.0.0/16".into()),
            (27, true, "10.2.0.0/16".into())
        ]
    );
}

#[test]
fn direct_routing_routes_same_segment_peers_and_tunnels_the_rest() {
    let mut s = spec();
    s.networks[0].direct_routing = true;
    // h3 sits behind a router: its underlay address is off eth0's 192.0.2.0/24.
    s.networks[0].peers[1].underlay_ip = "198.51.100.23".parse().unwrap();
    let mut k = converged();
    k.neighbours.retain(|n| n.ip.to_string() != "10.1.2.0");
    k.fdb.retain(|f| f.mac.to_string() != "02:00:00:00:00:03");
    k.fdb.push(FdbEntry {
        ifindex: 11,
        mac: "02:00:00:00:00:03".parse().unwrap(),
        dst: Some("198.51.100.23".parse().unwrap()),
        permanent: true,
    });
    k.neighbours.push(Neighbour {
        ifindex: 11,
        ip: "10.1.2.0".parse().unwrap(),
        mac: Some("02:00:00:00:00:03".parse().unwrap()),
        permanent: true,
    });
    // Switching on: h2 loses its tunnel entries and its route moves to the underlay in place;
    // h3 keeps everything.
    let ops = entries(&s, &k, UNDERLAY);
    assert_eq!(
        ops,
        vec![
            EntryOp::DelNeighbour {
                index: 11,
                ip: "10.1.1.0".parse().unwrap()
            },
            EntryOp::DelFdb {
                index: 11,
                mac: "02:00:00:00:00:02".parse().unwrap(),
                dst: Some("192.0.2.22".parse().unwrap())
            },
            EntryOp::SetRoute {
                dst: "10.1.1.0/24".parse().unwrap(),
                via: "192.0.2.22".parse().unwrap(),
                index: UNDERLAY
            },
        ]
    );
    assert!(
        unreachable_peers(&s, &k, UNDERLAY).is_empty(),
        "the tunnel reaches h3"
    );
    // What the firewall lets in from the underlay: h2's subnet only, not tunnelled h3's.
    let direct = direct_subnets(&s, &k, UNDERLAY);
    assert_eq!(
        direct["blue"],
        ["10.1.1.0/24".parse().unwrap()].into(),
        "{direct:?}"
    );
    // Converged with direct routing: nothing to do; switching off restores the tunnel.
    k.neighbours.retain(|n| n.ip.to_string() != "10.1.1.0");
    k.fdb.retain(|f| f.mac.to_string() != "02:00:00:00:00:02");
    let r = k
        .routes
        .iter_mut()
        .find(|r| r.dst.to_string() == "10.1.1.0/24")
        .unwrap();
    r.gateway = Some("192.0.2.22".parse().unwrap());
    r.oif = Some(UNDERLAY);
    assert_eq!(entries(&s, &k, UNDERLAY), vec![]);
    s.networks[0].direct_routing = false;
    let ops = entries(&s, &k, UNDERLAY);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.contains(&EntryOp::SetRoute {
        dst: "10.1.1.0/24".parse().unwrap(),
        via: "10.1.1.0".parse().unwrap(),
        index: 11
    }));
}

#[test]
fn an_ipv6_underlay_tunnels_to_ipv6_peers_and_reports_the_others() {
    let mut s = spec();
    s.networks[0].direct_routing = true;
    let net = &mut s.networks[0];
    net.vxlan.as_mut().unwrap().local = "2001:db8::21".parse().unwrap();
    net.peers[0].underlay_ip = "2001:db8::22".parse().unwrap();
    // h3 stays on IPv4: no tunnel can join it to this host.
    let mut k = converged();
    k.addresses.insert(UNDERLAY, BTreeSet::new());
    k.fdb.clear();
    let ops = entries(&s, &k, UNDERLAY);
    assert!(
        ops.contains(&EntryOp::SetFdb {
            index: 11,
            mac: "02:00:00:00:00:02".parse().unwrap(),
            dst: "2001:db8::22".parse().unwrap(),
        }),
        "{ops:?}"
    );
    // Direct routing has no IPv6 next hops for IPv4 workloads: h2 stays tunnelled.
    assert!(
        !ops.iter()
            .any(|o| matches!(o, EntryOp::SetRoute { index, .. } if *index == UNDERLAY)),
        "{ops:?}"
    );
    // Nothing towards h3: its neighbour, FDB entry and route go.
    assert!(ops.contains(&EntryOp::DelNeighbour {
        index: 11,
        ip: "10.1.2.0".parse().unwrap()
    }));
    assert!(
        ops.iter()
            .any(|o| matches!(o, EntryOp::DelRoute { route } if route.dst.to_string() == "10.1.2.0/24")),
        "{ops:?}"
    );
    assert!(
        !ops.iter()
            .any(|o| matches!(o, EntryOp::SetFdb { mac, .. } if mac.to_string() == "02:00:00:00:00:03")),
        "{ops:?}"
    );
    let unreachable = unreachable_peers(&s, &k, UNDERLAY);
    assert_eq!(unreachable.len(), 1, "{unreachable:?}");
    assert!(
        unreachable[0].contains(
            "peer h3 (192.0.2.23) is on an IPv4 underlay and this host (2001:db8::21) on an IPv6 one"
        ),
        "{unreachable:?}"
    );
    // The device itself: its local address is the IPv6 one; an IPv4 local is replaced.
    assert!(!links(&s, &k, UNDERLAY).is_empty(), "the IPv4 local stays");
    let vx = k.links.get_mut("ovx-1").unwrap();
    vx.kind = LinkKind::Vxlan(VxlanAttrs {
        vni: 4096,
        port: 4789,
        local: Some("2001:db8::21".parse().unwrap()),
        link: Some(UNDERLAY),
        learning: false,
    });
    assert!(
        links(&s, &k, UNDERLAY).is_empty(),
        "{:?}",
        links(&s, &k, UNDERLAY)
    );
}
