//! State machine tests: every bad input leaves the state unchanged; random operation
//! sequences never record an address twice, never lease a subnet or VNI twice and never leak
//! one; a host's reports are checked against its own lease.

use std::collections::BTreeSet;

use proptest::prelude::*;

use ipnetwork::Ipv4Network;

use super::*;
use crate::ipam;
use crate::model::{
    EndpointStatus, HostEndpoint, MacvlanMode, MacvlanSpec, Mode, NetworkSpec, PublishedPort,
};

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn vxlan(name: &str, cidr: &str) -> NetworkSpec {
    NetworkSpec {
        cidr6: None,
        host_prefix6: None,
        name: name.into(),
        mode: Mode::Vxlan,
        cidr: net(cidr),
        host_prefix: None,
        vni: None,
        mtu: None,
        nat_egress: false,
        direct_routing: false,
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

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// An endpoint as `host`'s agent reports it.
fn held(key: &str, network: &str, address: &str) -> HostEndpoint {
    HostEndpoint {
        key: key.into(),
        host_id: 1,
        network: network.into(),
        netns: format!("/run/netns/{}", key.replace('/', "-")),
        ifname: "eth0".into(),
        ip: ip(address),
        default_route: true,
        owner: "cni".into(),
        names: vec![],
        ports: vec![],
        status: EndpointStatus::Ready,
    }
}

fn sync(s: &mut ClusterState, host: &str, full: bool, upsert: Vec<HostEndpoint>, remove: &[&str]) -> Reply {
    s.apply(Command::SyncEndpoints {
        host: host.into(),
        full,
        upsert,
        remove: remove.iter().map(|k| k.to_string()).collect(),
        failed: vec![],
        now_ms: 5,
    })
}

/// Reports one endpoint; the refusal reason, if refused.
fn report(s: &mut ClusterState, host: &str, e: HostEndpoint) -> Result<(), String> {
    match sync(s, host, false, vec![e], &[]).result {
        Ok(Response::Synced { refused, .. }) if refused.is_empty() => Ok(()),
        Ok(Response::Synced { mut refused, .. }) => Err(refused.remove(0).1),
        other => panic!("unexpected {other:?}"),
    }
}

fn request(s: &mut ClusterState, network: &str, host: &str, netns: &str) -> Result<Endpoint, StateError> {
    match s
        .apply(Command::RequestEndpoint {
            network: network.into(),
            host: host.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ip: None,
            default_route: false,
            names: vec![],
            ports: vec![],
            now_ms: 1,
        })
        .result?
    {
        Response::Endpoint(e) => Ok(e),
        other => panic!("unexpected {other:?}"),
    }
}

fn macvlan(name: &str, mode: MacvlanMode, range: &str) -> NetworkSpec {
    NetworkSpec {
        cidr6: None,
        host_prefix6: None,
        name: name.into(),
        mode: Mode::Macvlan,
        cidr: net("198.51.100.0/24"),
        host_prefix: None,
        vni: None,
        mtu: None,
        nat_egress: false,
        direct_routing: false,
        macvlan: Some(MacvlanSpec {
            parent: "eth0".into(),
            gateway: "198.51.100.1".parse().unwrap(),
            ip_range: net(range),
            mode,
        }),
    }
}

fn allocate(s: &mut ClusterState, network: &str, host: &str, key: &str) -> Result<Endpoint, StateError> {
    match s
        .apply(Command::AllocateAddress {
            host: host.into(),
            endpoint: HostEndpoint {
                status: EndpointStatus::Pending,
                ip: Ipv4Addr::UNSPECIFIED,
                ..held(key, network, "0.0.0.0")
            },
            ip: None,
            now_ms: 1,
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
        "192.0.2.31".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(s.networks["blue"].leases["h1"].subnet, net("10.1.0.0/24"));
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
fn update_network_changes_only_what_is_safe() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let r = s.apply(Command::UpdateNetwork {
        name: "blue".into(),
        nat_egress: Some(true),
        mtu: Some(MtuSetting::Fixed(1400)),
        direct_routing: None,
    });
    assert!(r.result.is_ok());
    assert!(s.networks["blue"].nat_egress);
    assert_eq!(s.networks["blue"].mtu, Some(1400));
    s.apply(Command::UpdateNetwork {
        name: "blue".into(),
        nat_egress: None,
        mtu: Some(MtuSetting::Auto),
        direct_routing: None,
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
            direct_routing: None,
        },
        |e| matches!(e, StateError::UnknownNetwork(_)),
    );
    assert_refused(
        &mut s,
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: None,
            mtu: Some(MtuSetting::Fixed(10)),
            direct_routing: None,
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
            direct_routing: None,
        },
        |e| matches!(e, StateError::Invalid { .. }),
    );
}

#[test]
fn reports_are_recorded_only_inside_the_reporting_hosts_lease() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    // h1 holds 10.1.0.0/24, h2 10.1.1.0/24.
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.7")).unwrap();
    let ep = s.endpoint_by_host_key("h1", "c1/eth0").unwrap().clone();
    assert_eq!(
        (ep.ip, ep.prefix_len, ep.gateway),
        (ip("10.1.0.7"), 24, ip("10.1.0.1"))
    );
    assert_eq!(ep.mac.to_string(), "0a:58:0a:01:00:07");
    for (e, says) in [
        (held("c2/eth0", "blue", "10.1.1.7"), "outside host \"h1\"'s lease"),
        (held("c2/eth0", "blue", "10.1.0.1"), "outside"),
        (held("c2/eth0", "blue", "10.1.0.255"), "outside"),
        (held("c2/eth0", "nope", "10.1.0.8"), "unknown network"),
        (held("c2/eth0", "blue", "10.1.0.7"), "held by endpoint"),
        (
            held("c1/eth0", "blue", "10.1.0.9"),
            "recorded with address 10.1.0.7",
        ),
        (held("bad key", "blue", "10.1.0.9"), "whitespace"),
        (
            HostEndpoint {
                names: vec!["-bad".into()],
                ..held("c3/eth0", "blue", "10.1.0.9")
            },
            "DNS label",
        ),
        (
            HostEndpoint {
                status: EndpointStatus::Requested,
                ..held("c3/eth0", "blue", "10.1.0.9")
            },
            "not requests",
        ),
    ] {
        let before = s.clone();
        let why = report(&mut s, "h1", e.clone()).unwrap_err();
        assert!(why.contains(says), "{e:?}: {why}");
        assert_eq!(s, before, "a refused report changed the state");
    }
    // The same report again changes nothing, and is no new revision.
    let rev = s.revision;
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.7")).unwrap();
    assert_eq!(s.revision, rev);
    // A status change is recorded, but wakes no Watch reader.
    let log = s.marks.endpoint_log.len();
    report(
        &mut s,
        "h1",
        HostEndpoint {
            status: EndpointStatus::Gone("namespace gone".into()),
            ..held("c1/eth0", "blue", "10.1.0.7")
        },
    )
    .unwrap();
    assert!(matches!(
        s.endpoint_by_host_key("h1", "c1/eth0").unwrap().status,
        EndpointStatus::Gone(_)
    ));
    assert_eq!(s.marks.endpoint_log.len(), log, "status is not desired state");
    // h2 can neither remove nor replace h1's endpoint: keys are per host.
    sync(&mut s, "h2", false, vec![], &["c1/eth0"]).result.unwrap();
    assert!(s.endpoint_by_host_key("h1", "c1/eth0").is_some());
    assert!(
        report(&mut s, "h2", held("c1/eth0", "blue", "10.1.0.7"))
            .unwrap_err()
            .contains("outside")
    );
    // An unknown host's report is refused as a whole.
    assert_refused(
        &mut s,
        Command::SyncEndpoints {
            host: "h9".into(),
            full: true,
            upsert: vec![],
            remove: vec![],
            failed: vec![],
            now_ms: 1,
        },
        |e| matches!(e, StateError::UnknownHost(_)),
    );
}

#[test]
fn a_full_report_replaces_the_hosts_records_but_not_requests() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    report(&mut s, "h1", held("a/eth0", "blue", "10.1.0.2")).unwrap();
    report(&mut s, "h1", held("b/eth0", "blue", "10.1.0.3")).unwrap();
    report(&mut s, "h2", held("c/eth0", "blue", "10.1.1.2")).unwrap();
    let req = request(&mut s, "blue", "h1", "w1").unwrap();
    let r = sync(&mut s, "h1", true, vec![held("b/eth0", "blue", "10.1.0.3")], &[]);
    assert_eq!(
        r.result,
        Ok(Response::Synced {
            changed: 1,
            refused: vec![]
        })
    );
    assert!(
        s.endpoint_by_host_key("h1", "a/eth0").is_none(),
        "not reported: dropped"
    );
    assert!(s.endpoint_by_host_key("h1", "b/eth0").is_some());
    assert!(
        s.endpoint_by_host_key("h2", "c/eth0").is_some(),
        "another host's stays"
    );
    assert!(
        s.endpoints.contains_key(&req.id),
        "a request stays for the agent to carry out"
    );
    // The freed address can be reported again.
    report(&mut s, "h1", held("d/eth0", "blue", "10.1.0.2")).unwrap();
}

#[test]
fn requests_have_no_address_until_the_agent_reports_them() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let req = request(&mut s, "blue", "h1", "w1").unwrap();
    assert!(req.is_request() && req.status == EndpointStatus::Requested);
    assert_eq!(req.key, request_key(req.id));
    assert!(s.addresses["blue"].is_empty(), "a request holds no address");
    let ask =
        |network: &str, host: &str, netns: &str, ifname: &str, ip: Option<&str>| Command::RequestEndpoint {
            network: network.into(),
            host: host.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ip: ip.map(|i| i.parse().unwrap()),
            default_route: false,
            names: vec![],
            ports: vec![],
            now_ms: 1,
        };
    assert_refused(&mut s, ask("nope", "h1", "w2", "eth0", None), |e| {
        matches!(e, StateError::UnknownNetwork(_))
    });
    assert_refused(&mut s, ask("blue", "h9", "w2", "eth0", None), |e| {
        matches!(e, StateError::UnknownHost(_))
    });
    assert_refused(&mut s, ask("blue", "h1", "w1", "eth1", None), |e| {
        matches!(e, StateError::EndpointExists { .. })
    });
    assert_refused(&mut s, ask("blue", "h1", "../x", "eth0", None), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    assert_refused(
        &mut s,
        ask("blue", "h1", "w2", "this-name-is-too-long", None),
        |e| matches!(e, StateError::Invalid { .. }),
    );
    assert_refused(&mut s, ask("blue", "h1", "w2", "eth0", Some("10.1.1.5")), |e| {
        matches!(e, StateError::AddressNotAllowed { .. })
    });
    assert_refused(&mut s, ask("blue", "h1", "w2", "eth0", Some("10.1.0.1")), |e| {
        matches!(e, StateError::AddressNotAllowed { .. })
    });
    create(&mut s, vxlan("red", "10.2.0.0/16")).unwrap();
    assert_refused(&mut s, ask("red", "h1", "w1", "eth0", None), |e| {
        matches!(e, StateError::IfnameInUse { .. })
    });
    // The agent carries it out: the same record, now with its address.
    report(
        &mut s,
        "h1",
        HostEndpoint {
            netns: "w1".into(),
            owner: "overlayctl".into(),
            ..held(&req.key, "blue", "10.1.0.9")
        },
    )
    .unwrap();
    let done = &s.endpoints[&req.id];
    assert!(!done.is_request() && done.ip == ip("10.1.0.9") && done.status == EndpointStatus::Ready);
    assert_refused(&mut s, ask("blue", "h1", "w9", "eth0", Some("10.1.0.9")), |e| {
        matches!(e, StateError::AddressInUse { .. })
    });
    // A request the agent could not carry out turns failed (and keeps no address).
    let other = request(&mut s, "blue", "h2", "w2").unwrap();
    s.apply(Command::SyncEndpoints {
        host: "h2".into(),
        full: false,
        upsert: vec![],
        remove: vec![],
        failed: vec![(other.key.clone(), "namespace w2 not found".into())],
        now_ms: 2,
    })
    .result
    .unwrap();
    assert_eq!(
        s.endpoints[&other.id].status,
        EndpointStatus::Failed("namespace w2 not found".into())
    );
    assert!(s.endpoints[&other.id].is_request());

    // Reported while being wired, then rolled back by the agent: the report that removes it
    // also says why, and the failure wins (the request stays, failed, its address freed).
    let third = request(&mut s, "blue", "h1", "w3").unwrap();
    report(
        &mut s,
        "h1",
        HostEndpoint {
            netns: "w3".into(),
            owner: "overlayctl".into(),
            status: EndpointStatus::Pending,
            ..held(&third.key, "blue", "10.1.0.10")
        },
    )
    .unwrap();
    assert!(!s.endpoints[&third.id].is_request());
    s.apply(Command::SyncEndpoints {
        host: "h1".into(),
        full: false,
        upsert: vec![],
        remove: vec![third.key.clone()],
        failed: vec![(third.key.clone(), "create vlan eth0.50: not supported".into())],
        now_ms: 3,
    })
    .result
    .unwrap();
    let failed = &s.endpoints[&third.id];
    assert_eq!(
        failed.status,
        EndpointStatus::Failed("create vlan eth0.50: not supported".into())
    );
    assert!(failed.is_request(), "the rolled-back address is given back");
    assert!(!s.addresses["blue"].contains_key(&ip("10.1.0.10")));
}

#[test]
fn detach_drops_the_record_and_refuses_what_it_cannot_tell_apart() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.2")).unwrap();
    let detach = |netns: &str| Command::DetachEndpoint {
        network: "blue".into(),
        host: "h1".into(),
        netns: netns.into(),
    };
    assert_refused(&mut s, detach("zz"), |e| {
        matches!(e, StateError::UnknownEndpoint { .. })
    });
    // Two interfaces of one namespace on one network (a CNI runtime may do that).
    report(
        &mut s,
        "h1",
        HostEndpoint {
            netns: "/run/netns/c1-eth0".into(),
            ifname: "eth1".into(),
            ..held("c1/eth1", "blue", "10.1.0.3")
        },
    )
    .unwrap();
    assert_refused(&mut s, detach("/run/netns/c1-eth0"), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    sync(&mut s, "h1", false, vec![], &["c1/eth1"]).result.unwrap();
    let r = s.apply(detach("/run/netns/c1-eth0"));
    assert!(matches!(r.result, Ok(Response::EndpointDetached(_))), "{r:?}");
    assert!(s.endpoints.is_empty() && s.addresses["blue"].is_empty());
}

#[test]
fn macvlan_addresses_are_allocated_cluster_wide_and_reports_must_match() {
    let mut s = two_hosts();
    create(&mut s, macvlan("lan", MacvlanMode::Bridge, "198.51.100.0/30")).unwrap();
    // Range .0/30 clipped to host addresses and minus the gateway: only .2 and .3.
    assert_eq!(ClusterState::capacity(&s.networks["lan"]), 2);
    let a = allocate(&mut s, "lan", "h1", "a/eth0").unwrap();
    let b = allocate(&mut s, "lan", "h2", "b/eth0").unwrap();
    assert_eq!((a.ip, b.ip), (ip("198.51.100.2"), ip("198.51.100.3")));
    assert_eq!(a.prefix_len, 24);
    // The same key gets the same address again (a retried allocation).
    assert_eq!(allocate(&mut s, "lan", "h1", "a/eth0").unwrap().id, a.id);
    assert!(matches!(
        allocate(&mut s, "lan", "h1", "c/eth0"),
        Err(StateError::AddressPoolExhausted { capacity: 2, .. })
    ));
    // A report must be of what was allocated to that key.
    report(&mut s, "h1", held("a/eth0", "lan", "198.51.100.2")).unwrap();
    assert_eq!(s.endpoints[&a.id].status, EndpointStatus::Ready);
    assert!(
        report(&mut s, "h1", held("z/eth0", "lan", "198.51.100.9"))
            .unwrap_err()
            .contains("not allocated")
    );
    assert!(
        report(&mut s, "h2", held("a/eth0", "lan", "198.51.100.2"))
            .unwrap_err()
            .contains("not allocated")
    );
    // A lease network's addresses are never the controller's to give.
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    assert!(matches!(
        allocate(&mut s, "blue", "h1", "x/eth0"),
        Err(StateError::Invalid { .. })
    ));
    s.apply(Command::DeleteNetwork {
        name: "lan".into(),
        force: true,
    })
    .result
    .unwrap();
    create(&mut s, macvlan("pt", MacvlanMode::Passthru, "198.51.100.0/24")).unwrap();
    allocate(&mut s, "pt", "h1", "a/eth0").unwrap();
    assert!(matches!(
        allocate(&mut s, "pt", "h1", "b/eth0"),
        Err(StateError::PassthruTaken { .. })
    ));
    allocate(&mut s, "pt", "h2", "b/eth0").unwrap();
}

#[test]
fn a_full_report_racing_a_fresh_macvlan_allocation_keeps_it_until_the_grace_ends() {
    let mut s = two_hosts();
    create(&mut s, macvlan("lan", MacvlanMode::Bridge, "198.51.100.0/30")).unwrap();
    let full_report_at = |s: &mut ClusterState, now_ms: i64| {
        s.apply(Command::SyncEndpoints {
            host: "h1".into(),
            full: true,
            upsert: vec![],
            remove: vec![],
            failed: vec![],
            now_ms,
        })
        .result
        .unwrap();
    };
    // As the agent asks: its own number comes with the report, after the store commit.
    let a = match s
        .apply(Command::AllocateAddress {
            host: "h1".into(),
            endpoint: HostEndpoint {
                status: EndpointStatus::Pending,
                ip: Ipv4Addr::UNSPECIFIED,
                host_id: 0,
                ..held("a/eth0", "lan", "0.0.0.0")
            },
            ip: None,
            now_ms: 1_000,
        })
        .result
        .unwrap()
    {
        Response::Endpoint(e) => e,
        other => panic!("unexpected {other:?}"),
    };
    full_report_at(&mut s, 2_000);
    assert!(
        s.endpoints.contains_key(&a.id),
        "kept while the agent may still be wiring it"
    );
    assert!(matches!(
        allocate(&mut s, "lan", "h2", "b/eth0"),
        Ok(b) if b.ip != a.ip
    ));
    full_report_at(&mut s, 1_000 + UNREPORTED_GRACE_MS);
    assert!(!s.endpoints.contains_key(&a.id), "dropped once the grace is over");
}

#[test]
fn a_host_port_is_published_once_per_host_and_never_for_macvlan() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    create(&mut s, macvlan("lan", MacvlanMode::Bridge, "198.51.100.0/28")).unwrap();
    let port = |text: &str| text.parse::<PublishedPort>().unwrap();
    let ask = |network: &str, host: &str, netns: &str, ports: &[&str]| Command::RequestEndpoint {
        network: network.into(),
        host: host.into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        ip: None,
        default_route: false,
        names: vec![],
        ports: ports.iter().map(|p| port(p)).collect(),
        now_ms: 1,
    };
    s.apply(ask("blue", "h1", "w1", &["8080:80"])).result.unwrap();
    // The same host port (and protocol) on the same host: refused, whatever the target.
    assert_refused(
        &mut s,
        ask("blue", "h1", "w2", &["8080:81"]),
        |e| matches!(e, StateError::PortInUse { port, .. } if port == "8080:81/tcp"),
    );
    // Another protocol, another host: fine.
    s.apply(ask("blue", "h1", "w3", &["8080:80/udp"])).result.unwrap();
    s.apply(ask("blue", "h2", "w4", &["8080:80"])).result.unwrap();
    assert_refused(&mut s, ask("blue", "h1", "w5", &["9000:1", "9000:2"]), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    assert_refused(
        &mut s,
        ask("lan", "h1", "w6", &["8081:80"]),
        |e| matches!(e, StateError::Invalid { reason, .. } if reason.contains("macvlan")),
    );
    // An agent's report is held to the same rule.
    let refused = report(
        &mut s,
        "h1",
        HostEndpoint {
            ports: vec![port("8080:9")],
            ..held("c9/eth0", "blue", "10.1.0.9")
        },
    )
    .unwrap_err();
    assert!(refused.contains("8080:9/tcp is already published"), "{refused}");
    report(
        &mut s,
        "h1",
        HostEndpoint {
            ports: vec![port("8082:9")],
            ..held("c9/eth0", "blue", "10.1.0.9")
        },
    )
    .unwrap();
    let shown = convert_ports(&s, "c9/eth0");
    assert_eq!(shown, vec![port("8082:9")]);
}

fn convert_ports(s: &ClusterState, key: &str) -> Vec<PublishedPort> {
    s.endpoints
        .values()
        .find(|e| e.key == key)
        .map(|e| e.ports.clone())
        .unwrap_or_default()
}

#[test]
fn network_with_endpoints_needs_force() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.2")).unwrap();
    assert_refused(
        &mut s,
        Command::DeleteNetwork {
            name: "blue".into(),
            force: false,
        },
        |e| matches!(e, StateError::NetworkHasEndpoints { count: 1, .. }),
    );
    let r = s.apply(Command::DeleteNetwork {
        name: "blue".into(),
        force: true,
    });
    assert_eq!(r.result, Ok(Response::NetworkDeleted { removed_endpoints: 1 }));
    assert!(s.endpoints.is_empty());
    let Ok(Response::Network(n)) = create(&mut s, vxlan("blue2", "10.1.0.0/16")) else {
        panic!()
    };
    assert_eq!(n.vni, Some(4096), "the CIDR and VNI are free again");
}

