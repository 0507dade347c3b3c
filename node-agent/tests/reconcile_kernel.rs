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

#[test]
fn reconcile_converges_is_idempotent_and_repairs() {
    let prefix = unique_prefix("rk");
    let mut namespaces = Namespaces::default();
    let host = format!("{prefix}-h1");
    let workload = format!("{prefix}-w1");
    let underlay = format!("{prefix}-ul");
    namespaces.add(&underlay).unwrap();
    namespaces.add(&host).unwrap();
    namespaces.add(&workload).unwrap();
    // The kernel here has no dummy driver: the underlay NIC is a veth into a stub namespace.
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
