//! State machine tests: every bad input leaves the state unchanged; random operation
//! sequences never hand out an address, subnet or VNI twice and never leak one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::model::MacvlanSpec;

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn vxlan(name: &str, cidr: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        mode: Mode::Vxlan,
        cidr: net(cidr),
        host_prefix: None,
        vni: None,
        mtu: None,
        nat_egress: false,
        macvlan: None,
    }
}

fn create(s: &mut ClusterState, spec: NetworkSpec) -> Result<Response, StateError> {
    s.apply(Command::CreateNetwork { spec, now_ms: 1 }).result
}

fn register(s: &mut ClusterState, name: &str, ip: &str) -> Result<Response, StateError> {
    s.apply(Command::RegisterHost {
        instance: String::new(),
        claim_timeout_ms: 0,
        name: name.into(),
        underlay_ip: ip.parse().unwrap(),
        underlay_iface: "eth0".into(),
        underlay_mtu: 1500,
        now_ms: 1,
    })
    .result
}

fn attach(s: &mut ClusterState, network: &str, host: &str, netns: &str) -> Result<Endpoint, StateError> {
    match s
        .apply(Command::AttachEndpoint {
            network: network.into(),
            host: host.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ip: None,
            now_ms: 1,
            default_route: false,
        })
        .result?
    {
        Response::Endpoint(e) => Ok(e),
        other => panic!("unexpected {other:?}"),
    }
}

/// Asserts that `cmd` fails with `expected` and that nothing changed, revision included.
fn assert_refused(s: &mut ClusterState, cmd: Command, expected: impl Fn(&StateError) -> bool) {
    let before = s.clone();
    let reply = s.apply(cmd.clone());
    match &reply.result {
        Err(e) => assert!(expected(e), "{cmd:?} failed with unexpected error: {e}"),
        Ok(r) => panic!("{cmd:?} succeeded: {r:?}"),
    }
    assert_eq!(*s, before, "state changed by refused {cmd:?}");
    assert_eq!(reply.revision, before.revision);
}

fn two_hosts() -> ClusterState {
    let mut s = ClusterState::default();
    register(&mut s, "h1", "192.0.2.21").unwrap();
    register(&mut s, "h2", "192.0.2.22").unwrap();
    s
}

#[test]
fn network_gets_vni_and_per_host_leases() {
    let mut s = two_hosts();
    let Ok(Response::Network(n)) = create(&mut s, vxlan("blue", "10.1.0.0/16")) else {
        panic!()
    };
    assert_eq!(n.vni, Some(4096));
    assert_eq!(n.leases["h1"].subnet, net("10.1.0.0/24"));
    assert_eq!(n.leases["h2"].subnet, net("10.1.1.0/24"));
    // A host registering later gets the next subnet; re-registering keeps its lease and MAC.
    register(&mut s, "h3", "192.0.2.23").unwrap();
    assert_eq!(s.networks["blue"].leases["h3"].subnet, net("10.1.2.0/24"));
    let mac = s.hosts["h1"].vtep_mac;
    register(&mut s, "h1", "192.0.2.31").unwrap();
    assert_eq!(s.hosts["h1"].vtep_mac, mac);
    assert_eq!(
        s.hosts["h1"].underlay_ip,
        "192.0.2.31".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(s.networks["blue"].leases["h1"].subnet, net("10.1.0.0/24"));
}

#[test]
fn endpoints_skip_network_gateway_and_broadcast_and_are_released() {
    let mut s = two_hosts();
    let mut spec = vxlan("small", "10.9.0.0/24");
    spec.host_prefix = Some(29); // 8 addresses: .0 network, .1 gateway, .7 broadcast → 5 endpoints
    create(&mut s, spec).unwrap();
    let ips: Vec<Ipv4Addr> = (0..5)
        .map(|i| attach(&mut s, "small", "h1", &format!("ns{i}")).unwrap().ip)
        .collect();
    let expected: Vec<Ipv4Addr> = (2..=6).map(|o| Ipv4Addr::new(10, 9, 0, o)).collect();
    assert_eq!(ips, expected);
    let ep = s.endpoint_by_key("small", "h1", "ns0").unwrap();
    assert_eq!(ep.gateway, Ipv4Addr::new(10, 9, 0, 1));
    assert_eq!(ep.prefix_len, 29);
    assert_eq!(ep.mac.to_string(), "0a:58:0a:09:00:02");

    // Exhausted: a sixth endpoint on h1 is refused, state unchanged.
    assert_refused(
        &mut s,
        Command::AttachEndpoint {
            network: "small".into(),
            host: "h1".into(),
            netns: "ns5".into(),
            ifname: "eth0".into(),
            ip: None,
            now_ms: 1,
            default_route: false,
        },
        |e| matches!(e, StateError::AddressPoolExhausted { .. }),
    );
    // Detach frees the address; it is handed out again.
    s.apply(Command::DetachEndpoint {
        network: "small".into(),
        host: "h1".into(),
        netns: "ns2".into(),
    })
    .result
    .unwrap();
    assert_eq!(
        attach(&mut s, "small", "h1", "ns5").unwrap().ip,
        Ipv4Addr::new(10, 9, 0, 4)
    );
}

#[test]
fn freed_address_is_not_reused_first() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let a = attach(&mut s, "blue", "h1", "a").unwrap().ip;
    s.apply(Command::DetachEndpoint {
        network: "blue".into(),
        host: "h1".into(),
        netns: "a".into(),
    })
    .result
    .unwrap();
    let b = attach(&mut s, "blue", "h1", "b").unwrap().ip;
    assert_ne!(
        a, b,
        "round-robin allocation must not hand a just-freed address out first"
    );
}