#[test]
fn heartbeats_do_not_bump_revision() {
    let mut s = two_hosts();
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
    assert_refused(
        &mut s,
        Command::Heartbeat {
            instance: String::new(),
            name: "h9".into(),
            now_ms: 5,
        },
        |e| matches!(e, StateError::UnknownHost(_)),
    );
}

#[test]
fn removing_a_host_drops_its_records_and_requests() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.2")).unwrap();
    request(&mut s, "blue", "h1", "w1").unwrap();
    report(&mut s, "h2", held("c2/eth0", "blue", "10.1.1.2")).unwrap();
    let r = s.apply(Command::RemoveHost { name: "h1".into() });
    assert_eq!(
        r.result,
        Ok(Response::HostRemoved {
            removed_endpoints: 2,
            released_leases: 1
        })
    );
    assert_eq!(s.endpoints.len(), 1);
    assert_refused(&mut s, Command::RemoveHost { name: "h9".into() }, |e| {
        matches!(e, StateError::UnknownHost(_))
    });
}

#[test]
fn reports_are_bounded() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    let many: Vec<HostEndpoint> = (0..=MAX_HOST_ENDPOINTS)
        .map(|i| held(&format!("k{i}"), "blue", "10.1.0.2"))
        .collect();
    assert_refused(
        &mut s,
        Command::SyncEndpoints {
            host: "h1".into(),
            full: false,
            upsert: many,
            remove: vec![],
            failed: vec![],
            now_ms: 1,
        },
        |e| matches!(e, StateError::Invalid { .. }),
    );
    let names = HostEndpoint {
        names: (0..17).map(|i| format!("n{i}")).collect(),
        ..held("k/eth0", "blue", "10.1.0.2")
    };
    assert!(report(&mut s, "h1", names).unwrap_err().contains("at most 16"));
    let long = held(&"k".repeat(301), "blue", "10.1.0.2");
    assert!(report(&mut s, "h1", long).unwrap_err().contains("1 to 300"));
}

