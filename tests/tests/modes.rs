//! Issue #4 acceptance, in the netns lab (root): macvlan on the underlay LAN (plain and VLAN
//! parents, every mode), NAT egress on a vxlan network, host-local nat networks, and the
//! nftables table coming and going with them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig, PingFlow};
use overlay_lab::netns::{exec, exec_any, stdout};

fn lab(hosts: usize, tag: &'static str) -> Lab {
    Lab::start_with_agents(LabConfig {
        hosts,
        controllers: 1,
        tag,
        resync_secs: 5,
    })
    .expect("lab")
}

fn ping_from(ns: &str, ip: &str) -> bool {
    exec_any(ns, "ping", &["-c", "1", "-W", "1", ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn inside(ns: &str, args: &[&str]) -> String {
    stdout(&exec(ns, "ip", args).expect("ip in workload"))
}

/// Acceptance 1 (part): workloads on three hosts talk to each other and to a plain LAN host;
/// 50 attaches spread over the hosts get 50 distinct addresses from the range.
#[test]
fn macvlan_reaches_the_lan_with_unique_addresses() {
    let mut lab = lab(3, "ma");
    let lan = lab.add_lan_host("lan1", "192.0.2.50/24", None).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "lan",
        "--mode",
        "macvlan",
        "--parent",
        "eth0",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
        "--ip-range",
        "192.0.2.128/25",
    ])
    .unwrap();
    let range: ipnetwork::Ipv4Network = "192.0.2.128/25".parse().unwrap();
    let mut ws: Vec<(String, Ipv4Addr)> = Vec::new();
    for i in 0..50 {
        let ns = lab.add_workload(&format!("m{i}")).unwrap();
        let ip = lab.attach("lan", i % 3, &ns).unwrap();
        ws.push((ns, ip));
    }
    let distinct: BTreeSet<Ipv4Addr> = ws.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(distinct.len(), 50, "addresses handed out twice");
    assert!(
        ws.iter().all(|(_, ip)| range.contains(*ip)),
        "every address from the range"
    );
    // Each workload really holds its own address.
    for (ns, ip) in ws.iter().step_by(7) {
        assert!(
            inside(ns, &["-4", "addr", "show", "eth0"]).contains(&format!("{ip}/24")),
            "{ns}"
        );
    }
    let link = inside(&ws[0].0, &["-d", "link", "show", "eth0"]);
    assert!(link.contains("macvlan mode bridge"), "{link}");
    let o = ws[0].1.octets();
    assert!(
        link.contains(&format!(
            "0a:58:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3]
        )),
        "MAC from IP: {link}"
    );

    // h1 -> h2, h2 -> h3, same host (h1 -> h1), and the LAN host both ways.
    for (from, to) in [(0, 1), (1, 2), (0, 3)] {
        assert!(lab.ping(&ws[from].0, ws[to].1), "{} -> {}", ws[from].0, ws[to].1);
    }
    assert!(ping_from(&ws[2].0, "192.0.2.50"), "workload -> LAN host");
    assert!(ping_from(&lan, &ws[4].1.to_string()), "LAN host -> workload");

    // Detach removes the interface from the namespace and frees the address.
    lab.ctl_ok(&["endpoint", "detach", "lan", "--host", "h1", "--netns", &ws[0].0])
        .unwrap();
    let gone = Lab::wait_until(Duration::from_secs(10), || {
        !inside(&ws[0].0, &["-o", "link"]).contains("eth0")
    });
    assert!(gone.is_some(), "detached macvlan still in its namespace");
}

/// Whether this kernel can make 802.1Q devices (some minimal kernels are built without).
fn kernel_has_vlan() -> bool {
    let mut namespaces = overlay_lab::netns::Namespaces::default();
    let ns = overlay_lab::netns::unique_prefix("vlanprobe");
    if namespaces.add(&ns).is_err() {
        return false;
    }
    exec(
        &ns,
        "ip",
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
    )
    .is_ok()
        && exec(
            &ns,
            "ip",
            &[
                "link", "add", "link", "p0", "name", "p0.5", "type", "vlan", "id", "5",
            ],
        )
        .is_ok()
}

/// Acceptance 1 (rest): every macvlan mode is accepted; passthru takes one endpoint per host.
#[test]
fn macvlan_modes_and_passthru() {
    let mut lab = lab(2, "mb");
    // private and vepa share eth1; passthru takes eth2 whole.
    for h in 0..2 {
        lab.add_nic(h, "eth1").unwrap();
        lab.add_nic(h, "eth2").unwrap();
    }
    for (name, mode, parent, subnet, gw) in [
        ("priv", "private", "eth1", "203.0.113.0/26", "203.0.113.1"),
        ("vepa", "vepa", "eth1", "203.0.113.64/26", "203.0.113.65"),
        ("pt", "passthru", "eth2", "203.0.113.128/26", "203.0.113.129"),
    ] {
        lab.ctl_ok(&[
            "network",
            "create",
            name,
            "--mode",
            "macvlan",
            "--parent",
            parent,
            "--subnet",
            subnet,
            "--gateway",
            gw,
            "--macvlan-mode",
            mode,
        ])
        .unwrap();
        let ns = lab.add_workload(&format!("{name}1")).unwrap();
        lab.attach(name, 0, &ns).unwrap();
        let link = inside(&ns, &["-d", "link", "show", "eth0"]);
        assert!(link.contains(&format!("macvlan mode {mode}")), "{name}: {link}");
    }
    let second = lab.add_workload("pt2").unwrap();
    let out = lab
        .ctl(&["endpoint", "attach", "pt", "--host", "h1", "--netns", &second])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("passthru") && stderr.contains("one endpoint"),
        "{stderr}"
    );
    let ip = lab
        .attach("pt", 1, &second)
        .expect("passthru on another host is fine");
    assert!(inside(&second, &["-4", "addr", "show", "eth0"]).contains(&ip.to_string()));
}