#[test]
fn bad_network_specs_are_refused_without_change() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let refuse = |s: &mut ClusterState, spec: NetworkSpec, f: fn(&StateError) -> bool| {
        assert_refused(s, Command::CreateNetwork { spec, now_ms: 2 }, f)
    };
    refuse(&mut s, vxlan("blue", "10.2.0.0/16"), |e| {
        matches!(e, StateError::DuplicateNetwork(_))
    });
    refuse(&mut s, vxlan("red", "10.1.128.0/17"), |e| {
        matches!(e, StateError::Overlap { .. })
    });
    refuse(&mut s, vxlan("red", "10.0.0.0/8"), |e| {
        matches!(e, StateError::Overlap { .. })
    });
    refuse(&mut s, vxlan("red", "10.2.0.1/16"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    let mut spec = vxlan("red", "10.2.0.0/16");
    spec.host_prefix = Some(16);
    refuse(
        &mut s,
        spec.clone(),
        |e| matches!(e, StateError::Invalid { what, .. } if what == "host prefix"),
    );
    spec.host_prefix = Some(12);
    refuse(
        &mut s,
        spec.clone(),
        |e| matches!(e, StateError::Invalid { what, .. } if what == "host prefix"),
    );
    spec.host_prefix = Some(31);
    refuse(
        &mut s,
        spec,
        |e| matches!(e, StateError::Invalid { what, .. } if what == "host prefix"),
    );
    let mut spec = vxlan("red", "10.2.0.0/16");
    spec.vni = Some(4096);
    refuse(&mut s, spec.clone(), |e| {
        matches!(e, StateError::VniInUse { vni: 4096, .. })
    });
    spec.vni = Some(0);
    refuse(
        &mut s,
        spec.clone(),
        |e| matches!(e, StateError::Invalid { what, .. } if what == "VNI"),
    );
    spec.vni = Some(16_777_216);
    refuse(
        &mut s,
        spec,
        |e| matches!(e, StateError::Invalid { what, .. } if what == "VNI"),
    );
    refuse(&mut s, vxlan("bad name!", "10.2.0.0/16"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    refuse(&mut s, vxlan("", "10.2.0.0/16"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    let mut spec = vxlan("red", "10.2.0.0/16");
    spec.mtu = Some(100);
    refuse(
        &mut s,
        spec,
        |e| matches!(e, StateError::Invalid { what, .. } if what == "MTU"),
    );
    let mut spec = vxlan("red", "10.2.0.0/16");
    spec.mode = Mode::Macvlan;
    refuse(&mut s, spec, |e| matches!(e, StateError::Invalid { .. }));
}

#[test]
fn subnet_pool_exhaustion_is_reported_at_attach() {
    let mut s = ClusterState::default();
    let mut spec = vxlan("tiny", "10.3.0.0/24");
    spec.host_prefix = Some(26); // 4 host subnets
    create(&mut s, spec).unwrap();
    for i in 1..=5 {
        register(&mut s, &format!("h{i}"), &format!("192.0.2.{}", 20 + i)).unwrap();
    }
    assert_eq!(s.networks["tiny"].leases.len(), 4);
    assert!(!s.networks["tiny"].leases.contains_key("h5"));
    assert_refused(
        &mut s,
        Command::AttachEndpoint {
            network: "tiny".into(),
            host: "h5".into(),
            netns: "w".into(),
            ifname: "eth0".into(),
            ip: None,
            now_ms: 1,
            default_route: false,
        },
        |e| matches!(e, StateError::SubnetPoolExhausted { capacity: 4, .. }),
    );
    // Removing a host frees its subnet; h5 then gets one on attach.
    s.apply(Command::RemoveHost { name: "h2".into() }).result.unwrap();
    let ep = attach(&mut s, "tiny", "h5", "w").unwrap();
    assert_eq!(s.networks["tiny"].leases["h5"].subnet, net("10.3.0.64/26"));
    assert!(net("10.3.0.64/26").contains(ep.ip));
}

#[test]
fn unknown_names_and_duplicates_are_refused() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    attach(&mut s, "blue", "h1", "w1").unwrap();
    let att = |network: &str, host: &str, netns: &str, ifname: &str| Command::AttachEndpoint {
        network: network.into(),
        host: host.into(),
        netns: netns.into(),
        ifname: ifname.into(),
        ip: None,
        now_ms: 1,
        default_route: false,
    };
    assert_refused(&mut s, att("nope", "h1", "w2", "eth0"), |e| {
        matches!(e, StateError::UnknownNetwork(_))
    });
    assert_refused(&mut s, att("blue", "h9", "w2", "eth0"), |e| {
        matches!(e, StateError::UnknownHost(_))
    });
    assert_refused(&mut s, att("blue", "h1", "w1", "eth1"), |e| {
        matches!(e, StateError::EndpointExists { .. })
    });
    assert_refused(&mut s, att("blue", "h1", "../x", "eth0"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    assert_refused(&mut s, att("blue", "h1", "/run/netns/../../etc", "eth0"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    assert_refused(&mut s, att("blue", "h1", "w2", "this-name-is-too-long"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    create(&mut s, vxlan("red", "10.2.0.0/16")).unwrap();
    assert_refused(&mut s, att("red", "h1", "w1", "eth0"), |e| {
        matches!(e, StateError::IfnameInUse { .. })
    });
    let ip = |ip: &str| Command::AttachEndpoint {
        network: "blue".into(),
        host: "h1".into(),
        netns: "w9".into(),
        ifname: "eth0".into(),
        ip: Some(ip.parse().unwrap()),
        now_ms: 1,
        default_route: false,
    };
    let taken = s.endpoint_by_key("blue", "h1", "w1").unwrap().ip.to_string();
    assert_refused(&mut s, ip(&taken), |e| {
        matches!(e, StateError::AddressInUse { .. })
    });
    assert_refused(&mut s, ip("10.1.0.1"), |e| {
        matches!(e, StateError::AddressNotAllowed { .. })
    });
    assert_refused(&mut s, ip("10.1.1.5"), |e| {
        matches!(e, StateError::AddressNotAllowed { .. })
    });
    assert_refused(
        &mut s,
        Command::DetachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "zz".into(),
        },
        |e| matches!(e, StateError::UnknownEndpoint { .. }),
    );
    assert_refused(&mut s, Command::RemoveHost { name: "h9".into() }, |e| {
        matches!(e, StateError::UnknownHost(_))
    });
    assert_refused(
        &mut s,
        Command::Heartbeat {
            instance: String::new(),
            name: "h9".into(),
            now_ms: 5,
        },
        |e| matches!(e, StateError::UnknownHost(_)),
    );
    assert_refused(
        &mut s,
        Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: "h3".into(),
            underlay_ip: "192.0.2.21".parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        },
        |e| matches!(e, StateError::Invalid { .. }),
    );
}

#[test]
fn update_network_changes_only_what_is_safe() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let r = s.apply(Command::UpdateNetwork {
        name: "blue".into(),
        nat_egress: Some(true),
        mtu: Some(MtuSetting::Fixed(1400)),
    });
    assert!(r.result.is_ok());
    assert!(s.networks["blue"].nat_egress);
    assert_eq!(s.networks["blue"].mtu, Some(1400));
    s.apply(Command::UpdateNetwork {
        name: "blue".into(),
        nat_egress: None,
        mtu: Some(MtuSetting::Auto),
    })
    .result
    .unwrap();
    assert_eq!(s.networks["blue"].mtu, None);
    assert_refused(
        &mut s,
        Command::UpdateNetwork {
            name: "nope".into(),
            nat_egress: None,
            mtu: None,
        },
        |e| matches!(e, StateError::UnknownNetwork(_)),
    );
    assert_refused(
        &mut s,
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: None,
            mtu: Some(MtuSetting::Fixed(10)),
        },
        |e| matches!(e, StateError::Invalid { .. }),
    );
    let mut nat = vxlan("local", "10.2.0.0/16");
    nat.mode = Mode::Nat;
    create(&mut s, nat).unwrap();
    assert_refused(
        &mut s,
        Command::UpdateNetwork {
            name: "local".into(),
            nat_egress: Some(false),
            mtu: None,
        },
        |e| matches!(e, StateError::Invalid { .. }),
    );
}

#[test]
fn network_with_endpoints_needs_force() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    attach(&mut s, "blue", "h1", "w1").unwrap();
    assert_refused(
        &mut s,
        Command::DeleteNetwork {
            name: "blue".into(),
            force: false,
        },
        |e| matches!(e, StateError::NetworkHasEndpoints { count: 1, .. }),
    );
    assert_refused(
        &mut s,
        Command::DeleteNetwork {
            name: "nope".into(),
            force: true,
        },
        |e| matches!(e, StateError::UnknownNetwork(_)),
    );
    let r = s.apply(Command::DeleteNetwork {
        name: "blue".into(),
        force: true,
    });
    assert_eq!(r.result, Ok(Response::NetworkDeleted { removed_endpoints: 1 }));
    assert!(s.endpoints.is_empty());
    // The CIDR and VNI are free again.
    let Ok(Response::Network(n)) = create(&mut s, vxlan("blue2", "10.1.0.0/16")) else {
        panic!()
    };
    assert_eq!(n.vni, Some(4096));
}

#[test]
fn heartbeats_do_not_bump_revision_and_reports_only_touch_own_endpoints() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let ep = attach(&mut s, "blue", "h1", "w1").unwrap();
    let rev = s.revision;
    s.apply(Command::Heartbeat {
        instance: String::new(),
        name: "h1".into(),
        now_ms: 99,
    })
    .result
    .unwrap();
    assert_eq!(s.revision, rev);
    assert_eq!(s.hosts["h1"].last_seen_ms, 99);
    let r = s.apply(Command::ReportEndpoints {
        host: "h2".into(),
        statuses: vec![(ep.id, EndpointStatus::Ready)],
    });
    assert_eq!(r.result, Ok(Response::StatusRecorded { changed: 0 }));
    let r = s.apply(Command::ReportEndpoints {
        host: "h1".into(),
        statuses: vec![(ep.id, EndpointStatus::Ready)],
    });
    assert_eq!(r.result, Ok(Response::StatusRecorded { changed: 1 }));
    assert_eq!(s.endpoints[&ep.id].status, EndpointStatus::Ready);
}

#[test]
fn macvlan_allocates_cluster_wide_and_enforces_passthru() {
    let mut s = two_hosts();
    let spec = |name: &str, mode: MacvlanMode| NetworkSpec {
        name: name.into(),
        mode: Mode::Macvlan,
        cidr: net("198.51.100.0/24"),
        host_prefix: None,
        vni: None,
        mtu: None,
        nat_egress: false,
        macvlan: Some(MacvlanSpec {
            parent: "eth0".into(),
            gateway: "198.51.100.1".parse().unwrap(),
            ip_range: net("198.51.100.0/30"),
            mode,
        }),
    };
    create(&mut s, spec("lan", MacvlanMode::Bridge)).unwrap();
    // Range .0/30 clipped to host addresses and minus the gateway: only .2 and .3.
    assert_eq!(ClusterState::capacity(&s.networks["lan"]), 2);
    let a = attach(&mut s, "lan", "h1", "a").unwrap();
    let b = attach(&mut s, "lan", "h2", "b").unwrap();
    assert_eq!(
        (a.ip.to_string().as_str(), b.ip.to_string().as_str()),
        ("198.51.100.2", "198.51.100.3")
    );
    assert_eq!(a.prefix_len, 24);
    assert!(matches!(
        attach(&mut s, "lan", "h1", "c"),
        Err(StateError::AddressPoolExhausted { capacity: 2, .. })
    ));
    s.apply(Command::DeleteNetwork {
        name: "lan".into(),
        force: true,
    })
    .result
    .unwrap();

    let mut p = spec("pt", MacvlanMode::Passthru);
    p.macvlan.as_mut().unwrap().ip_range = net("198.51.100.0/24");
    create(&mut s, p).unwrap();
    attach(&mut s, "pt", "h1", "a").unwrap();
    assert!(matches!(
        attach(&mut s, "pt", "h1", "b"),
        Err(StateError::PassthruTaken { .. })
    ));
    attach(&mut s, "pt", "h2", "b").unwrap();
}

#[test]
fn snapshot_round_trip_rebuilds_indices() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    attach(&mut s, "blue", "h1", "w1").unwrap();
    let json = serde_json::to_vec(&s).unwrap();
    let mut restored = ClusterState::from_snapshot_json(&json).unwrap();
    assert_eq!(restored, s);
    assert!(restored.endpoint_by_key("blue", "h1", "w1").is_some());
    // The indices work: a duplicate is caught and a new address differs.
    assert!(matches!(
        attach(&mut restored, "blue", "h1", "w1"),
        Err(StateError::EndpointExists { .. })
    ));
    let ep2 = attach(&mut restored, "blue", "h1", "w2").unwrap();
    assert_ne!(ep2.ip, s.endpoint_by_key("blue", "h1", "w1").unwrap().ip);
}

#[test]
fn every_command_survives_the_log_encoding() {
    // Commands travel through the Raft log as JSON; what is applied must be what was proposed.
    let commands = vec![
        Command::CreateNetwork {
            spec: vxlan("blue", "10.1.0.0/16"),
            now_ms: 5,
        },
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: Some(false),
            mtu: Some(MtuSetting::Auto),
        },
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: None,
            mtu: Some(MtuSetting::Fixed(1400)),
        },
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: None,
            mtu: None,
        },
        Command::DeleteNetwork {
            name: "blue".into(),
            force: true,
        },
        Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: "h1".into(),
            underlay_ip: "192.0.2.21".parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        },
        Command::Heartbeat {
            instance: String::new(),
            name: "h1".into(),
            now_ms: 2,
        },
        Command::RemoveHost { name: "h1".into() },
        Command::AttachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w1".into(),
            ifname: "eth0".into(),
            ip: Some("10.1.0.9".parse().unwrap()),
            now_ms: 3,
            default_route: false,
        },
        Command::AttachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w1".into(),
            ifname: "eth0".into(),
            ip: None,
            now_ms: 3,
            default_route: false,
        },
        Command::DetachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w1".into(),
        },
        Command::AttachEndpoint {
            network: "red".into(),
            host: "h1".into(),
            netns: "w1".into(),
            ifname: "eth1".into(),
            ip: None,
            now_ms: 3,
            default_route: true,
        },
        Command::ReleaseEndpoint {
            host: "h1".into(),
            id: 7,
        },
        Command::ReportEndpoints {
            host: "h1".into(),
            statuses: vec![
                (1, EndpointStatus::Ready),
                (2, EndpointStatus::Failed("gone".into())),
                (3, EndpointStatus::Gone("namespace w1 is gone (not found)".into())),
            ],
        },
        Command::Batch(vec![
            Command::RemoveHost { name: "h1".into() },
            Command::Heartbeat {
                instance: String::new(),
                name: "h2".into(),
                now_ms: 4,
            },
        ]),
    ];
    for cmd in commands {
        let json = serde_json::to_vec(&cmd).unwrap();
        let back: Command = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, cmd, "{}", String::from_utf8_lossy(&json));
    }
}