#[test]
fn snapshot_round_trip_rebuilds_indices() {
    let mut s = two_hosts();
    create(&mut s, vxlan("blue", "10.1.0.0/16")).unwrap();
    report(&mut s, "h1", held("c1/eth0", "blue", "10.1.0.2")).unwrap();
    request(&mut s, "blue", "h2", "w2").unwrap();
    let json = serde_json::to_vec(&s).unwrap();
    let mut restored = ClusterState::from_snapshot_json(&json).unwrap();
    assert_eq!(restored, s);
    assert!(restored.endpoint_by_host_key("h1", "c1/eth0").is_some());
    // The indices work: a held address is refused, a request is found.
    assert!(
        report(&mut restored, "h1", held("c2/eth0", "blue", "10.1.0.2"))
            .unwrap_err()
            .contains("held by")
    );
    assert!(matches!(
        request(&mut restored, "blue", "h2", "w2"),
        Err(StateError::EndpointExists { .. })
    ));
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
            direct_routing: None,
        },
        Command::UpdateNetwork {
            name: "blue".into(),
            nat_egress: None,
            mtu: Some(MtuSetting::Fixed(1400)),
            direct_routing: None,
        },
        Command::DeleteNetwork {
            name: "blue".into(),
            force: true,
        },
        Command::RegisterHost {
            instance: "0123456789abcdef0123456789abcdef".into(),
            claim_timeout_ms: 60_000,
            name: "h1".into(),
            underlay_ip: "192.0.2.21".parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        },
        Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: "h2".into(),
            underlay_ip: "2001:db8::22".parse().unwrap(),
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
        Command::RequestEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w1".into(),
            ifname: "eth0".into(),
            ip: Some("10.1.0.9".parse().unwrap()),
            default_route: true,
            names: vec!["web".into()],
            ports: vec![],
            now_ms: 3,
        },
        Command::DetachEndpoint {
            network: "blue".into(),
            host: "h1".into(),
            netns: "w1".into(),
        },
        Command::AllocateAddress {
            host: "h1".into(),
            endpoint: held("a/eth0", "lan", "0.0.0.0"),
            ip: None,
            now_ms: 4,
        },
        Command::SyncEndpoints {
            host: "h1".into(),
            full: true,
            upsert: vec![
                held("a/eth0", "blue", "10.1.0.2"),
                HostEndpoint {
                    status: EndpointStatus::Gone("namespace gone".into()),
                    ..held("b/eth0", "blue", "10.1.0.3")
                },
                HostEndpoint {
                    status: EndpointStatus::Failed("no bridge".into()),
                    ..held("c/eth0", "blue", "10.1.0.4")
                },
            ],
            remove: vec!["d/eth0".into()],
            failed: vec![("req-3".into(), "namespace w1 not found".into())],
            now_ms: 5,
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
    /// A macvlan network over one shared range.
    CreateMacvlan(u8),
    Delete(u8, bool),
    /// Host .1 reports key .2 in network .0 at address offset .3 of its lease (it may be wrong:
    /// another host's, taken, outside).
    Report(u8, u8, u8, u8),
    /// Host .0 reports in full the keys in mask .1 (of its current records).
    Full(u8, u8),
    /// Host .1 removes key .2.
    Remove(u8, u8),
    Request(u8, u8, u8),
    Detach(u8, u8, u8),
    /// Host .1 asks for a macvlan address of network .0 for key .2.
    Allocate(u8, u8, u8),
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..6).prop_map(Op::Register),
        1 => (0u8..6, 0u8..2).prop_map(|(h, v)| Op::Move(h, v)),
        1 => (0u8..6).prop_map(Op::RemoveHost),
        1 => (0u8..4, 0u8..6, proptest::option::of(26u8..29)).prop_map(|(n, c, p)| Op::Create(n, c, p)),
        1 => (0u8..4).prop_map(Op::CreateMacvlan),
        1 => (0u8..4, any::<bool>()).prop_map(|(n, f)| Op::Delete(n, f)),
        3 => (0u8..4, 0u8..6, 0u8..12, 0u8..70).prop_map(|(n, h, k, a)| Op::Report(n, h, k, a)),
        1 => (0u8..6, any::<u8>()).prop_map(|(h, m)| Op::Full(h, m)),
        1 => (0u8..6, 0u8..12).prop_map(|(h, k)| Op::Remove(h, k)),
        1 => (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, w)| Op::Request(n, h, w)),
        1 => (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, w)| Op::Detach(n, h, w)),
        1 => (0u8..4, 0u8..6, 0u8..12).prop_map(|(n, h, k)| Op::Allocate(n, h, k)),
    ]
}