/// Acceptance 1 (VLAN): a `base.vid` parent is created when missing and removed with the last
/// network using it. On a kernel without 802.1Q support the attach fails with a clear cause.
#[test]
fn macvlan_vlan_parent_lifecycle() {
    let mut lab = lab(2, "mv");
    lab.ctl_ok(&[
        "network",
        "create",
        "v50",
        "--mode",
        "macvlan",
        "--parent",
        "eth0.50",
        "--subnet",
        "198.51.100.0/24",
        "--gateway",
        "198.51.100.1",
        "--ip-range",
        "198.51.100.128/26",
    ])
    .unwrap();
    let v1 = lab.add_workload("v1").unwrap();
    if !kernel_has_vlan() {
        let out = lab
            .ctl(&[
                "endpoint", "attach", "v50", "--host", "h1", "--netns", &v1, "--wait", "10",
            ])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("kernel without 802.1Q: attach refused with: {}", stderr.trim());
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("create vlan eth0.50"), "{stderr}\n{}", lab.logs());
        assert_eq!(stderr.trim().lines().count(), 1);
        return;
    }
    let lan = lab.add_lan_host("lan50", "198.51.100.50/24", Some(50)).unwrap();
    let v2 = lab.add_workload("v2").unwrap();
    let ip1 = lab.attach("v50", 0, &v1).unwrap();
    let ip2 = lab.attach("v50", 1, &v2).unwrap();
    for h in 0..2 {
        let parent = lab.on_host(h, "ip", &["-d", "link", "show", "eth0.50"]).unwrap();
        assert!(
            parent.contains("vlan protocol 802.1Q id 50") && parent.contains("overlay-managed"),
            "{parent}"
        );
    }
    assert!(lab.ping(&v1, ip2), "VLAN 50 across hosts");
    assert!(
        ping_from(&v1, "198.51.100.50"),
        "VLAN 50 workload -> LAN host on VLAN 50"
    );
    assert!(
        ping_from(&lan, &ip1.to_string()),
        "LAN host on VLAN 50 -> workload"
    );
    lab.ctl_ok(&["network", "rm", "v50", "--force"]).unwrap();
    for h in 0..2 {
        let gone = Lab::wait_until(Duration::from_secs(10), || {
            !lab.on_host(h, "ip", &["-o", "link"])
                .unwrap_or_default()
                .contains("eth0.50@")
        });
        assert!(gone.is_some(), "h{}: eth0.50 left behind", h + 1);
    }
}

/// h1's `inet overlay` table, and its parts sorted: counters left out, set elements in any
/// order, so two listings compare what the rules say, not their state.
fn nat_rules(lab: &Lab) -> (String, Vec<String>) {
    let text = lab
        .on_host(0, "nft", &["--stateless", "list", "table", "inet", "overlay"])
        .unwrap();
    let mut parts: Vec<String> = text
        .split([',', '\n'])
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    parts.sort();
    (text, parts)
}

