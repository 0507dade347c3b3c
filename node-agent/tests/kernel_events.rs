//! The kernel notification sockets against a real kernel (root), each test in a throw-away
//! namespace: changes to overlay's devices, entries, routes and nftables table wake the agent,
//! unrelated churn does not, and an overflowing socket (ENOBUFS) is reported and survived.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use overlay_agent::events::{Changes, EventsOptions, KernelEvents};
use overlay_agent::netlink::Netlink;
use overlay_agent::spec::HostSpec;
use overlay_lab::netns::{Namespaces, unique_prefix};
use overlay_proto::v1 as pb;
use tokio::sync::watch;

/// Runs `work` on a thread inside a fresh namespace, on a single-threaded runtime (so a
/// blocking command really keeps the reader tasks from running).
fn in_fresh_netns<F, Fut>(tag: &str, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let mut namespaces = Namespaces::default();
    let ns = format!("{}-ev", unique_prefix(tag));
    namespaces.add(&ns).expect("namespace");
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open namespace");
    let joined = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work());
    })
    .join();
    drop(namespaces);
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

/// Runs a command in the calling thread's namespace; it must succeed.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &str) {
    sh("ip", &args.split_whitespace().collect::<Vec<_>>());
}

/// A desired state with one vxlan network, 10.9.0.0/16: routes into it concern overlay.
fn spec() -> Arc<HostSpec> {
    let desired = pb::HostDesiredState {
        revision: 1,
        host_name: "h1".into(),
        underlay_ip: "192.0.2.5".into(),
        vtep_mac: "02:aa:00:00:00:01".into(),
        networks: vec![pb::NetworkState {
            name: "blue".into(),
            id: 1,
            mode: pb::NetworkMode::Vxlan as i32,
            cidr: "10.9.0.0/16".into(),
            subnet: "10.9.0.0/24".into(),
            gateway: "10.9.0.1".into(),
            vni: 4096,
            mtu: 1450,
            bridge_name: "ovb-1".into(),
            vxlan_name: "ovx-1".into(),
            ..Default::default()
        }],
    };
    let spec = HostSpec::from_proto(&desired, "192.0.2.5".parse().unwrap());
    assert_eq!(spec.networks.len(), 1, "{:?}", spec.rejected);
    Arc::new(spec)
}

/// A host namespace with an underlay (veth d0/d1) and a vxlan device of overlay's, made
/// before the sockets open: the filter must know it from its first listing.
fn host() {
    ip("link add d0 type veth peer name d1");
    ip("addr add 192.0.2.5/24 dev d0");
    ip("link set d0 up");
    ip("link set d1 up");
    ip("link add ovx-1 type vxlan id 4096 dstport 4789 local 192.0.2.5 dev d0 nolearning");
    ip("link set ovx-1 up");
}

async fn start(options: EventsOptions) -> (KernelEvents, watch::Sender<Option<Arc<HostSpec>>>) {
    let nl = Netlink::connect().expect("netlink");
    let (tx, rx) = watch::channel(Some(spec()));
    let events = KernelEvents::start(&nl, rx, None, options)
        .await
        .expect("subscribe");
    (events, tx)
}

/// The next report, which must come within a generous bound.
async fn expect(events: &mut KernelEvents, want: Changes, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no notification"));
    assert!(got.contains(want), "{what}: got {got}, want {want}");
}

/// Nothing may be reported for a while after unrelated churn.
async fn expect_quiet(events: &mut KernelEvents, what: &str) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        panic!("{what}: woke the agent with {got}");
    }
}

