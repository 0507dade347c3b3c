//! Desired-state tests: what one host sees, and the Watch protocol's core property: for every
//! host, its previous full state plus the delta equals its new full state, whatever happened
//! in between.

use proptest::prelude::*;

use super::*;
use crate::model::{EndpointStatus, HostEndpoint};
use crate::model::{Mode, NetworkSpec};
use crate::state::Command;
use crate::state::tests::{op, to_command_in};

fn setup() -> ClusterState {
    let mut s = ClusterState::default();
    for (i, mtu) in [(1, 1500), (2, 1500), (3, 1450)] {
        s.apply(Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: format!("h{i}"),
            underlay_ip: format!("192.0.2.2{i}").parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu: mtu,
            now_ms: 0,
        });
    }
    s.apply(Command::CreateNetwork {
        spec: NetworkSpec {
            cidr6: None,
            host_prefix6: None,
            name: "blue".into(),
            mode: Mode::Vxlan,
            cidr: "10.1.0.0/16".parse().unwrap(),
            host_prefix: None,
            vni: Some(42),
            mtu: None,
            nat_egress: false,
            direct_routing: false,
            macvlan: None,
        },
        now_ms: 0,
    });
    for (h, ns, ip) in [
        ("h1", "a", "10.1.0.2"),
        ("h2", "b", "10.1.1.2"),
        ("h1", "c", "10.1.0.3"),
    ] {
        report(&mut s, h, ns, ip, true);
    }
    s
}

/// `host`'s agent reports its endpoint in namespace `netns` (key = the namespace's name).
fn report(s: &mut ClusterState, host: &str, netns: &str, ip: &str, default_route: bool) {
    report_named(s, host, netns, ip, default_route, &[]);
}

fn report_named(
    s: &mut ClusterState,
    host: &str,
    netns: &str,
    ip: &str,
    default_route: bool,
    names: &[&str],
) {
    s.apply(Command::SyncEndpoints {
        host: host.into(),
        full: false,
        upsert: vec![HostEndpoint {
            key: netns.into(),
            host_id: 7,
            network: "blue".into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ip: ip.parse().unwrap(),
            default_route,
            owner: "cni".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            ports: vec![],
            status: EndpointStatus::Ready,
        }],
        remove: vec![],
        failed: vec![],
        now_ms: 0,
    })
    .result
    .unwrap();
}

#[test]
fn host_sees_its_endpoints_and_every_other_peer() {
    let s = setup();
    let d = for_host(&s, "h1").unwrap();
    assert_eq!(d.revision, s.revision);
    assert_eq!(d.networks.len(), 1);
    let n = &d.networks[0];
    assert_eq!(
        (n.vni, n.subnet.as_str(), n.gateway.as_str()),
        (42, "10.1.0.0/24", "10.1.0.1")
    );
    assert_eq!(n.vxlan_name, "ovx-1");
    assert_eq!(n.bridge_name, "ovb-1");
    let peers: Vec<_> = n
        .peers
        .iter()
        .map(|p| (p.host.as_str(), p.subnet.as_str()))
        .collect();
    assert_eq!(peers, [("h2", "10.1.1.0/24"), ("h3", "10.1.2.0/24")]);
    let eps: Vec<_> = n
        .endpoints
        .iter()
        .map(|e| (e.netns.as_str(), e.address.as_str()))
        .collect();
    assert_eq!(eps, [("a", "10.1.0.2/24"), ("c", "10.1.0.3/24")]);
    // The smallest underlay (h3: 1450) sets the MTU for everyone.
    assert_eq!(n.mtu, 1400);
    assert!(for_host(&s, "nope").is_none());
}

