//! Desired-state tests: what one host sees, and the Watch protocol's core property: for every
//! host, its previous full state plus the delta equals its new full state, whatever happened
//! in between.

use proptest::prelude::*;

use super::*;
use crate::model::NetworkSpec;
use crate::state::Command;
use crate::state::tests::{op, to_command};

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
            name: "blue".into(),
            mode: Mode::Vxlan,
            cidr: "10.1.0.0/16".parse().unwrap(),
            host_prefix: None,
            vni: Some(42),
            mtu: None,
            nat_egress: false,
            macvlan: None,
        },
        now_ms: 0,
    });
    for (h, ns) in [("h1", "a"), ("h2", "b"), ("h1", "c")] {
        s.apply(Command::AttachEndpoint {
            network: "blue".into(),
            host: h.into(),
            netns: ns.into(),
            ifname: "eth0".into(),
            ip: None,
            now_ms: 0,
            default_route: false,
        })
        .result
        .unwrap();
    }
    s
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
    s.apply(Command::AttachEndpoint {
        network: "blue".into(),
        host: "h2".into(),
        netns: "z".into(),
        ifname: "eth0".into(),
        ip: None,
        now_ms: 0,
        default_route: false,
    })
    .result
    .unwrap();
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
            s.apply(to_command(op));
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

/// A namespace on several networks, its default route moving with every attach
/// `--default-route`, detach and release: each host following the stream still holds exactly
/// the state computed from scratch (the flag is part of what the agent programs).
#[derive(Clone, Debug)]
enum NsOp {
    Attach {
        net: u8,
        host: u8,
        ns: u8,
        default_route: bool,
    },
    Detach {
        net: u8,
        host: u8,
        ns: u8,
    },
    /// The host's agent reports the endpoint gone, then releases it.
    Release {
        host: u8,
        id: u8,
    },
}

fn ns_op() -> impl Strategy<Value = NsOp> {
    prop_oneof![
        (0u8..3, 0u8..2, 0u8..3, any::<bool>()).prop_map(|(net, host, ns, default_route)| NsOp::Attach {
            net,
            host,
            ns,
            default_route
        }),
        (0u8..3, 0u8..2, 0u8..3).prop_map(|(net, host, ns)| NsOp::Detach { net, host, ns }),
        (0u8..2, 0u8..30).prop_map(|(host, id)| NsOp::Release { host, id }),
    ]
}

fn ns_commands(op: &NsOp) -> Vec<Command> {
    match *op {
        NsOp::Attach {
            net,
            host,
            ns,
            default_route,
        } => vec![Command::AttachEndpoint {
            network: format!("n{net}"),
            host: format!("h{host}"),
            netns: format!("w{ns}"),
            ifname: format!("eth{net}"),
            ip: None,
            now_ms: 1,
            default_route,
        }],
        NsOp::Detach { net, host, ns } => vec![Command::DetachEndpoint {
            network: format!("n{net}"),
            host: format!("h{host}"),
            netns: format!("w{ns}"),
        }],
        NsOp::Release { host, id } => vec![
            Command::ReportEndpoints {
                host: format!("h{host}"),
                statuses: vec![(u64::from(id), crate::model::EndpointStatus::Gone("gone".into()))],
            },
            Command::ReleaseEndpoint {
                host: format!("h{host}"),
                id: u64::from(id),
            },
        ],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn moving_default_routes_reach_every_follower(
        ops in proptest::collection::vec(ns_op(), 1..60),
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
                    name: format!("n{n}"),
                    mode: Mode::Vxlan,
                    cidr: format!("10.{n}.0.0/16").parse().unwrap(),
                    host_prefix: None,
                    vni: None,
                    mtu: None,
                    nat_egress: false,
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
                for cmd in ns_commands(op) {
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
                // And the agent sees one default route per namespace.
                let mut per_ns: BTreeMap<&str, usize> = BTreeMap::new();
                for e in state.networks.iter().flat_map(|n| n.endpoints.iter()) {
                    *per_ns.entry(e.netns.as_str()).or_default() += usize::from(e.default_route == Some(true));
                }
                prop_assert!(per_ns.values().all(|n| *n == 1), "{:?}", per_ns);
            }
        }
    }
}
