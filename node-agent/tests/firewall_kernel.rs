//! The firewall against a real kernel and the real `nft` (root), in a throw-away namespace:
//! the rules are written, found again, every kind of tampering is reported by the audit and
//! repaired by the next converge, other tables are left alone, and changes to unrelated
//! tables raise no false alarm.

use std::time::Instant;

use overlay_agent::firewall::{
    self, Converged, Firewall, FirewallSpec, Name, NetworkPorts, PortIdentity, Published, Routed, Write,
};
use overlay_lab::netns::{Namespaces, exec, stdout, unique_prefix};
use overlay_proto::ports::Protocol;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn spec(endpoints: usize) -> FirewallSpec {
    FirewallSpec {
        underlay: Some(name("eth0")),
        networks: vec![
            NetworkPorts {
                bridge: name("ovb-1"),
                vxlan: Some(name("ovx-1")),
                gateway: "10.1.0.1".parse().unwrap(),
                // Dual-stack: its endpoints' IPv6 sets (one of them raw bytes) round-trip too.
                gateway6: Some("fd00:1::1".parse().unwrap()),
                endpoints6: (0..endpoints.min(20))
                    .map(|i| format!("fd00:1::{:x}", 2 + i).parse().unwrap())
                    .collect(),
                nat_egress: false,
                routed: None,
            },
            NetworkPorts {
                bridge: name("ovb-2"),
                vxlan: Some(name("ovx-2")),
                gateway: "10.2.0.1".parse().unwrap(),
                gateway6: None,
                endpoints6: Default::default(),
                nat_egress: true,
                routed: None,
            },
            // A route network with NAT egress: its own forward and no-masquerade rules.
            NetworkPorts {
                bridge: name("ovb-3"),
                vxlan: None,
                gateway: "10.3.0.1".parse().unwrap(),
                gateway6: None,
                endpoints6: Default::default(),
                nat_egress: true,
                routed: Some(Routed {
                    cidr: "10.3.0.0/16".parse().unwrap(),
                    peers: ["10.3.1.0/24".parse().unwrap(), "10.3.2.0/24".parse().unwrap()].into(),
                }),
            },
        ],
        endpoints: (0..endpoints)
            .map(|i| PortIdentity {
                port: name(&format!("ovv-{i:x}")),
                mac: format!("0a:58:0a:01:{:02x}:{:02x}", i / 256, i % 256)
                    .parse()
                    .unwrap(),
                ip: format!("10.1.{}.{}", i / 250, 2 + i % 250).parse().unwrap(),
                // The first few dual-stack (IPv6 triples what a port adds to the sets: 1000
                // of them would outgrow one in-place batch).
                ip6: (i < 20).then(|| format!("fd00:1::{:x}", 2 + i).parse().unwrap()),
            })
            .collect(),
        peers: ["192.0.2.12".parse().unwrap(), "192.0.2.13".parse().unwrap()].into(),
        peers6: ["2001:db8::14".parse().unwrap()].into(),
        underlay_hosts: [
            "192.0.2.12".parse().unwrap(),
            "192.0.2.13".parse().unwrap(),
            "192.0.2.101".parse().unwrap(),
        ]
        .into(),
        published: [
            published(Protocol::Tcp, 8080, "10.1.0.2", 80),
            published(Protocol::Udp, 5353, "10.1.0.3", 53),
        ]
        .into(),
    }
}

/// Port `host_port` of 192.0.2.11 forwarded to `to:to_port`.
fn published(protocol: Protocol, host_port: u16, to: &str, to_port: u16) -> Published {
    Published {
        host_ip: "192.0.2.11".parse().unwrap(),
        protocol,
        host_port,
        to_ip: to.parse().unwrap(),
        to_port,
    }
}

/// Runs `work` on a thread inside namespace `ns` (so every `nft` it spawns runs there).
fn inside<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        work()
    })
    .join()
    .unwrap()
}

fn handle_of(ns: &str, family: &str, chain: &str, comment: &str) -> String {
    let text = stdout(&exec(ns, "nft", &["-a", "list", "chain", family, "overlay", chain]).unwrap());
    let line = text
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{text}"));
    line.rsplit("# handle ").next().unwrap().trim().to_string()
}