#[test]
fn a_new_peer_is_a_small_delta_and_unrelated_changes_are_none() {
    let mut s = setup();
    let m0 = Model::build(&s, None);
    // An endpoint on h2 changes nothing h1 programs.
    report(&mut s, "h2", "z", "10.1.1.9", true);
    let m1 = Model::build(&s, Some(&m0));
    assert!(m1.delta(&m0, "h1").is_none());
    assert!(m1.delta(&m0, "h2").is_some());
    // A new host: h1 gets exactly one peer upsert.
    s.apply(Command::RegisterHost {
        instance: String::new(),
        claim_timeout_ms: 0,
        name: "h4".into(),
        underlay_ip: "192.0.2.24".parse().unwrap(),
        underlay_iface: "eth0".into(),
        underlay_mtu: 1500,
        now_ms: 0,
    });
    let m2 = Model::build(&s, Some(&m1));
    let Some(pb::WatchEvent {
        event: Some(watch_event::Event::Delta(d)),
        ..
    }) = m2.delta(&m1, "h1")
    else {
        panic!("expected a delta")
    };
    assert!(d.upsert_networks.is_empty() && d.endpoint_changes.is_empty());
    assert_eq!(d.peer_changes.len(), 1);
    assert_eq!(d.peer_changes[0].upsert.len(), 1);
    assert_eq!(d.peer_changes[0].upsert[0].host, "h4");
}

#[test]
fn a_named_endpoint_reaches_every_host_of_its_network_as_a_directory_entry() {
    let mut s = setup();
    let m0 = Model::build(&s, None);
    report_named(&mut s, "h2", "db", "10.1.1.9", true, &["db", "pg"]);
    let m1 = Model::build(&s, Some(&m0));
    let Some(pb::WatchEvent {
        event: Some(watch_event::Event::Delta(d)),
        ..
    }) = m1.delta(&m0, "h1")
    else {
        panic!("h1 should hear of a name on h2")
    };
    assert!(d.upsert_networks.is_empty() && d.endpoint_changes.is_empty() && d.peer_changes.is_empty());
    assert_eq!(d.directory_changes.len(), 1);
    let record = &d.directory_changes[0].upsert[0];
    assert_eq!(
        (record.host.as_str(), record.address.as_str()),
        ("h2", "10.1.1.9")
    );
    assert_eq!(record.names, ["db", "pg"]);
    let full = m1.full("h3").unwrap();
    assert_eq!(full.networks[0].directory, vec![record.clone()]);
    // Gone from h2: a removal for every host.
    s.apply(Command::SyncEndpoints {
        host: "h2".into(),
        full: false,
        upsert: vec![],
        remove: vec!["db".into()],
        failed: vec![],
        now_ms: 0,
    })
    .result
    .unwrap();
    let m2 = Model::build(&s, Some(&m1));
    let Some(pb::WatchEvent {
        event: Some(watch_event::Event::Delta(d)),
        ..
    }) = m2.delta(&m1, "h3")
    else {
        panic!("h3 should hear the name went away")
    };
    assert_eq!(d.directory_changes[0].remove, vec![record.endpoint_id]);
    assert!(m2.full("h1").unwrap().networks[0].directory.is_empty());
}

#[test]
fn a_state_loaded_from_a_snapshot_is_rebuilt_from_scratch() {
    let mut s = setup();
    let json = serde_json::to_vec(&s).unwrap();
    // A replica that started from a snapshot...
    let first = ClusterState::from_snapshot_json(&json).unwrap();
    let before = Model::build(&first, None);
    // ...then installs another one and applies a change: the new state's marks start empty and
    // must not be read as "nothing changed since `before`".
    let mut reloaded = ClusterState::from_snapshot_json(&json).unwrap();
    for state in [&mut s, &mut reloaded] {
        state
            .apply(Command::DetachEndpoint {
                network: "blue".into(),
                host: "h1".into(),
                netns: "a".into(),
            })
            .result
            .unwrap();
    }
    let after = Model::build(&reloaded, Some(&before));
    assert_eq!(after.full("h1"), Model::build(&s, None).full("h1"));
    assert_eq!(after.full("h1").unwrap().networks[0].endpoints.len(), 1);
}