// ---------------------------------------------------------------- property tests

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Register(u8),
    /// Re-register with another underlay address and MTU (a host that moved).
    Move(u8, u8),
    RemoveHost(u8),
    Create(u8, u8, Option<u8>),
    Delete(u8, bool),
    Attach(u8, u8, u8),
    /// Attach with `--default-route`.
    AttachDefault(u8, u8, u8),
    Detach(u8, u8, u8),
    /// The agent of host .0 reports endpoint id .1 gone.
    Gone(u8, u8),
    /// The agent of host .0 releases endpoint id .1.
    Release(u8, u8),
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Register),
        (0u8..6, 0u8..2).prop_map(|(h, v)| Op::Move(h, v)),
        (0u8..6).prop_map(Op::RemoveHost),
        (0u8..4, 0u8..6, proptest::option::of(26u8..29)).prop_map(|(n, c, p)| Op::Create(n, c, p)),
        (0u8..4, any::<bool>()).prop_map(|(n, f)| Op::Delete(n, f)),
        (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, w)| Op::Attach(n, h, w)),
        (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, w)| Op::AttachDefault(n, h, w)),
        (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, w)| Op::Detach(n, h, w)),
        (0u8..6, 0u8..40).prop_map(|(h, id)| Op::Gone(h, id)),
        (0u8..6, 0u8..40).prop_map(|(h, id)| Op::Release(h, id)),
    ]
}