#[test]
fn overlay_changes_wake_the_agent_and_unrelated_churn_does_not() {
    in_fresh_netns("kev", || async {
        host();
        let (mut events, _spec) = start(EventsOptions::default()).await;

        // Churn that is none of overlay's business: another device's routes, addresses,
        // neighbours and state; a covering route; another nftables table.
        ip("route add 198.51.100.0/24 dev d0");
        ip("route add 10.0.0.0/8 dev d0");
        ip("addr add 203.0.113.5/24 dev d1");
        ip("neigh add 192.0.2.77 lladdr 02:00:00:00:00:77 dev d0");
        ip("link set d1 mtu 1400");
        ip("link add other0 type bridge");
        sh("nft", &["add", "table", "ip", "other"]);
        sh("nft", &["add", "chain", "ip", "other", "c"]);
        sh("nft", &["delete", "table", "ip", "other"]);
        sh("nft", &["add", "table", "inet", "overlay2"]);
        expect_quiet(&mut events, "unrelated churn").await;

        // Overlay's entries on its vxlan device, one kind at a time.
        ip("route add 10.9.2.0/24 via 10.9.2.0 dev ovx-1 onlink proto 79");
        expect(&mut events, Changes::ROUTE, "peer route added").await;
        ip("neigh replace 10.9.2.0 lladdr 02:aa:00:00:00:02 dev ovx-1 nud permanent");
        expect(&mut events, Changes::NEIGHBOUR, "neighbour added").await;
        sh(
            "bridge",
            &[
                "fdb",
                "append",
                "02:aa:00:00:00:02",
                "dev",
                "ovx-1",
                "dst",
                "192.0.2.9",
                "self",
                "permanent",
            ],
        );
        expect(&mut events, Changes::FDB, "fdb entry added").await;
        sh(
            "bridge",
            &[
                "fdb",
                "del",
                "02:aa:00:00:00:02",
                "dev",
                "ovx-1",
                "dst",
                "192.0.2.9",
                "self",
            ],
        );
        expect(&mut events, Changes::FDB, "fdb entry deleted").await;
        ip("neigh del 10.9.2.0 dev ovx-1");
        expect(&mut events, Changes::NEIGHBOUR, "neighbour deleted").await;
        ip("route del 10.9.2.0/24");
        expect(&mut events, Changes::ROUTE, "peer route deleted").await;
        // Somebody else's route into an overlay network, through a foreign device.
        ip("route add 10.9.7.0/24 dev d0");
        expect(&mut events, Changes::ROUTE, "foreign route into the network").await;
        ip("addr add 10.9.0.0/32 dev ovx-1");
        expect(&mut events, Changes::ADDRESS, "vtep address").await;
        ip("link set ovx-1 down");
        expect(&mut events, Changes::LINK, "vxlan device down").await;

        // A device made after the start is followed too, and a deleted one forgotten.
        ip("link add ovb-3 type bridge");
        expect(&mut events, Changes::LINK, "bridge created").await;
        ip("addr add 10.9.3.1/24 dev ovb-3");
        expect(&mut events, Changes::ADDRESS, "bridge address").await;
        ip("link del ovx-1");
        expect(&mut events, Changes::LINK, "vxlan device deleted").await;
        ip("link add ovx-1 type vxlan id 4096 dstport 4789 local 192.0.2.5 dev d0 nolearning");
        expect(&mut events, Changes::LINK, "vxlan device re-created").await;
        ip("neigh replace 10.9.2.0 lladdr 02:aa:00:00:00:02 dev ovx-1 nud permanent");
        expect(&mut events, Changes::NEIGHBOUR, "neighbour on the new device").await;

        // overlay's nftables table, whatever its family.
        sh("nft", &["add", "table", "ip", "overlay"]);
        expect(&mut events, Changes::NFT, "table created").await;
        sh("nft", &["add", "chain", "ip", "overlay", "forward"]);
        expect(&mut events, Changes::NFT, "chain added").await;
        sh("nft", &["delete", "table", "ip", "overlay"]);
        expect(&mut events, Changes::NFT, "table deleted").await;
        sh("nft", &["add", "table", "inet", "overlay"]);
        expect(&mut events, Changes::NFT, "inet table created").await;
        expect_quiet(&mut events, "after the last change").await;
    });
}

#[test]
fn an_overflowing_socket_is_reported_and_survived() {
    in_fresh_netns("kov", || async {
        host();
        // The smallest buffer the kernel allows: a few dozen notifications.
        let (mut events, _spec) = start(EventsOptions {
            rx_buffer: 1,
            ..EventsOptions::default()
        })
        .await;
        // 3000 route changes while the reader cannot run (this thread blocks in `ip`): the
        // kernel drops what does not fit and the next read fails with ENOBUFS.
        let batch: String = (0..1500)
            .map(|i| format!("route add 198.51.{}.{}/32 dev d0\n", 100 + i / 250, i % 250))
            .chain((0..1500).map(|i| format!("route del 198.51.{}.{}/32 dev d0\n", 100 + i / 250, i % 250)))
            .collect();
        let path = std::env::temp_dir().join(format!("kev-batch-{}", std::process::id()));
        std::fs::write(&path, batch).expect("write batch");
        sh("ip", &["-batch", path.to_str().expect("path")]);
        let _ = std::fs::remove_file(&path);
        expect(&mut events, Changes::OVERFLOW, "overflow").await;
        // Overflows of unrelated churn alone are reported at most once per gap; the socket
        // still works: a relevant change right after is reported.
        ip("route add 10.9.2.0/24 via 10.9.2.0 dev ovx-1 onlink proto 79");
        expect(&mut events, Changes::ROUTE, "route after the overflow").await;
    });
}

/// Port ids of this namespace's rtnetlink sockets subscribed to exactly the agent's groups
/// (link, neighbour, IPv4 and IPv6 address, IPv4 and IPv6 route: 0x555), from
/// /proc/thread-self/net/netlink.
fn agent_route_ports() -> Vec<u32> {
    let table = std::fs::read_to_string("/proc/thread-self/net/netlink").expect("netlink table");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"0") && f.get(3) == Some(&"00000555"))
                .then(|| f.get(2).and_then(|p| p.parse().ok()))
                .flatten()
        })
        .collect()
}