#[test]
fn removed_host_disappears_from_peers() {
    let mut s = setup();
    s.apply(Command::RemoveHost { name: "h2".into() }).result.unwrap();
    let d = for_host(&s, "h1").unwrap();
    let peers: Vec<_> = d.networks[0].peers.iter().map(|p| p.host.as_str()).collect();
    assert_eq!(peers, ["h3"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every host that follows the stream (full state, then deltas, skipping revisions that
    /// do not concern it) ends up with exactly the full state computed directly.
    #[test]
    fn full_plus_deltas_equals_full(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = ClusterState::default();
        let mut model = Model::build(&s, None);
        let hosts: Vec<String> = (0..6).map(|h| format!("h{h}")).collect();
        // Per host: (the model it last received, the state it holds).
        let mut followers: BTreeMap<String, (Arc<Model>, pb::HostDesiredState)> = BTreeMap::new();
        let shared = Arc::new(std::mem::take(&mut model));
        let mut current = shared;
        for op in &ops {
            let cmd = to_command_in(&s, op);
            s.apply(cmd);
            current = Arc::new(Model::build(&s, Some(&current)));
            for h in &hosts {
                if !current.has_host(h) {
                    followers.remove(h);
                    continue;
                }
                match followers.get_mut(h) {
                    None => {
                        let mut state = pb::HostDesiredState::default();
                        overlay_proto::watch::apply(&mut state, current.full_event(h).unwrap()).unwrap();
                        followers.insert(h.clone(), (current.clone(), state));
                    }
                    Some((seen, state)) => {
                        if let Some(event) = current.delta(seen, h) {
                            overlay_proto::watch::apply(state, event).unwrap();
                            *seen = current.clone();
                        }
                        let mut expect = current.full(h).unwrap();
                        // The incremental model says what a model built from scratch says.
                        let scratch = Model::build(&s, None).full(h).unwrap();
                        prop_assert_eq!(&expect, &scratch, "incremental model of {} after {:?}", h, op);
                        // A host that received nothing keeps its older revision number.
                        expect.revision = state.revision;
                        prop_assert_eq!(&*state, &expect, "host {} after {:?}", h, op);
                    }
                }
            }
        }
    }
}

/// Endpoint records that change in place (the agent moves a default route, renames, a request
/// gets its address, a report turns failed): each host following the stream still holds
/// exactly the state computed from scratch.
#[derive(Clone, Debug)]
enum RecordOp {
    Report {
        net: u8,
        host: u8,
        key: u8,
        default_route: bool,
        named: bool,
    },
    Remove {
        host: u8,
        key: u8,
    },
    Request {
        net: u8,
        host: u8,
        ns: u8,
    },
    Detach {
        net: u8,
        host: u8,
        ns: u8,
    },
    /// The agent carries out the request in namespace .ns.
    CarryOut {
        net: u8,
        host: u8,
        ns: u8,
    },
}

fn record_op() -> impl Strategy<Value = RecordOp> {
    prop_oneof![
        (0u8..3, 0u8..2, 0u8..4, any::<bool>(), any::<bool>()).prop_map(
            |(net, host, key, default_route, named)| {
                RecordOp::Report {
                    net,
                    host,
                    key,
                    default_route,
                    named,
                }
            }
        ),
        (0u8..2, 0u8..4).prop_map(|(host, key)| RecordOp::Remove { host, key }),
        (0u8..3, 0u8..2, 0u8..3).prop_map(|(net, host, ns)| RecordOp::Request { net, host, ns }),
        (0u8..3, 0u8..2, 0u8..3).prop_map(|(net, host, ns)| RecordOp::Detach { net, host, ns }),
        (0u8..3, 0u8..2, 0u8..3).prop_map(|(net, host, ns)| RecordOp::CarryOut { net, host, ns }),
    ]
}

fn record_command(s: &ClusterState, op: &RecordOp) -> Option<Command> {
    let endpoint =
        |net: u8, host: u8, key: String, netns: String, offset: u8, default_route: bool, named: bool| {
            HostEndpoint {
                key,
                host_id: u64::from(offset),
                network: format!("n{net}"),
                netns,
                ifname: format!("eth{net}"),
                ip: format!("10.{net}.{host}.{}", 2 + offset).parse().unwrap(),
                default_route,
                owner: "cni".into(),
                names: if named { vec!["web".into()] } else { vec![] },
                ports: vec![],
                status: EndpointStatus::Ready,
            }
        };
    let sync = |host: u8, upsert: Vec<HostEndpoint>, remove: Vec<String>| Command::SyncEndpoints {
        host: format!("h{host}"),
        full: false,
        upsert,
        remove,
        failed: vec![],
        now_ms: 1,
    };
    Some(match *op {
        RecordOp::Report {
            net,
            host,
            key,
            default_route,
            named,
        } => sync(
            host,
            vec![endpoint(
                net,
                host,
                format!("k{key}"),
                format!("/run/netns/k{key}"),
                key,
                default_route,
                named,
            )],
            vec![],
        ),
        RecordOp::Remove { host, key } => sync(host, vec![], vec![format!("k{key}")]),
        RecordOp::Request { net, host, ns } => Command::RequestEndpoint {
            network: format!("n{net}"),
            host: format!("h{host}"),
            netns: format!("w{ns}"),
            ifname: format!("e{net}"),
            ip: None,
            default_route: false,
            names: vec![],
            ports: vec![],
            now_ms: 1,
        },
        RecordOp::Detach { net, host, ns } => Command::DetachEndpoint {
            network: format!("n{net}"),
            host: format!("h{host}"),
            netns: format!("w{ns}"),
        },
        RecordOp::CarryOut { net, host, ns } => {
            let req = s
                .endpoints_of(&format!("n{net}"), &format!("h{host}"))
                .find(|e| e.is_request() && e.netns == format!("w{ns}"))?;
            sync(
                host,
                vec![endpoint(
                    net,
                    host,
                    req.key.clone(),
                    req.netns.clone(),
                    10 + ns,
                    true,
                    false,
                )],
                vec![],
            )
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn changed_records_reach_every_follower(
        ops in proptest::collection::vec(record_op(), 1..60),
        batch in 1usize..4,
    ) {
        let mut s = ClusterState::default();
        for h in 0..2 {
            s.apply(Command::RegisterHost {
                instance: String::new(),
                claim_timeout_ms: 0,
                name: format!("h{h}"),
                underlay_ip: format!("192.0.2.{}", 20 + h).parse().unwrap(),
                underlay_iface: "eth0".into(),
                underlay_mtu: 1500,
                now_ms: 0,
            });
        }
        for n in 0..3 {
            s.apply(Command::CreateNetwork {
                spec: NetworkSpec {
                    cidr6: None,
                    host_prefix6: None,
                    name: format!("n{n}"),
                    mode: Mode::Vxlan,
                    cidr: format!("10.{n}.0.0/16").parse().unwrap(),
                    host_prefix: None,
                    vni: None,
                    mtu: None,
                    nat_egress: false,
                    direct_routing: false,
                    macvlan: None,
                },
                now_ms: 0,
            });
        }
        let mut model = Arc::new(Model::build(&s, None));
        let mut followers: Vec<(Arc<Model>, pb::HostDesiredState)> = (0..2)
            .map(|h| {
                let mut state = pb::HostDesiredState::default();
                overlay_proto::watch::apply(&mut state, model.full_event(&format!("h{h}")).unwrap()).unwrap();
                (model.clone(), state)
            })
            .collect();
        // Several commands per model build, as when writes arrive faster than it rebuilds.
        for chunk in ops.chunks(batch) {
            for op in chunk {
                if let Some(cmd) = record_command(&s, op) {
                    s.apply(cmd);
                }
            }
            model = Arc::new(Model::build(&s, Some(&model)));
            for (h, (seen, state)) in followers.iter_mut().enumerate() {
                let host = format!("h{h}");
                if let Some(event) = model.delta(seen, &host) {
                    overlay_proto::watch::apply(state, event).unwrap();
                    *seen = model.clone();
                }
                let scratch = Model::build(&s, None).full(&host).unwrap();
                let mut expect = model.full(&host).unwrap();
                prop_assert_eq!(&expect, &scratch, "incremental model of {} after {:?}", host, chunk);
                expect.revision = state.revision;
                prop_assert_eq!(&*state, &expect, "host {} after {:?}", host, chunk);
            }
        }
    }
}
