//! The reconciler against a real kernel (root): inside a throw-away host namespace it builds
//! the datapath, then a second pass changes nothing, a deleted entry is put back, and a peer
//! that leaves takes exactly its entries with it.

use std::time::Duration;

use overlay_agent::netlink::Netlink;
use overlay_agent::netns;
use overlay_agent::reconcile::{PassReport, Reconciler, Underlay};
use overlay_agent::spec::{HostSpec, NetnsRef};
use overlay_lab::netns::{Namespaces, exec, stdout, unique_prefix};
use overlay_proto::v1 as pb;

fn desired(workload_ns: &str, peers: &[(&str, &str, &str, &str)]) -> pb::HostDesiredState {
    pb::HostDesiredState {
        revision: 1,
        host_name: "h1".into(),
        underlay_ip: "192.0.2.21".into(),
        vtep_mac: "02:aa:00:00:00:01".into(),
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
            peers: peers
                .iter()
                .map(|(host, ip, mac, subnet)| pb::Peer {
                    host: host.to_string(),
                    underlay_ip: ip.to_string(),
                    vtep_mac: mac.to_string(),
                    subnet: subnet.to_string(),
                    ..Default::default()
                })
                .collect(),
            endpoints: vec![pb::LocalEndpoint {
                id: 7,
                netns: workload_ns.into(),
                ifname: "eth0".into(),
                address: "10.1.0.2/24".into(),
                mac: "0a:58:0a:01:00:02".into(),
                gateway: "10.1.0.1".into(),
                host_ifname: "ovv-7".into(),
                default_route: Some(true),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

const PEERS: [(&str, &str, &str, &str); 2] = [
    ("h2", "192.0.2.22", "02:aa:00:00:00:02", "10.1.1.0/24"),
    ("h3", "192.0.2.23", "02:aa:00:00:00:03", "10.1.2.0/24"),
];

/// A step of the scenario: a reconcile pass, or a change made behind the agent's back.
enum Step {
    Pass(HostSpec),
    Meddle(Box<dyn FnOnce() + Send>),
}

/// Runs the steps inside `host_ns` on one reconciler (like the agent's own loop); returns the
/// report of every pass.
fn run(host_ns: &str, steps: Vec<Step>) -> Vec<PassReport> {
    let file = netns::open(&NetnsRef::Named(host_ns.to_string()))
        .expect("host ns")
        .into_file();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(netns::run_in(
        file,
        host_ns.to_string(),
        move |nl: Netlink| async move {
            let underlay = Underlay {
                iface: "eth0".into(),
                ip: "192.0.2.21".parse().unwrap(),
                mtu: 1500,
            };
            let mut r = Reconciler::new(nl, underlay, None);
            let mut reports = Vec::new();
            for step in steps {
                match step {
                    Step::Pass(spec) => reports.push(r.pass(&spec, true).await?),
                    Step::Meddle(f) => f(),
                }
            }
            Ok::<_, overlay_agent::reconcile::ReconcileError>(reports)
        },
    ))
    .expect("reconcile passes")
}

/// A host namespace whose underlay NIC `eth0` (192.0.2.21/24) is a veth into a stub
/// namespace (the kernel here has no dummy driver), and an empty workload namespace; all
/// three go when the returned guard does.
fn host_with_underlay(tag: &str) -> (Namespaces, String, String) {
    let prefix = unique_prefix(tag);
    let mut namespaces = Namespaces::default();
    let host = format!("{prefix}-h1");
    let workload = format!("{prefix}-w1");
    let underlay = format!("{prefix}-ul");
    namespaces.add(&underlay).unwrap();
    namespaces.add(&host).unwrap();
    namespaces.add(&workload).unwrap();
    exec(
        &host,
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "ul0", "netns", &underlay,
        ],
    )
    .unwrap();
    exec(&host, "ip", &["addr", "add", "192.0.2.21/24", "dev", "eth0"]).unwrap();
    exec(&host, "ip", &["link", "set", "eth0", "up"]).unwrap();
    (namespaces, host, workload)
}

#[test]
fn reconcile_converges_is_idempotent_and_repairs() {
    let (_namespaces, host, workload) = host_with_underlay("rk");

    let spec = HostSpec::from_proto(&desired(&workload, &PEERS), "192.0.2.21".parse().unwrap());
    let fewer = HostSpec::from_proto(&desired(&workload, &PEERS[..1]), "192.0.2.21".parse().unwrap());

    let (h, w) = (host.clone(), workload.clone());
    let (h1, w1, h3, h4) = (host.clone(), workload.clone(), host.clone(), host.clone());
    let empty = HostSpec {
        revision: 3,
        host_name: "h1".into(),
        ..Default::default()
    };
    let reports = run(
        &host,
        vec![
            // 0: builds everything. 1: nothing to do.
            Step::Pass(spec.clone()),
            Step::Meddle(Box::new(move || {
                let fdb = stdout(&exec(&h1, "bridge", &["fdb", "show", "dev", "ovx-1"]).unwrap());
                assert_eq!(
                    fdb.lines().filter(|l| l.contains("self permanent")).count(),
                    2,
                    "{fdb}"
                );
                let inside = stdout(&exec(&w1, "ip", &["-4", "addr", "show", "eth0"]).unwrap());
                assert!(inside.contains("10.1.0.2/24"), "{inside}");
                let route = stdout(&exec(&w1, "ip", &["route", "show", "default"]).unwrap());
                assert!(route.contains("via 10.1.0.1 dev eth0"), "{route}");
            })),
            Step::Pass(spec.clone()),
            // 2: an FDB entry and the workload's address vanish behind the agent's back.
            Step::Meddle(Box::new(move || {
                exec(
                    &h,
                    "bridge",
                    &[
                        "fdb",
                        "del",
                        "02:aa:00:00:00:02",
                        "dev",
                        "ovx-1",
                        "dst",
                        "192.0.2.22",
                        "self",
                    ],
                )
                .unwrap();
                exec(&w, "ip", &["addr", "flush", "dev", "eth0"]).unwrap();
            })),
            Step::Pass(spec.clone()),
            Step::Meddle(Box::new(move || {
                let fdb = stdout(&exec(&h3, "bridge", &["fdb", "show", "dev", "ovx-1"]).unwrap());
                assert!(
                    fdb.contains("02:aa:00:00:00:02 dst 192.0.2.22 self permanent"),
                    "{fdb}"
                );
            })),
            // 3: a peer leaves.
            Step::Pass(fewer),
            Step::Meddle(Box::new(move || {
                let routes = stdout(&exec(&h4, "ip", &["route", "show", "proto", "79"]).unwrap());
                assert!(
                    routes.contains("10.1.1.0/24") && !routes.contains("10.1.2.0/24"),
                    "{routes}"
                );
            })),
            // 4: no networks left.
            Step::Pass(empty),
        ],
    );
    assert!(reports[0].errors.is_empty(), "{:?}", reports[0].errors);
    assert!(
        reports[0].changes >= 10,
        "first pass built the datapath: {:?}",
        reports[0]
    );
    assert_eq!(reports[0].endpoints.get(&7), Some(&Ok(())));
    assert_eq!(
        reports[1].changes, 0,
        "a converged kernel must not be touched: {:?}",
        reports[1]
    );
    println!(
        "first pass: {} changes in {:?}; second pass: 0 changes in {:?}",
        reports[0].changes, reports[0].took, reports[1].took
    );
    // The FDB entry, the address and the default route that went with it: exactly three.
    assert_eq!(
        reports[2].changes, 3,
        "exactly the missing things are repaired: {:?}",
        reports[2]
    );
    // The leaving peer's neighbour, FDB entry and route, and its address in the firewall's
    // VXLAN allow list.
    assert_eq!(reports[3].changes, 4, "{:?}", reports[3]);
    assert!(reports[4].errors.is_empty(), "{:?}", reports[4].errors);

    // No networks left: every overlay device and the firewall table are removed.
    std::thread::sleep(Duration::from_millis(100));
    let links = stdout(&exec(&host, "ip", &["-o", "link"]).unwrap());
    assert!(
        !links.contains("ovb-") && !links.contains("ovx-") && !links.contains("ovv-"),
        "{links}"
    );
    let tables = stdout(&exec(&host, "nft", &["list", "tables"]).unwrap());
    assert!(!tables.contains("overlay"), "{tables}");
}

/// [`desired`] made dual-stack: the network's IPv6 CIDR, this host's /64 and gateway, each
/// peer's /64 (the n-th peer's is `fd00:10:0:<n+1>::/64`) and the endpoint's paired address.
fn dual_stack(workload_ns: &str, peers: &[(&str, &str, &str, &str)]) -> pb::HostDesiredState {
    let mut d = desired(workload_ns, peers);
    let n = &mut d.networks[0];
    n.cidr6 = "fd00:10::/48".into();
    n.subnet6 = "fd00:10::/64".into();
    n.gateway6 = "fd00:10::1".into();
    for (i, p) in n.peers.iter_mut().enumerate() {
        p.subnet6 = format!("fd00:10:0:{}::/64", i + 1);
    }
    n.endpoints[0].address6 = "fd00:10::2/64".into();
    n.endpoints[0].gateway6 = "fd00:10::1".into();
    d
}

/// The IPv6 half of a dual-stack network against a real kernel: built in one pass, untouched
/// by the next, repaired when an entry vanishes, and a leaving peer takes its entries along.
#[test]
fn dual_stack_converges_is_idempotent_and_repairs() {
    let (_namespaces, host, workload) = host_with_underlay("rd");

    let ul: std::net::IpAddr = "192.0.2.21".parse().unwrap();
    let spec = HostSpec::from_proto(&dual_stack(&workload, &PEERS), ul);
    assert!(spec.rejected.is_empty(), "{:?}", spec.rejected);
    let fewer = HostSpec::from_proto(&dual_stack(&workload, &PEERS[..1]), ul);
    let (h1, w1, h2, h3) = (host.clone(), workload.clone(), host.clone(), host.clone());
    let reports = run(
        &host,
        vec![
            Step::Pass(spec.clone()),
            Step::Meddle(Box::new(move || {
                let show = |args: &[&str]| stdout(&exec(&h1, "ip", args).unwrap());
                let bridge = show(&["-6", "addr", "show", "dev", "ovb-1"]);
                assert!(bridge.contains("fd00:10::1/64"), "{bridge}");
                let vx = show(&["-6", "addr", "show", "dev", "ovx-1"]);
                assert!(vx.contains("fd00:10::/128"), "{vx}");
                let neigh = show(&["-6", "neigh", "show", "dev", "ovx-1", "nud", "permanent"]);
                assert!(
                    neigh.contains("fd00:10:0:1:: lladdr 02:aa:00:00:00:02")
                        && neigh.contains("fd00:10:0:2:: lladdr 02:aa:00:00:00:03"),
                    "{neigh}"
                );
                let routes = show(&["-6", "route", "show", "proto", "79"]);
                assert!(
                    routes.contains("fd00:10:0:1::/64 via fd00:10:0:1:: dev ovx-1")
                        && routes.contains("fd00:10:0:2::/64 via fd00:10:0:2:: dev ovx-1")
                        && routes.contains("onlink"),
                    "{routes}"
                );
                let inside = stdout(&exec(&w1, "ip", &["-6", "addr", "show", "eth0"]).unwrap());
                assert!(inside.contains("fd00:10::2/64"), "{inside}");
                let route = stdout(&exec(&w1, "ip", &["-6", "route", "show", "default"]).unwrap());
                assert!(route.contains("via fd00:10::1 dev eth0"), "{route}");
            })),
            Step::Pass(spec.clone()),
            // A route and a neighbour vanish behind the agent's back.
            Step::Meddle(Box::new(move || {
                exec(&h2, "ip", &["-6", "route", "del", "fd00:10:0:1::/64"]).unwrap();
                exec(
                    &h2,
                    "ip",
                    &["-6", "neigh", "del", "fd00:10:0:2::", "dev", "ovx-1"],
                )
                .unwrap();
            })),
            Step::Pass(spec.clone()),
            Step::Pass(fewer),
            Step::Meddle(Box::new(move || {
                let routes = stdout(&exec(&h3, "ip", &["-6", "route", "show", "proto", "79"]).unwrap());
                assert!(
                    routes.contains("fd00:10:0:1::/64") && !routes.contains("fd00:10:0:2::/64"),
                    "{routes}"
                );
                let neigh = stdout(
                    &exec(
                        &h3,
                        "ip",
                        &["-6", "neigh", "show", "dev", "ovx-1", "nud", "permanent"],
                    )
                    .unwrap(),
                );
                assert!(!neigh.contains("fd00:10:0:2::"), "{neigh}");
            })),
        ],
    );
    for r in &reports {
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    assert_eq!(reports[0].endpoints.get(&7), Some(&Ok(())));
    assert_eq!(
        reports[1].changes, 0,
        "a converged kernel must not be touched: {:?}",
        reports[1]
    );
    assert_eq!(
        reports[2].changes, 2,
        "exactly the two vanished entries: {:?}",
        reports[2]
    );
}