/// The address a report of `op` names: offset `a` into the reporting host's lease when it has
/// one, else into the network (so reports outside leases and of taken addresses occur).
fn report_address(s: &ClusterState, network: &str, host: &str, a: u8) -> Ipv4Addr {
    let base = s
        .networks
        .get(network)
        .map(|n| match n.leases.get(host) {
            Some(l) if a < 64 => u32::from(l.subnet.network()),
            _ => u32::from(n.cidr.network()),
        })
        .unwrap_or(0x0a00_0000);
    Ipv4Addr::from(base + u32::from(a))
}

/// `op` as a command, reading `s` only to pick report addresses (so replays stay the same).
pub(crate) fn to_command_in(s: &ClusterState, op: &Op) -> Command {
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
            underlay_ip: Ipv4Addr::new(192, 0, 2, 10 + h).into(),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        },
        Op::Move(h, v) => Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: format!("h{h}"),
            underlay_ip: Ipv4Addr::new(198, 51, 100, h * 2 + v).into(),
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
                // Odd networks are routed (host-gw): per-host leases and peers, no VNI.
                mode: if n % 2 == 1 { Mode::Route } else { Mode::Vxlan },
                // Even ones dual-stack: n0 with /64 host subnets, n2 with the tightest /120
                // (its CIDR chosen like the IPv4 one, so overlaps are tried too).
                cidr6: (n % 2 == 0).then(|| format!("fd00:{c}::/48").parse().unwrap()),
                host_prefix6: (n == 2).then_some(120),
                ..vxlan(&format!("n{n}"), CIDRS[c as usize])
            },
            now_ms: 1,
        },
        Op::CreateMacvlan(n) => Command::CreateNetwork {
            spec: NetworkSpec {
                cidr: net(&format!("172.16.{n}.0/24")),
                macvlan: Some(MacvlanSpec {
                    parent: "eth0".into(),
                    gateway: Ipv4Addr::new(172, 16, n, 1),
                    ip_range: net(&format!("172.16.{n}.0/28")),
                    mode: MacvlanMode::Bridge,
                }),
                ..macvlan(&format!("n{n}"), MacvlanMode::Bridge, "198.51.100.0/28")
            },
            now_ms: 1,
        },
        Op::Delete(n, force) => Command::DeleteNetwork {
            name: format!("n{n}"),
            force,
        },
        Op::Report(n, h, k, a) => {
            let (network, host) = (format!("n{n}"), format!("h{h}"));
            let address = report_address(s, &network, &host, a);
            Command::SyncEndpoints {
                host: host.clone(),
                full: false,
                upsert: vec![HostEndpoint {
                    netns: format!("/run/netns/{host}-k{k}"),
                    ..held(&format!("k{k}"), &network, &address.to_string())
                }],
                remove: vec![],
                failed: vec![],
                now_ms: 3,
            }
        }
        Op::Full(h, mask) => {
            let host = format!("h{h}");
            let upsert = s
                .endpoints
                .values()
                .filter(|e| e.host == host && !e.is_request())
                .enumerate()
                .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                .map(|(_, e)| HostEndpoint {
                    key: e.key.clone(),
                    host_id: e.host_id,
                    network: e.network.clone(),
                    netns: e.netns.clone(),
                    ifname: e.ifname.clone(),
                    ip: e.ip,
                    default_route: e.default_route,
                    owner: e.owner.clone(),
                    names: e.names.clone(),
                    ports: vec![],
                    status: EndpointStatus::Ready,
                })
                .collect();
            Command::SyncEndpoints {
                host,
                full: true,
                upsert,
                remove: vec![],
                failed: vec![],
                now_ms: 4,
            }
        }
        Op::Remove(h, k) => Command::SyncEndpoints {
            host: format!("h{h}"),
            full: false,
            upsert: vec![],
            remove: vec![format!("k{k}")],
            failed: vec![],
            now_ms: 4,
        },
        Op::Request(n, h, w) => Command::RequestEndpoint {
            network: format!("n{n}"),
            host: format!("h{h}"),
            netns: format!("w{w}"),
            ifname: format!("e{n}"),
            ip: None,
            default_route: false,
            names: vec![],
            ports: vec![],
            now_ms: 1,
        },
        Op::Detach(n, h, w) => Command::DetachEndpoint {
            network: format!("n{n}"),
            host: format!("h{h}"),
            netns: format!("w{w}"),
        },
        Op::Allocate(n, h, k) => Command::AllocateAddress {
            host: format!("h{h}"),
            endpoint: HostEndpoint {
                netns: format!("/run/netns/h{h}-m{k}"),
                ..held(&format!("m{k}"), &format!("n{n}"), "0.0.0.0")
            },
            ip: None,
            now_ms: 2,
        },
    }
}