pub(crate) fn to_command(op: &Op) -> Command {
    // Small CIDRs, some overlapping, so exhaustion and overlap are exercised often.
    const CIDRS: [&str; 6] = [
        "10.0.0.0/24",
        "10.0.1.0/24",
        "10.0.0.0/23",
        "10.0.2.0/25",
        "10.0.3.0/24",
        "10.0.2.0/24",
    ];
    match *op {
        Op::Register(h) => Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: format!("h{h}"),
            underlay_ip: Ipv4Addr::new(192, 0, 2, 10 + h),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        },
        Op::Move(h, v) => Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: format!("h{h}"),
            underlay_ip: Ipv4Addr::new(198, 51, 100, h * 2 + v),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1400 + 50 * v as u32,
            now_ms: 2,
        },
        Op::RemoveHost(h) => Command::RemoveHost {
            name: format!("h{h}"),
        },
        Op::Create(n, c, p) => Command::CreateNetwork {
            spec: NetworkSpec {
                host_prefix: p,
                ..vxlan(&format!("n{n}"), CIDRS[c as usize])
            },
            now_ms: 1,
        },
        Op::Delete(n, force) => Command::DeleteNetwork {
            name: format!("n{n}"),
            force,
        },
        Op::Attach(n, h, w) | Op::AttachDefault(n, h, w) => Command::AttachEndpoint {
            network: format!("n{n}"),
            host: format!("h{h}"),
            netns: format!("w{w}"),
            ifname: format!("e{n}"),
            ip: None,
            now_ms: 1,
            default_route: matches!(op, Op::AttachDefault(..)),
        },
        Op::Gone(h, id) => Command::ReportEndpoints {
            host: format!("h{h}"),
            statuses: vec![(u64::from(id), EndpointStatus::Gone("namespace gone".into()))],
        },
        Op::Release(h, id) => Command::ReleaseEndpoint {
            host: format!("h{h}"),
            id: u64::from(id),
        },
        Op::Detach(n, h, w) => Command::DetachEndpoint {
            network: format!("n{n}"),
            host: format!("h{h}"),
            netns: format!("w{w}"),
        },
    }
}