#[test]
fn rules_are_written_audited_and_repaired() {
    let prefix = unique_prefix("fk");
    let mut namespaces = Namespaces::default();
    let ns = format!("{prefix}-h1");
    namespaces.add(&ns).unwrap();
    // A table someone else owns, and overlay's table of an earlier version.
    exec(&ns, "nft", &["add", "table", "inet", "someone_else"]).unwrap();
    exec(&ns, "nft", &["add", "table", "ip", "overlay"]).unwrap();

    let preflight = inside(&ns, firewall::preflight);
    assert_eq!(preflight, Ok(()));
    assert!(
        !stdout(&exec(&ns, "nft", &["list", "tables"]).unwrap()).contains("bridge overlay"),
        "the start-up check commits nothing"
    );

    // Someone else's commit wakes a subscriber at once; silence times out.
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher_ns = ns.clone();
    let watcher = std::thread::spawn(move || {
        inside(&watcher_ns, move || {
            let changes = firewall::Changes::subscribe().unwrap();
            tx.send(()).unwrap();
            let quiet = changes.wait(std::time::Duration::from_millis(200)).unwrap();
            let woke = changes.wait(std::time::Duration::from_secs(10)).unwrap();
            (quiet, woke, Instant::now())
        })
    });
    rx.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let committing = Instant::now();
    exec(&ns, "nft", &["add", "table", "inet", "someone_else_too"]).unwrap();
    let (quiet, woke, woke_at) = watcher.join().unwrap();
    assert!(!quiet && woke, "quiet {quiet}, woke {woke}");
    println!(
        "an nftables commit woke the subscriber {:?} after `nft` was started",
        woke_at.duration_since(committing)
    );

    let mut fw = Firewall::default();
    let (fw, first, second, audit) = inside(&ns, move || {
        let t = Instant::now();
        let first = (fw.converge(&spec(3)), t.elapsed());
        let t = Instant::now();
        let second = (fw.converge(&spec(3)), t.elapsed());
        let audit = fw.audit(&spec(3));
        (fw, first, second, audit)
    });
    assert_eq!(first.0, Ok(Converged::Written));
    assert_eq!(second.0, Ok(Converged::Unchanged));
    assert_eq!(audit, Vec::<String>::new());
    println!(
        "first write (with the read-back): {:?}; nothing to do: {:?}",
        first.1, second.1
    );
    let tables = stdout(&exec(&ns, "nft", &["list", "tables"]).unwrap());
    assert!(
        tables.contains("table bridge overlay") && tables.contains("table inet overlay"),
        "{tables}"
    );
    assert!(
        !tables.contains("table ip overlay"),
        "the legacy table is gone:\n{tables}"
    );
    assert!(
        tables.contains("table inet someone_else"),
        "others' tables stay:\n{tables}"
    );

    // Unrelated changes move the generation but are no drift.
    exec(&ns, "nft", &["add", "chain", "inet", "someone_else", "c"]).unwrap();
    let (mut fw, audit) = inside(&ns, move || {
        let mut fw = fw;
        let a = fw.audit(&spec(3));
        (fw, a)
    });
    assert_eq!(audit, Vec::<String>::new());

    // Each kind of tampering: what the audit says, then the repair.
    let tamperings: Vec<(&str, Vec<Vec<&str>>, &str)> = vec![
        (
            "a peer removed from the VXLAN allow list",
            vec![vec![
                "delete",
                "element",
                "inet",
                "overlay",
                "peers",
                "{ 192.0.2.12 }",
            ]],
            "nftables set inet overlay peers: missing 192.0.2.12",
        ),
        (
            "an address added to a port's identity",
            vec![vec![
                "add",
                "element",
                "bridge",
                "overlay",
                "endpoints",
                "{ \"ovv-0\" . 0a:58:0a:01:00:00 . 10.2.0.99 }",
            ]],
            "nftables set bridge overlay endpoints: extra ovv-0 . 0a:58:0a:01:00:00 . 10.2.0.99",
        ),
        (
            "a published port redirected elsewhere",
            vec![vec![
                "add",
                "element",
                "inet",
                "overlay",
                "published",
                "{ 192.0.2.11 . tcp . 2222 : 10.1.0.66 . 22 }",
            ]],
            "nftables set inet overlay published: extra 192.0.2.11 . tcp . 2222 : 10.1.0.66 . 22",
        ),
        (
            "a rule's body replaced, comment kept",
            vec![vec![
                "replace",
                "rule",
                "inet",
                "overlay",
                "forward",
                "handle",
                "HANDLE",
                "accept",
                "comment",
                "\"within a network: its bridge and its vxlan\"",
            ]],
            "nftables chain inet overlay forward: rule \"within a network: its bridge and its vxlan\" changed",
        ),
        (
            "a rule inserted",
            vec![vec![
                "insert",
                "rule",
                "inet",
                "overlay",
                "workload_to_host",
                "accept",
            ]],
            "nftables chain inet overlay workload_to_host: extra rule [{\"accept\":null}]",
        ),
        (
            "a chain's policy changed",
            vec![vec![
                "add",
                "chain",
                "inet",
                "overlay",
                "input",
                "{ type filter hook input priority 0; policy drop; }",
            ]],
            "nftables chain inet overlay input: type, hook, priority or policy changed",
        ),
        (
            "a whole table deleted",
            vec![vec!["delete", "table", "bridge", "overlay"]],
            "missing nftables table bridge overlay",
        ),
    ];
    // Handles change with every rewrite: the one to replace is looked up when it is used.
    for (what, commands, expected) in tamperings {
        for cmd in &commands {
            let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            if let Some(h) = args.iter_mut().find(|a| *a == "HANDLE") {
                *h = handle_of(
                    &ns,
                    "inet",
                    "forward",
                    "within a network: its bridge and its vxlan",
                );
            }
            let joined = args.join(" ");
            exec(&ns, "nft", &[&joined]).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let t = Instant::now();
        let (back, audit, audit_took, repair, after) = inside(&ns, move || {
            let t = Instant::now();
            let audit = fw.audit(&spec(3));
            let audit_took = t.elapsed();
            let repair = fw.converge(&spec(3));
            let after = fw.audit(&spec(3));
            (fw, audit, audit_took, repair, after)
        });
        fw = back;
        println!(
            "{what}: audit found {audit:?} in {audit_took:?}; repaired in {:?}",
            t.elapsed()
        );
        assert!(
            audit.iter().any(|l| l == expected),
            "{what}: expected {expected:?} in {audit:?}"
        );
        assert!(
            matches!(&repair, Ok(Converged::Repaired(found)) if *found == audit),
            "{what}: {repair:?}"
        );
        assert_eq!(
            after,
            Vec::<String>::new(),
            "{what}: still drifted after the repair"
        );
    }

    // Endpoints come and go: set elements added and removed in place, then checked.
    for n in [10, 100, 1000, 999, 3] {
        let (back, took, audit) = inside(&ns, move || {
            let t = Instant::now();
            let r = fw.converge(&spec(n));
            let took = t.elapsed();
            assert_eq!(r, Ok(Converged::Written));
            assert_eq!(fw.last_write(), Some(Write::Elements), "in place, over nfnetlink");
            // A listing, not the generation, says whether the kernel holds exactly this.
            let mut fresh = Firewall::default();
            let audit = fresh.audit(&spec(n));
            (fw, took, audit)
        });
        fw = back;
        assert_eq!(audit, Vec::<String>::new(), "{n} endpoints");
        let elements = stdout(&exec(&ns, "nft", &["list", "set", "bridge", "overlay", "endpoints"]).unwrap());
        assert_eq!(elements.matches("ovv-").count(), n);
        println!("update to {n} endpoints: {took:?}");
    }
    // Every other kind of element, in place too: a map's values (a published port moved to
    // another endpoint, one added, one gone), the VXLAN peers, NAT egress's guard list.
    let mut moved = spec(3);
    moved.published = [
        published(Protocol::Tcp, 8080, "10.1.0.4", 8000),
        published(Protocol::Udp, 9999, "10.1.0.3", 99),
    ]
    .into();
    moved.peers = ["192.0.2.14".parse().unwrap()].into();
    moved.underlay_hosts = ["192.0.2.14".parse().unwrap(), "192.0.2.101".parse().unwrap()].into();
    let (back, how, audit) = inside(&ns, move || {
        let r = fw.converge(&moved);
        assert_eq!(r, Ok(Converged::Written));
        let how = fw.last_write();
        let audit = Firewall::default().audit(&moved);
        (fw, how, audit)
    });
    fw = back;
    assert_eq!(how, Some(Write::Elements));
    assert_eq!(audit, Vec::<String>::new(), "maps and peers written in place");
    let published = stdout(&exec(&ns, "nft", &["list", "map", "inet", "overlay", "published"]).unwrap());
    assert!(
        published.contains("192.0.2.11 . tcp . 8080 : 10.1.0.4 . 8000")
            && published.contains("192.0.2.11 . udp . 9999 : 10.1.0.3 . 99")
            && !published.contains("5353"),
        "{published}"
    );

    // A change that is not only elements (NAT egress off) rebuilds.
    let mut no_nat = spec(3);
    no_nat.networks[1].nat_egress = false;
    no_nat.networks[2].nat_egress = false;
    let (back, rebuilt) = inside(&ns, move || {
        let r = fw.converge(&no_nat);
        (fw, r)
    });
    fw = back;
    assert_eq!(rebuilt, Ok(Converged::Written));
    assert_eq!(fw.last_write(), Some(Write::Rebuild));
    let inet = stdout(&exec(&ns, "nft", &["list", "table", "inet", "overlay"]).unwrap());
    assert!(
        !inet.contains("@nat_egress masquerade") && !inet.contains("postrouting"),
        "{inet}"
    );

    // Nothing left to filter: the tables go, someone else's stays.
    let (_, gone, audit) = inside(&ns, move || {
        let g = fw.converge(&FirewallSpec::default());
        let a = fw.audit(&FirewallSpec::default());
        (fw, g, a)
    });
    assert_eq!(gone, Ok(Converged::Written));
    assert_eq!(audit, Vec::<String>::new());
    let tables = stdout(&exec(&ns, "nft", &["list", "tables"]).unwrap());
    assert_eq!(
        tables.lines().map(str::trim).collect::<Vec<_>>(),
        ["table inet someone_else", "table inet someone_else_too"],
        "{tables}"
    );
}