/// Everything that must hold after any sequence of commands.
fn check_invariants(s: &ClusterState) {
    let mut addresses = BTreeSet::new();
    let mut addresses6 = BTreeSet::new();
    let mut vnis = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for ep in s.endpoints.values() {
        assert!(
            keys.insert((&ep.host, &ep.key)),
            "key {} recorded twice on {}",
            ep.key,
            ep.host
        );
        let n = s
            .networks
            .get(&ep.network)
            .expect("endpoint of a deleted network");
        assert!(s.hosts.contains_key(&ep.host), "endpoint of a removed host");
        if ep.is_request() {
            continue;
        }
        // Dual stack: the IPv6 address is the IPv4 one's twin in the host's IPv6 subnet,
        // never its gateway or VTEP, never twice; an IPv4-only network's endpoints have none.
        assert_eq!(
            ep.v6,
            n.address6(&ep.host, ep.ip),
            "IPv6 address of {} not its pair",
            ep.ip
        );
        if let Some(v6) = ep.v6 {
            let subnet6 = n.leases[&ep.host].subnet6.expect("dual-stack lease");
            assert!(subnet6.contains(v6.ip) && v6.ip != subnet6.network() && v6.ip != v6.gateway);
            assert!(addresses6.insert(v6.ip), "IPv6 address {} recorded twice", v6.ip);
        }
        assert!(
            addresses.insert((&ep.network, ep.ip)),
            "address {} of {} recorded twice",
            ep.ip,
            ep.network
        );
        match n.mode {
            Mode::Vxlan | Mode::Route | Mode::Nat => {
                let lease = n.leases.get(&ep.host).expect("endpoint without a lease");
                assert!(lease.subnet.contains(ep.ip), "endpoint outside its host's lease");
                assert_ne!(ep.ip, ipam::subnet_gateway(lease.subnet));
                assert_ne!(ep.ip, lease.subnet.network());
                assert_ne!(ep.ip, lease.subnet.broadcast());
            }
            Mode::Macvlan => {
                let m = n.macvlan.as_ref().expect("macvlan options");
                assert!(m.ip_range.contains(ep.ip) && ep.ip != m.gateway);
            }
        }
    }
    let mut subnets: Vec<Ipv4Network> = Vec::new();
    let mut subnets6: Vec<ipnetwork::Ipv6Network> = Vec::new();
    let overlaps6 = |a: ipnetwork::Ipv6Network, b: ipnetwork::Ipv6Network| {
        a.contains(b.network()) || b.contains(a.network())
    };
    for n in s.networks.values() {
        if n.vni.is_some() {
            assert!(vnis.insert(n.vni), "VNI {:?} used twice", n.vni);
        }
        for (host, lease) in &n.leases {
            assert!(s.hosts.contains_key(host), "lease of a removed host");
            assert!(n.cidr.contains(lease.subnet.network()) && lease.subnet.prefix() == n.host_prefix);
            assert!(
                !subnets.iter().any(|o| o.overlaps(lease.subnet)),
                "subnet {} leased twice",
                lease.subnet
            );
            subnets.push(lease.subnet);
            // Both families or neither, inside the IPv6 CIDR, disjoint across all networks.
            assert_eq!(
                lease.subnet6.is_some(),
                n.cidr6.is_some(),
                "lease of {host} half-stacked"
            );
            if let (Some(s6), Some(cidr6)) = (lease.subnet6, n.cidr6) {
                assert!(cidr6.contains(s6.network()) && s6.prefix() == n.host_prefix6);
                assert!(
                    !subnets6.iter().any(|o| overlaps6(*o, s6)),
                    "IPv6 subnet {s6} leased twice"
                );
                subnets6.push(s6);
            }
        }
    }
    // Derived indices agree with the records (no leak: every index entry is a live endpoint).
    let indexed: usize = s.addresses.values().map(|a| a.len()).sum();
    assert_eq!(indexed, addresses.len(), "address index leaks");
    assert_eq!(s.by_host_key.len(), s.endpoints.len(), "key index leaks");
    let placed: usize = s.by_place.values().map(|ids| ids.len()).sum();
    assert_eq!(placed, s.endpoints.len(), "place index leaks");
    let mut rebuilt = s.clone();
    rebuilt.rebuild_indices();
    assert_eq!(rebuilt.by_host_key, s.by_host_key);
    assert_eq!(rebuilt.by_place, s.by_place);
    assert_eq!(
        rebuilt
            .addresses
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .collect::<Vec<_>>(),
        s.addresses
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .collect::<Vec<_>>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_records_unique(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = ClusterState::default();
        let mut log = Vec::new();
        for op in &ops {
            let cmd = to_command_in(&s, op);
            log.push(cmd.clone());
            let before = s.clone();
            let reply = s.apply(cmd);
            if reply.result.is_err() {
                prop_assert_eq!(&s, &before, "refused {:?} changed the state", op);
            }
            check_invariants(&s);
        }
        // Replaying the same log on another replica gives the same state.
        let mut replica = ClusterState::default();
        for cmd in log {
            replica.apply(cmd);
        }
        prop_assert_eq!(&replica, &s);
    }

    #[test]
    fn a_batch_applies_exactly_like_its_commands_one_by_one(
        ops in proptest::collection::vec(op(), 1..80),
        size in 1usize..12,
    ) {
        let mut single = ClusterState::default();
        let log: Vec<Command> = ops
            .iter()
            .map(|op| {
                let cmd = to_command_in(&single, op);
                single.apply(cmd.clone());
                cmd
            })
            .collect();
        let mut replay = ClusterState::default();
        let one_by_one: Vec<Reply> = log.iter().map(|c| replay.apply(c.clone())).collect();
        let mut batched = ClusterState::default();
        let mut replies = Vec::new();
        for chunk in log.chunks(size) {
            let reply = batched.apply(Command::Batch(chunk.to_vec()));
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
    fn reporting_and_removing_never_leaks(n in 1usize..40) {
        let mut s = two_hosts();
        let mut spec = vxlan("blue", "10.1.0.0/24");
        spec.host_prefix = Some(26); // 61 endpoint addresses per host
        create(&mut s, spec).unwrap();
        for round in 0..3 {
            for i in 0..n {
                report(&mut s, "h1", held(&format!("r{round}-{i}"), "blue", &format!("10.1.0.{}", 2 + i))).unwrap();
            }
            let keys: Vec<String> = (0..n).map(|i| format!("r{round}-{i}")).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            sync(&mut s, "h1", false, vec![], &keys).result.unwrap();
            prop_assert!(s.endpoints.is_empty());
            prop_assert!(s.addresses["blue"].is_empty());
        }
    }
}

// ---------------------------------------------------------------- host claims

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

#[test]
fn direct_routing_is_a_vxlan_option_switchable_live() {
    let mut s = two_hosts();
    let mut blue = vxlan("blue", "10.1.0.0/16");
    blue.direct_routing = true;
    create(&mut s, blue).unwrap();
    assert!(s.networks["blue"].direct_routing);
    for mode in [Mode::Route, Mode::Nat] {
        let mut spec = vxlan("other", "10.2.0.0/16");
        spec.mode = mode;
        spec.direct_routing = true;
        assert_refused(
            &mut s,
            Command::CreateNetwork { spec, now_ms: 2 },
            |e| matches!(e, StateError::Invalid { value, .. } if value == "--direct-routing"),
        );
    }
    let set = |name: &str, on: bool| Command::UpdateNetwork {
        name: name.into(),
        nat_egress: None,
        mtu: None,
        direct_routing: Some(on),
    };
    s.apply(set("blue", false)).result.unwrap();
    assert!(!s.networks["blue"].direct_routing);
    let mut hg = vxlan("hg", "10.3.0.0/16");
    hg.mode = Mode::Route;
    create(&mut s, hg).unwrap();
    assert_refused(&mut s, set("hg", true), |e| {
        matches!(e, StateError::Invalid { .. })
    });
    // Leaving the option off on a route network is no change, so it is not refused.
    s.apply(set("hg", false)).result.unwrap();
    assert!(!s.networks["hg"].direct_routing);
}

/// A RegisterHost entry as the Raft log held it while the underlay was an `Ipv4Addr` reads
/// as the same IPv4 address, and an IPv4 one is written as before (an older replica reads
/// it).
#[test]
fn an_old_register_command_with_an_ipv4_string_still_reads() {
    let old = r#"{"RegisterHost":{"name":"h1","underlay_ip":"192.0.2.21","underlay_iface":"eth0","underlay_mtu":1500,"now_ms":1}}"#;
    let cmd: Command = serde_json::from_str(old).expect("old log entry");
    let Command::RegisterHost {
        underlay_ip,
        ref instance,
        claim_timeout_ms,
        ..
    } = cmd
    else {
        panic!("{cmd:?}")
    };
    assert_eq!(underlay_ip, std::net::IpAddr::from([192, 0, 2, 21]));
    assert_eq!((instance.as_str(), claim_timeout_ms), ("", 0));
    let again = serde_json::to_value(&cmd).expect("encode");
    assert_eq!(again["RegisterHost"]["underlay_ip"], "192.0.2.21");
    let mut s = ClusterState::default();
    assert!(s.apply(cmd).result.is_ok());
}

/// An underlay address is one every peer reaches by the address alone: IPv6 is welcome, but
/// not an address that is no one's (unspecified, multicast, broadcast), the host's own
/// (IPv6 loopback; IPv4 loopback was always accepted, and log entries may hold one), one that needs an interface scope (link-local), or an IPv4 address in IPv6
/// form (the IPv4 one is registered instead). Two hosts never share one, however spelt.
#[test]
fn underlay_addresses_of_either_family_are_checked() {
    let mut s = ClusterState::default();
    for ok in [
        "192.0.2.21",
        "2001:db8::21",
        "fd00:1::21",
        "169.254.0.21",
        "127.0.0.21",
    ] {
        let name = format!("h{}", s.hosts.len() + 1);
        assert!(register(&mut s, &name, ok).is_ok(), "{ok}");
    }
    for (bad, says) in [
        ("0.0.0.0", "must be a unicast address"),
        ("224.0.0.1", "must be a unicast address"),
        ("255.255.255.255", "must be a unicast address"),
        ("::", "must be a unicast address"),
        ("ff02::1", "must be a unicast address"),
        (
            "::1",
            "must not be a loopback address: other hosts cannot reach it",
        ),
        (
            "fe80::21",
            "must not be link-local (fe80::/10): VXLAN to it needs an interface scope",
        ),
        ("febf::21", "must not be link-local"),
        (
            "::ffff:192.0.2.99",
            "must not be IPv4-mapped: register the IPv4 address 192.0.2.99 instead",
        ),
    ] {
        let cmd = Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: "bad".into(),
            underlay_ip: bad.parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            now_ms: 1,
        };
        assert_refused(&mut s, cmd, |e| {
            let msg = e.to_string();
            msg.starts_with("invalid underlay IP ") && msg.contains(says)
        });
    }
    // The same IPv6 address in another spelling is the same address.
    let err = register(&mut s, "h9", "2001:DB8:0:0::21")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        r#"invalid underlay IP "2001:db8::21": already registered by host "h2""#
    );
    // A host may move from one family to the other.
    assert!(register(&mut s, "h1", "2001:db8::31").is_ok());
    assert!(
        register(&mut s, "h5", "192.0.2.21").is_ok(),
        "h1's old address is free again"
    );
}

fn dual(name: &str, cidr: &str, cidr6: &str, host_prefix6: Option<u8>) -> NetworkSpec {
    NetworkSpec {
        cidr6: Some(cidr6.parse().unwrap()),
        host_prefix6,
        ..vxlan(name, cidr)
    }
}

/// A dual-stack network: every host gets a subnet of each family (those present at create
/// and those registering later), and a reported endpoint's IPv6 address pairs with its IPv4
/// one, so no second allocator can hand one out twice.
#[test]
fn dual_stack_leases_and_endpoint_addresses() {
    let mut s = ClusterState::default();
    register(&mut s, "h1", "192.0.2.11").unwrap();
    create(&mut s, dual("blue", "10.1.0.0/16", "fd00:10::/48", None)).unwrap();
    register(&mut s, "h2", "192.0.2.12").unwrap();
    let n = &s.networks["blue"];
    assert_eq!(n.host_prefix6, 64);
    let subnets: Vec<String> = n
        .leases
        .values()
        .map(|l| {
            format!(
                "{} {}",
                l.subnet,
                l.subnet6.map(|s| s.to_string()).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        subnets,
        ["10.1.0.0/24 fd00:10::/64", "10.1.1.0/24 fd00:10:0:1::/64"]
    );

    report(&mut s, "h2", held("c1/eth0", "blue", "10.1.1.7")).unwrap();
    let ep = s.endpoint_by_host_key("h2", "c1/eth0").unwrap();
    let v6 = ep.v6.expect("an IPv6 address");
    assert_eq!(
        (v6.ip.to_string(), v6.prefix_len, v6.gateway.to_string()),
        ("fd00:10:0:1::7".to_string(), 64, "fd00:10:0:1::1".to_string())
    );
    // Written down, an IPv4-only endpoint is what it was before IPv6 existed.
    create(&mut s, vxlan("red", "10.2.0.0/16")).unwrap();
    report(&mut s, "h1", held("c2/eth0", "red", "10.2.0.9")).unwrap();
    let v4 = s.endpoint_by_host_key("h1", "c2/eth0").unwrap();
    assert!(v4.v6.is_none());
    assert!(!serde_json::to_string(v4).unwrap().contains("v6"));
    let red = serde_json::to_string(&s.networks["red"]).unwrap();
    assert!(
        !red.contains("cidr6") && !red.contains("subnet6") && !red.contains("host_prefix6"),
        "{red}"
    );
}

/// What no dual-stack network may be: each refused, the state unchanged.
#[test]
fn bad_ipv6_networks_are_refused() {
    let mut s = ClusterState::default();
    register(&mut s, "h1", "192.0.2.11").unwrap();
    create(&mut s, dual("blue", "10.1.0.0/16", "fd00:10::/48", None)).unwrap();
    let before = s.clone();
    let cases = [
        (dual("x", "10.2.0.0/16", "fe80::/64", None), "link-local"),
        (dual("x", "10.2.0.0/16", "ff05::/64", None), "multicast"),
        // Accepted by a first-bits check, yet no place for workloads: the second host's /9 of
        // fe00::/8 is link-local, IPv4-mapped addresses are IPv4 to sockets, site-local is gone.
        (
            dual("x", "10.2.0.0/16", "fe00::/8", Some(9)),
            "unique local (fc00::/7)",
        ),
        (
            dual("x", "10.2.0.0/16", "::ffff:0:0/96", Some(120)),
            "global unicast (2000::/3)",
        ),
        (
            dual("x", "10.2.0.0/16", "::a01:0/112", Some(120)),
            "global unicast",
        ),
        (dual("x", "10.2.0.0/16", "fec0::/10", None), "global unicast"),
        (dual("x", "10.2.0.0/16", "::/1", None), "global unicast"),
        (dual("x", "10.2.0.0/16", "fd00:10:0:8::/64", Some(96)), "overlaps"),
        (dual("x", "10.2.0.0/16", "fd00:20::/48", Some(121)), "/120"),
        (dual("x", "10.2.0.0/16", "fd00:20::/48", Some(48)), "longer than"),
        (dual("x", "10.2.0.0/16", "fd00:20::1/48", None), "host bits"),
        // A /24 per host needs 256 IPv6 addresses per host: /120 holds them, /121 not.
        (
            NetworkSpec {
                host_prefix: Some(23),
                ..dual("x", "10.2.0.0/16", "fd00:20::/48", Some(120))
            },
            "/119 or shorter",
        ),
        (
            NetworkSpec {
                mode: Mode::Nat,
                ..dual("x", "10.2.0.0/16", "fd00:20::/48", None)
            },
            "vxlan",
        ),
        (
            NetworkSpec {
                direct_routing: true,
                ..dual("x", "10.2.0.0/16", "fd00:20::/48", None)
            },
            "direct-routing",
        ),
        (
            NetworkSpec {
                host_prefix6: Some(64),
                ..vxlan("x", "10.2.0.0/16")
            },
            "needs an IPv6",
        ),
    ];
    for (spec, why) in cases {
        let err = create(&mut s, spec.clone()).expect_err(why).to_string();
        assert!(err.contains(why), "{spec:?}: {err}");
        assert_eq!(s, before, "{spec:?} changed the state");
    }
    // Nor may a dual-stack network turn direct routing on later.
    let update = Command::UpdateNetwork {
        name: "blue".into(),
        nat_egress: None,
        mtu: None,
        direct_routing: Some(true),
    };
    let err = s
        .apply(update)
        .result
        .expect_err("direct routing on a dual-stack network");
    assert!(err.to_string().contains("dual-stack"), "{err}");
    assert_eq!(s, before, "a refused update changed the state");
    // A small IPv6 pool: a host gets a lease only while both families have room.
    create(
        &mut s,
        NetworkSpec {
            host_prefix6: Some(121),
            ..dual("tiny", "10.9.0.0/16", "fd00:99::/120", Some(121))
        },
    )
    .expect_err("/121 is too long");
    create(&mut s, dual("tiny", "10.9.0.0/16", "fd00:99::/119", Some(120))).unwrap();
    register(&mut s, "h2", "192.0.2.12").unwrap();
    register(&mut s, "h3", "192.0.2.13").unwrap();
    let tiny = &s.networks["tiny"];
    assert_eq!(tiny.leases.len(), 2, "two /120s in a /119: {:?}", tiny.leases);
    assert!(tiny.leases.values().all(|l| l.subnet6.is_some()));
}