/// Everything that must hold after any sequence of commands.
fn check_invariants(s: &ClusterState) {
    let mut ips = BTreeSet::new();
    let mut vnis = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for ep in s.endpoints.values() {
        assert!(ips.insert(ep.ip), "address {} handed out twice", ep.ip);
        assert!(macs.insert(ep.mac), "MAC {} handed out twice", ep.mac);
        assert!(
            keys.insert((&ep.network, &ep.host, &ep.netns)),
            "duplicate endpoint key"
        );
        let n = s
            .networks
            .get(&ep.network)
            .expect("endpoint of a deleted network");
        assert!(s.hosts.contains_key(&ep.host), "endpoint of a removed host");
        let lease = n.leases.get(&ep.host).expect("endpoint without a lease");
        assert!(lease.subnet.contains(ep.ip), "endpoint outside its host subnet");
        assert_ne!(ep.ip, ipam::subnet_gateway(lease.subnet));
        assert_ne!(ep.ip, lease.subnet.network());
        assert_ne!(ep.ip, lease.subnet.broadcast());
    }
    let mut subnets: Vec<Ipv4Network> = Vec::new();
    for n in s.networks.values() {
        assert!(vnis.insert(n.vni), "VNI {:?} used twice", n.vni);
        for (host, lease) in &n.leases {
            assert!(s.hosts.contains_key(host), "lease of a removed host");
            assert!(n.cidr.contains(lease.subnet.network()) && lease.subnet.prefix() == n.host_prefix);
            assert!(
                !subnets.iter().any(|o| o.overlaps(lease.subnet)),
                "subnet {} leased twice",
                lease.subnet
            );
            subnets.push(lease.subnet);
        }
    }
    // Every namespace with endpoints has exactly one default route.
    let mut holders: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for ep in s.endpoints.values() {
        *holders.entry((&ep.host, &ep.netns)).or_default() += usize::from(ep.default_route);
    }
    for ((host, netns), n) in holders {
        assert_eq!(n, 1, "namespace {netns} on {host} has {n} default routes");
    }
    // Derived indices agree with the records (no leak: every index entry is a live endpoint).
    let indexed: usize = s.addresses.values().map(|a| a.len()).sum();
    assert_eq!(indexed, s.endpoints.len(), "address index leaks");
    assert_eq!(s.by_key.len(), s.endpoints.len(), "key index leaks");
    assert_eq!(s.by_ifname.len(), s.endpoints.len(), "interface-name index leaks");
    let mut rebuilt = s.clone();
    rebuilt.rebuild_indices();
    assert_eq!(
        rebuilt.addresses.iter().filter(|(_, a)| !a.is_empty()).count(),
        s.addresses.iter().filter(|(_, a)| !a.is_empty()).count()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_allocations_unique(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = ClusterState::default();
        for op in &ops {
            let before = s.clone();
            let reply = s.apply(to_command(op));
            if reply.result.is_err() {
                prop_assert_eq!(&s, &before, "refused {:?} changed the state", op);
            }
            check_invariants(&s);
        }
        // Replaying the same log on another replica gives the same state.
        let mut replica = ClusterState::default();
        for op in &ops {
            replica.apply(to_command(op));
        }
        prop_assert_eq!(&replica, &s);
    }

    #[test]
    fn a_batch_applies_exactly_like_its_commands_one_by_one(
        ops in proptest::collection::vec(op(), 1..80),
        size in 1usize..12,
    ) {
        let mut single = ClusterState::default();
        let one_by_one: Vec<Reply> = ops.iter().map(|op| single.apply(to_command(op))).collect();
        let mut batched = ClusterState::default();
        let mut replies = Vec::new();
        for chunk in ops.chunks(size) {
            let reply = batched.apply(Command::Batch(chunk.iter().map(to_command).collect()));
            prop_assert_eq!(reply.revision, batched.revision);
            match reply.result {
                Ok(Response::Batch(r)) => replies.extend(r),
                other => prop_assert!(false, "a batch answered {:?}", other),
            }
            check_invariants(&batched);
        }
        prop_assert_eq!(&replies, &one_by_one);
        prop_assert_eq!(&batched, &single);
    }

    #[test]
    fn detach_all_then_reallocate_never_leaks(n in 1usize..40) {
        let mut s = two_hosts();
        let mut spec = vxlan("blue", "10.1.0.0/24");
        spec.host_prefix = Some(26); // 61 endpoint addresses per host
        create(&mut s, spec).unwrap();
        for round in 0..3 {
            let mut got = BTreeMap::new();
            for i in 0..n {
                let ep = attach(&mut s, "blue", "h1", &format!("r{round}-{i}")).unwrap();
                prop_assert!(got.insert(ep.ip, i).is_none());
            }
            for i in 0..n {
                s.apply(Command::DetachEndpoint {
                    network: "blue".into(), host: "h1".into(), netns: format!("r{round}-{i}"),
                }).result.unwrap();
            }
            prop_assert!(s.endpoints.is_empty());
            prop_assert!(s.addresses["blue"].is_empty());
        }
        // The whole pool is still available after the churn.
        for i in 0..61 {
            attach(&mut s, "blue", "h1", &format!("full-{i}")).unwrap();
        }
        let exhausted = matches!(attach(&mut s, "blue", "h1", "one-more"), Err(StateError::AddressPoolExhausted { .. }));
        prop_assert!(exhausted, "the 62nd endpoint must exhaust the /26");
    }
}

// ---------------------------------------------------------------- default routes, gone endpoints

fn attach_to(
    s: &mut ClusterState,
    network: &str,
    netns: &str,
    ifname: &str,
    default_route: bool,
) -> Result<Endpoint, StateError> {
    match s
        .apply(Command::AttachEndpoint {
            network: network.into(),
            host: "h1".into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ip: None,
            now_ms: 1,
            default_route,
        })
        .result?
    {
        Response::Endpoint(e) => Ok(e),
        other => panic!("unexpected {other:?}"),
    }
}

fn default_of(s: &ClusterState, netns: &str) -> Vec<String> {
    s.endpoints
        .values()
        .filter(|e| e.host == "h1" && e.netns == netns && e.default_route)
        .map(|e| e.network.clone())
        .collect()
}

fn three_networks() -> ClusterState {
    let mut s = two_hosts();
    for (name, cidr) in [
        ("blue", "10.1.0.0/16"),
        ("red", "10.2.0.0/16"),
        ("green", "10.3.0.0/16"),
    ] {
        create(&mut s, vxlan(name, cidr)).unwrap();
    }
    s
}

#[test]
fn the_first_endpoint_of_a_namespace_holds_its_default_route() {
    let mut s = three_networks();
    assert!(
        attach_to(&mut s, "blue", "w", "eth0", false)
            .unwrap()
            .default_route
    );
    assert!(
        !attach_to(&mut s, "red", "w", "eth1", false)
            .unwrap()
            .default_route
    );
    // Another namespace has its own.
    assert!(
        attach_to(&mut s, "red", "v", "eth0", false)
            .unwrap()
            .default_route
    );
    assert_eq!(default_of(&s, "w"), ["blue"]);
    // --default-route takes it over; the previous holder is changed in the same command.
    let rev = s.revision;
    assert!(
        attach_to(&mut s, "green", "w", "eth2", true)
            .unwrap()
            .default_route
    );
    assert_eq!(s.revision, rev + 1);
    assert_eq!(default_of(&s, "w"), ["green"]);
    assert_eq!(default_of(&s, "v"), ["red"], "other namespaces keep theirs");
}

#[test]
fn the_oldest_endpoint_takes_over_when_the_holder_goes() {
    let mut s = three_networks();
    attach_to(&mut s, "blue", "w", "eth0", false).unwrap();
    attach_to(&mut s, "red", "w", "eth1", false).unwrap();
    attach_to(&mut s, "green", "w", "eth2", true).unwrap();
    let detach = |s: &mut ClusterState, network: &str| {
        s.apply(Command::DetachEndpoint {
            network: network.into(),
            host: "h1".into(),
            netns: "w".into(),
        })
        .result
        .unwrap();
    };
    detach(&mut s, "green");
    assert_eq!(default_of(&s, "w"), ["blue"], "blue is the oldest left");
    // Removing a non-holder moves nothing.
    attach_to(&mut s, "green", "w", "eth2", false).unwrap();
    detach(&mut s, "red");
    assert_eq!(default_of(&s, "w"), ["blue"]);
    // A network deleted with --force hands the route over too.
    s.apply(Command::DeleteNetwork {
        name: "blue".into(),
        force: true,
    })
    .result
    .unwrap();
    assert_eq!(default_of(&s, "w"), ["green"]);
    detach(&mut s, "green");
    assert!(default_of(&s, "w").is_empty() && s.endpoints.is_empty());
}

#[test]
fn a_moved_default_route_reaches_the_agent_as_an_endpoint_change() {
    use crate::desired::Model;
    let mut s = three_networks();
    let blue = attach_to(&mut s, "blue", "w", "eth0", false).unwrap();
    let before = Model::build(&s, None);
    attach_to(&mut s, "red", "w", "eth1", true).unwrap();
    let after = Model::build(&s, Some(&before));
    let full = after.full("h1").unwrap();
    let flags: Vec<(String, bool)> = full
        .networks
        .iter()
        .flat_map(|n| {
            n.endpoints
                .iter()
                .map(move |e| (n.name.clone(), e.default_route == Some(true)))
        })
        .collect();
    assert_eq!(flags, [("blue".to_string(), false), ("red".to_string(), true)]);
    let Some(overlay_proto::v1::WatchEvent {
        event: Some(overlay_proto::v1::watch_event::Event::Delta(d)),
        ..
    }) = after.delta(&before, "h1")
    else {
        panic!("expected a delta")
    };
    let blue_change = d
        .endpoint_changes
        .iter()
        .find(|c| c.network == "blue")
        .expect("blue's endpoint list changed");
    assert_eq!(blue_change.upsert.len(), 1);
    assert_eq!(blue_change.upsert[0].id, blue.id);
    assert_eq!(blue_change.upsert[0].default_route, Some(false));
}

#[test]
fn a_snapshot_from_before_default_routes_gives_each_namespace_one() {
    let mut s = three_networks();
    attach_to(&mut s, "blue", "w", "eth0", false).unwrap();
    attach_to(&mut s, "red", "w", "eth1", false).unwrap();
    attach_to(&mut s, "green", "v", "eth0", false).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
    for ep in json["endpoints"].as_object_mut().unwrap().values_mut() {
        ep.as_object_mut().unwrap().remove("default_route");
    }
    let old = ClusterState::from_snapshot_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(
        old, s,
        "the oldest endpoint of each namespace holds it, as apply decided"
    );
}

#[test]
fn only_the_host_of_a_gone_endpoint_releases_it() {
    let mut s = three_networks();
    let ep = attach_to(&mut s, "blue", "w", "eth0", false).unwrap();
    let release = |host: &str, id: u64| Command::ReleaseEndpoint {
        host: host.into(),
        id,
    };
    assert_refused(&mut s, release("h1", 999), |e| {
        matches!(e, StateError::UnknownEndpointId(999))
    });
    assert_refused(&mut s, release("h2", ep.id), |e| {
        matches!(e, StateError::EndpointOfOtherHost { .. }) && e.kind() == ErrorKind::PermissionDenied
    });
    assert_refused(
        &mut s,
        release("h1", ep.id),
        |e| matches!(e, StateError::EndpointNotGone { state, .. } if state == "pending"),
    );
    // Another host's report of it is ignored; it stays unreleasable.
    s.apply(Command::ReportEndpoints {
        host: "h2".into(),
        statuses: vec![(ep.id, EndpointStatus::Gone("namespace w is gone".into()))],
    });
    assert_refused(&mut s, release("h1", ep.id), |e| {
        matches!(e, StateError::EndpointNotGone { .. })
    });
    s.apply(Command::ReportEndpoints {
        host: "h1".into(),
        statuses: vec![(ep.id, EndpointStatus::Gone("namespace w is gone".into()))],
    });
    assert_refused(&mut s, release("h2", ep.id), |e| {
        matches!(e, StateError::EndpointOfOtherHost { .. })
    });
    let Ok(Response::EndpointDetached(released)) = s.apply(release("h1", ep.id)).result else {
        panic!("release refused")
    };
    assert_eq!(released.ip, ep.ip);
    assert!(s.endpoints.is_empty());
    // The address is free again: the next namespace may ask for it.
    let again = s
        .apply(Command::AttachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w2".into(),
            ifname: "eth0".into(),
            ip: Some(ep.ip),
            now_ms: 2,
            default_route: false,
        })
        .result;
    assert!(again.is_ok(), "{again:?}");
}