#[test]
fn forged_notifications_from_a_process_are_ignored() {
    use rtnetlink::packet_core::{Emitable, NetlinkHeader, NetlinkMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
    use rtnetlink::sys::protocols::NETLINK_ROUTE;
    use rtnetlink::sys::{Socket, SocketAddr};

    in_fresh_netns("kfg", || async {
        host();
        let (mut events, _spec) = start(EventsOptions::default()).await;
        let ports = agent_route_ports();
        assert_eq!(ports.len(), 1, "the agent's socket is listed: {ports:?}");
        // Any process of the namespace may send unicast to a netlink port: a "route deleted"
        // that looks like overlay's own (protocol 79), sent straight to the agent's socket.
        let mut route = RouteMessage::default();
        route.header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
        route.header.destination_prefix_length = 24;
        route.header.protocol = RouteProtocol::from(79);
        route.header.table = 254;
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                "10.9.2.0".parse().unwrap(),
            )));
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            RouteNetlinkMessage::DelRoute(route).into(),
        );
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        let mut forger = Socket::new(NETLINK_ROUTE).expect("socket");
        forger.bind_auto().expect("bind");
        for _ in 0..100 {
            forger
                .send_to(&bytes, &SocketAddr::new(ports[0], 0), 0)
                .expect("the kernel delivers it");
        }
        expect_quiet(&mut events, "forged notifications").await;
        // The socket still hears the kernel.
        ip("route add 10.9.2.0/24 via 10.9.2.0 dev ovx-1 onlink proto 79");
        expect(
            &mut events,
            Changes::ROUTE,
            "a real route change after the forgeries",
        )
        .await;
    });
}

/// Waits until `counter` differs from `from` (a notification was counted).
async fn counted(counter: &std::sync::atomic::AtomicU64, from: u64, what: &str) {
    let started = std::time::Instant::now();
    while counter.load(std::sync::atomic::Ordering::Acquire) == from {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: not counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn a_pass_plans_from_the_last_dump_until_a_change_concerning_overlay_is_heard() {
    use overlay_agent::reconcile::{Reconciler, Underlay};
    in_fresh_netns("ksnap", || async {
        host();
        let (mut events, _spec) = start(EventsOptions::default()).await;
        let counter = events.rtnl_changes();
        let underlay = Underlay {
            iface: "d0".into(),
            ip: "192.0.2.5".parse().unwrap(),
            mtu: 1500,
        };
        let nl = Netlink::connect().expect("netlink");
        let mut r = Reconciler::new(nl, underlay, None).with_kernel_changes(counter.clone());
        let spec = spec();

        // The first pass makes the bridge: it dumped, and its own writes make what it saw
        // stale.
        let first = r.pass(&spec, false).await.expect("first pass");
        assert!(!first.snapshot_reused);
        assert!(first.changes > 0, "the first pass made nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = events.take();
        let again = r.pass(&spec, false).await.expect("pass after own writes");
        assert!(
            !again.snapshot_reused,
            "a pass after the agent's own writes must dump"
        );

        // A look (audit) at the converged kernel: the next pass plans from it, also after
        // churn that is none of overlay's business.
        assert_eq!(r.audit(&spec).await.expect("audit"), Vec::<String>::new());
        ip("route add 198.51.100.0/24 dev d0");
        ip("link add other1 type bridge");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reused = r.pass(&spec, false).await.expect("pass after a look");
        assert!(
            reused.snapshot_reused,
            "nothing of overlay's changed: the look's dump serves"
        );
        assert!(reused.errors.is_empty(), "{:?}", reused.errors);

        // A write of the agent's made outside a pass (the Docker plugin's veth pairs): its
        // notifications may be unread when the spec that needs it arrives, so no reuse.
        r.audit(&spec).await.expect("audit");
        overlay_agent::kernel::wrote_outside_a_pass();
        let after_outside = r.pass(&spec, false).await.expect("pass after an outside write");
        assert!(
            !after_outside.snapshot_reused,
            "a write outside the pass must make the next pass dump"
        );

        // Behind the agent's back: its bridge goes down. Once counted, a pass dumps again and
        // repairs it.
        r.audit(&spec).await.expect("audit");
        let before = counter.load(std::sync::atomic::Ordering::Acquire);
        ip("link set ovb-1 down");
        counted(&counter, before, "bridge down").await;
        let repaired = r.pass(&spec, false).await.expect("repair pass");
        assert!(
            !repaired.snapshot_reused,
            "a counted change must make the pass dump"
        );
        assert!(repaired.changes > 0, "the bridge was not brought back up");
        let nl = Netlink::connect().expect("netlink");
        let bridge = nl.link_by_name("ovb-1").await.expect("lookup").expect("ovb-1");
        assert!(bridge.up, "ovb-1 is still down after the repair");

        // A deep pass always dumps.
        r.audit(&spec).await.expect("audit");
        let deep = r.pass(&spec, true).await.expect("deep pass");
        assert!(!deep.snapshot_reused, "a deep pass must dump");
    });
}