/// Acceptance 2 and 5: with --nat-egress a workload reaches the internet and is seen as its
/// host's underlay address; overlay-internal traffic keeps workload addresses; an agent restart
/// rebuilds identical rules without a gap; turning NAT off or deleting the network removes them.
#[test]
fn nat_egress_masquerades_only_leaving_traffic() {
    let mut lab = lab(2, "mc");
    let (_rt, inet) = lab.add_internet().unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
        "--nat-egress",
    ])
    .unwrap();
    let w1 = lab.add_workload("w1").unwrap();
    let w2 = lab.add_workload("w2").unwrap();
    let ip1 = lab.attach("blue", 0, &w1).unwrap();
    let ip2 = lab.attach("blue", 1, &w2).unwrap();

    let seen_outside = lab
        .spawn_in(
            &inet,
            "tcpdump",
            &["-l", "-nn", "-i", "eth0", "icmp"],
            "tcpdump-inet",
        )
        .unwrap();
    let seen_inside = lab
        .spawn_in(&w2, "tcpdump", &["-l", "-nn", "-i", "eth0", "icmp"], "tcpdump-w2")
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(ping_from(&w1, "203.0.113.10"), "workload reaches the internet");
    assert!(lab.ping(&w1, ip2), "overlay traffic still flows");
    let h1 = lab.hosts[0].ip;
    let outside = Lab::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(seen_outside.log_path())
            .is_ok_and(|t| t.contains(&format!("IP {h1} > 203.0.113.10: ICMP echo request")))
    });
    let text = std::fs::read_to_string(seen_outside.log_path()).unwrap_or_default();
    assert!(
        outside.is_some(),
        "internet side should see the host's underlay address {h1}:\n{text}"
    );
    assert!(
        !text.contains(&ip1.to_string()),
        "workload address leaked to the internet:\n{text}"
    );
    let internal = Lab::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(seen_inside.log_path())
            .is_ok_and(|t| t.contains(&format!("IP {ip1} > {ip2}: ICMP echo request")))
    });
    assert!(
        internal.is_some(),
        "overlay traffic must keep the workload source address"
    );

    let (text, rules_before) = nat_rules(&lab);
    assert!(
        text.contains("@nat_egress masquerade") && text.contains("\"ovb-1\" . \"eth0\""),
        "{text}"
    );
    // Agent restart: identical rules, and a NATed flow that does not notice.
    let flow = PingFlow::start(&w1, "203.0.113.10".parse().unwrap(), 20, Duration::from_secs(4)).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    lab.kill_agent(0);
    lab.start_agent(0).unwrap();
    let stats = flow.wait().unwrap();
    println!(
        "NATed ping across agent restart: {} sent, {} lost",
        stats.sent,
        stats.lost()
    );
    assert_eq!(stats.lost(), 0);
    let (_, rules_after) = nat_rules(&lab);
    assert_eq!(rules_before, rules_after, "restart rebuilt different rules");

    lab.ctl_ok(&["network", "update", "blue", "--nat-egress", "false"])
        .unwrap();
    let off = Lab::wait_until(Duration::from_secs(10), || {
        !lab.on_host(0, "nft", &["list", "ruleset"])
            .unwrap_or_default()
            .contains("masquerade")
    });
    assert!(off.is_some(), "masquerade rule survived --nat-egress false");
    assert!(
        !ping_from(&w1, "203.0.113.10"),
        "without NAT the internet cannot answer"
    );

    lab.ctl_ok(&["network", "rm", "blue", "--force"]).unwrap();
    for h in 0..2 {
        let gone = Lab::wait_until(Duration::from_secs(10), || {
            !lab.on_host(h, "nft", &["list", "ruleset"])
                .unwrap_or_default()
                .contains("overlay")
        });
        assert!(
            gone.is_some(),
            "h{}: overlay rules left after the network was deleted",
            h + 1
        );
    }
}

/// Acceptance 3: a nat network is host-local: each host's workloads reach the internet through
/// their own host, and nothing routes to another host's nat subnet.
#[test]
fn nat_mode_is_host_local() {
    let mut lab = lab(2, "md");
    lab.add_internet().unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "local",
        "--mode",
        "nat",
        "--subnet",
        "10.9.0.0/16",
    ])
    .unwrap();
    let n1 = lab.add_workload("n1").unwrap();
    let n2 = lab.add_workload("n2").unwrap();
    lab.attach("local", 0, &n1).unwrap();
    let ip2 = lab.attach("local", 1, &n2).unwrap();
    assert!(
        ping_from(&n1, "203.0.113.10"),
        "h1's nat workload reaches the internet"
    );
    assert!(
        ping_from(&n2, "203.0.113.10"),
        "h2's nat workload reaches the internet"
    );
    assert!(!lab.ping(&n1, ip2), "no path between hosts' nat subnets");
    let routes = lab.on_host(0, "ip", &["route"]).unwrap();
    assert!(!routes.contains("10.9.1.0/24"), "{routes}");
    let links = lab.on_host(0, "ip", &["-o", "link"]).unwrap();
    assert!(
        links.contains("ovb-") && !links.contains("ovx-"),
        "a bridge, no tunnel: {links}"
    );
}