fn claim(name: &str, ip: &str, instance: &str, now_ms: i64) -> Command {
    Command::RegisterHost {
        name: name.into(),
        underlay_ip: ip.parse().unwrap(),
        underlay_iface: "eth0".into(),
        underlay_mtu: 1500,
        now_ms,
        instance: instance.into(),
        claim_timeout_ms: 60_000,
    }
}

#[test]
fn a_host_name_is_held_by_one_instance_until_it_falls_silent() {
    const REAL: &str = "aaaaaaaaaaaaaaaa1111111111111111";
    const OTHER: &str = "bbbbbbbbbbbbbbbb2222222222222222";
    let mut s = ClusterState::default();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    s.apply(claim("h1", "192.0.2.21", REAL, 1_000)).result.unwrap();
    let lease = s.networks["blue"].leases["h1"].clone();
    // The holder re-registers freely (restart, new address) and heartbeats.
    s.apply(claim("h1", "192.0.2.31", REAL, 2_000)).result.unwrap();
    let hb = |instance: &str, now_ms| Command::Heartbeat {
        name: "h1".into(),
        now_ms,
        instance: instance.into(),
    };
    s.apply(hb(REAL, 10_000)).result.unwrap();
    // Another instance is refused while the holder was seen within the timeout, with what
    // an operator needs: who holds it, from where, since when, and the ways out.
    assert_refused(&mut s, claim("h1", "192.0.2.41", OTHER, 69_999), |e| {
        let msg = e.to_string();
        matches!(e, StateError::HostClaimed { .. })
            && msg.contains("instance aaaaaaaa,")
            && !msg.contains(REAL)
            && msg.contains("192.0.2.31")
            && msg.contains("last seen 59s ago")
            && msg.contains("silent for 60s")
            && msg.contains("host rm h1 --force")
    });
    assert_refused(&mut s, hb(OTHER, 20_000), |e| {
        matches!(e, StateError::HostClaimed { .. })
    });
    assert_refused(&mut s, claim("h1", "192.0.2.41", "", 20_000), |e| {
        matches!(e, StateError::HostClaimed { .. })
    });
    assert_eq!(s.hosts["h1"].underlay_ip.to_string(), "192.0.2.31");
    assert!(s.holder("h1", OTHER, 20_000, 60_000).is_err());
    assert!(s.holder("h1", REAL, 20_000, 60_000).is_ok());

    // Silent for the timeout: the newcomer takes the name over, keeping MAC and leases.
    let mac = s.hosts["h1"].vtep_mac;
    s.apply(claim("h1", "192.0.2.41", OTHER, 70_000)).result.unwrap();
    let h1 = &s.hosts["h1"];
    assert_eq!((h1.claimant.as_str(), h1.vtep_mac), (OTHER, mac));
    assert_eq!(s.networks["blue"].leases["h1"], lease);
    // ... and now the old one is the stranger.
    assert_refused(&mut s, hb(REAL, 70_001), |e| {
        matches!(e, StateError::HostClaimed { .. })
    });

    // A removed host is free for anyone.
    s.apply(Command::RemoveHost { name: "h1".into() }).result.unwrap();
    s.apply(claim("h1", "192.0.2.21", REAL, 70_002)).result.unwrap();
    assert_eq!(s.hosts["h1"].claimant, REAL);

    // A record without a claimant (a client without an instance id) is claimed by the first.
    register(&mut s, "h2", "192.0.2.22").unwrap();
    s.apply(claim("h2", "192.0.2.22", OTHER, 70_003)).result.unwrap();
    assert_eq!(s.hosts["h2"].claimant, OTHER);

    // Replicated as part of the state: a snapshot keeps who holds what.
    let json = serde_json::to_vec(&s).unwrap();
    let back = ClusterState::from_snapshot_json(&json).unwrap();
    assert_eq!(back.hosts["h2"].claimant, OTHER);
}
