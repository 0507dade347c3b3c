//! Issue #3 acceptance, in the netns lab (root): real controllers and agents, real kernel
//! objects, real packets; kernel state checked with iproute2 and tcpdump.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::lab::{Lab, LabConfig, PingFlow};

fn lab(hosts: usize, tag: &'static str) -> Lab {
    Lab::start_with_agents(LabConfig {
        hosts,
        controllers: 1,
        tag,
        resync_secs: 5,
    })
    .expect("lab")
}

/// Creates workloads `h<i>w<j>` and attaches them; returns (namespace, address) per workload.
fn workloads(lab: &mut Lab, network: &str, per_host: usize, tag: &str) -> Vec<(String, Ipv4Addr, usize)> {
    let mut out = Vec::new();
    for h in 0..lab.hosts.len() {
        for w in 1..=per_host {
            let ns = lab
                .add_workload(&format!("{tag}h{}w{w}", h + 1))
                .expect("workload ns");
            let ip = lab.attach(network, h, &ns).expect("attach");
            out.push((ns, ip, h));
        }
    }
    out
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Acceptance 1 and 2: all 30 ordered pairs ping, TCP works across hosts, and the kernel holds
/// exactly what DESIGN.md says, as iproute2 and tcpdump see it.
#[test]
fn three_hosts_all_pairs_tcp_and_kernel_state() {
    let mut lab = lab(3, "va");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
        "--vni",
        "4242",
    ])
    .unwrap();
    let ws = workloads(&mut lab, "blue", 2, "");
    let mut failures = Vec::new();
    let started = Instant::now();
    for (from, _, _) in &ws {
        for (to, ip, _) in &ws {
            if from != to && !lab.ping(from, *ip) {
                failures.push(format!("{from} -> {to} ({ip})"));
            }
        }
    }
    println!("30 ordered pairs pinged in {:?}", started.elapsed());
    assert!(failures.is_empty(), "pairs failing: {failures:?}");

    // TCP across hosts: an echo server in h1w1, a 100 kB round trip from h3w2.
    let lab_bin = bins::bin("overlay-lab").unwrap();
    let lab_bin = lab_bin.to_str().unwrap();
    let server_addr = format!("{}:5201", ws[0].1);
    let _server = lab
        .spawn_in(&ws[0].0, lab_bin, &["tcp-serve", &server_addr], "tcp-serve")
        .unwrap();
    let check = Lab::wait_until(Duration::from_secs(5), || {
        overlay_lab::netns::exec(&ws[5].0, lab_bin, &["tcp-check", &server_addr]).is_ok()
    });
    assert!(check.is_some(), "TCP echo across hosts failed");

    // Kernel state on every host, by iproute2.
    for h in 0..3 {
        let ip = lab.hosts[h].ip;
        let link = lab.on_host(h, "ip", &["-d", "link", "show", "ovx-1"]).unwrap();
        for want in [
            "vxlan id 4242",
            &format!("local {ip}"),
            "dev eth0",
            "dstport 4789",
            "nolearning",
            "mtu 1450",
        ] {
            assert!(
                link.contains(want),
                "host h{}: `ip -d link show ovx-1` lacks {want:?}:\n{link}",
                h + 1
            );
        }
        let fdb = lab
            .on_host(h, "bridge", &["fdb", "show", "dev", "ovx-1"])
            .unwrap();
        let neigh = lab.on_host(h, "ip", &["neigh", "show", "dev", "ovx-1"]).unwrap();
        let routes = lab.on_host(h, "ip", &["route", "show", "dev", "ovx-1"]).unwrap();
        for other in (0..3).filter(|o| *o != h) {
            let peer_ip = lab.hosts[other].ip;
            let subnet = format!("10.1.{other}.0");
            assert_eq!(
                count_lines(&fdb, &format!("dst {peer_ip} self permanent")),
                1,
                "h{} fdb:\n{fdb}",
                h + 1
            );
            assert_eq!(
                count_lines(&neigh, &format!("{subnet} lladdr")),
                1,
                "h{} neigh:\n{neigh}",
                h + 1
            );
            assert!(
                neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{subnet} ")) && l.contains("PERMANENT")),
                "{neigh}"
            );
            let route = format!("{subnet}/24 via {subnet} proto 79 onlink");
            assert_eq!(
                count_lines(&routes, &route),
                1,
                "h{}: expected {route:?} in:\n{routes}",
                h + 1
            );
        }
        assert_eq!(
            fdb.lines().filter(|l| !l.trim().is_empty()).count(),
            2,
            "exactly one fdb entry per remote host:\n{fdb}"
        );
        assert_eq!(
            neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
            2,
            "{neigh}"
        );
        assert_eq!(
            routes.lines().filter(|l| l.contains("proto 79")).count(),
            2,
            "{routes}"
        );
        let bridge = lab.on_host(h, "ip", &["-4", "addr", "show", "ovb-1"]).unwrap();
        assert!(bridge.contains(&format!("inet 10.1.{h}.1/24")), "{bridge}");
    }

    // The underlay carries UDP 4789 with the network's VNI.
    let ul = lab.ul.clone();
    let dump = lab
        .spawn_in(
            &ul,
            "tcpdump",
            &["-l", "-nn", "-i", "br0", "-c", "4", "udp", "port", "4789"],
            "tcpdump",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..3 {
        lab.ping(&ws[0].0, ws[4].1);
    }
    let seen = Lab::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(dump.log_path()).is_ok_and(|t| t.contains("VXLAN") && t.contains("vni 4242"))
    });
    let capture = std::fs::read_to_string(dump.log_path()).unwrap_or_default();
    assert!(
        seen.is_some(),
        "tcpdump on the underlay saw no VXLAN with vni 4242:\n{capture}"
    );
    println!(
        "underlay capture:\n{}",
        capture
            .lines()
            .filter(|l| l.contains("VXLAN"))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Acceptance 3: two networks at once, each with its own VNI; workloads reach only their own.
#[test]
fn two_networks_get_own_vnis_and_are_isolated() {
    let mut lab = lab(2, "vb");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "red",
        "--mode",
        "vxlan",
        "--subnet",
        "10.2.0.0/16",
    ])
    .unwrap();
    let blue = workloads(&mut lab, "blue", 1, "b");
    let red = workloads(&mut lab, "red", 1, "r");
    let links = lab
        .on_host(0, "ip", &["-d", "link", "show", "type", "vxlan"])
        .unwrap();
    assert!(
        links.contains("vxlan id 4096") && links.contains("vxlan id 4097"),
        "{links}"
    );

    assert!(lab.ping(&blue[0].0, blue[1].1), "blue across hosts");
    assert!(lab.ping(&red[0].0, red[1].1), "red across hosts");
    for (from, to) in [
        (&blue[0], &red[0]),
        (&blue[0], &red[1]),
        (&red[1], &blue[0]),
        (&red[0], &blue[1]),
    ] {
        assert!(
            !lab.ping(&from.0, to.1),
            "{} ({}) must not reach {} ({})",
            from.0,
            from.1,
            to.0,
            to.1
        );
    }
    // Isolation by interface: each bridge pairs only with itself and its own vxlan.
    let rules = lab
        .on_host(0, "nft", &["list", "set", "inet", "overlay", "same_network"])
        .unwrap();
    for pair in ["\"ovb-1\" . \"ovx-1\"", "\"ovb-2\" . \"ovx-2\""] {
        assert!(rules.contains(pair), "{pair} missing from:\n{rules}");
    }
    assert!(!rules.contains("\"ovb-1\" . \"ovx-2\""), "{rules}");
}

/// Acceptance 4: the agent SIGKILLed and restarted during a continuous ping: no loss, and the
/// kernel objects keep their ifindex (nothing was deleted and re-added).
#[test]
fn agent_restart_keeps_flows_and_objects() {
    let mut lab = lab(2, "vc");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    let ws = workloads(&mut lab, "blue", 1, "");
    let before: Vec<u64> = ["ovx-1", "ovb-1"]
        .iter()
        .map(|d| lab.ifindex(0, d).unwrap())
        .collect();
    let veth = lab.ctl_json(&["endpoint", "ls", "--host", "h1"]).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    let veth_name = format!("ovv-{veth:x}");
    let veth_before = lab.ifindex(0, &veth_name).unwrap();

    let flow = PingFlow::start(&ws[0].0, ws[1].1, 20, Duration::from_secs(6)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent(0);
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(0).unwrap();
    // Let the restarted agent do its first (deep) reconcile while the flow runs.
    std::thread::sleep(Duration::from_secs(3));
    let stats = flow.wait().unwrap();
    println!(
        "ping across agent restart: {} sent, {} lost",
        stats.sent,
        stats.lost()
    );
    assert!(stats.sent >= 250);
    assert_eq!(stats.lost(), 0, "flow lost packets across the agent restart");
    let after: Vec<u64> = ["ovx-1", "ovb-1"]
        .iter()
        .map(|d| lab.ifindex(0, d).unwrap())
        .collect();
    assert_eq!(before, after, "vxlan/bridge were re-created");
    assert_eq!(
        veth_before,
        lab.ifindex(0, &veth_name).unwrap(),
        "endpoint veth was re-created"
    );
    assert!(
        !lab.agent_log(0).contains("device deleted"),
        "restart deleted devices:\n{}",
        lab.agent_log(0)
    );
}

/// Acceptance 5: a 4th host joins and is reachable from all within a bounded time; removed with
/// `host rm`, its neighbour, FDB entry and route disappear on every other host. Also: a host
/// removed while another host's agent is down is cleaned there after that agent returns.
#[test]
fn host_join_and_removal() {
    let mut lab = lab(3, "vd");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    let ws = workloads(&mut lab, "blue", 1, "");
    let h4 = lab.add_host().unwrap();
    let joined = Instant::now();
    lab.start_agent(h4).unwrap();
    let ns4 = lab.add_workload("h4w1").unwrap();
    let registered = Lab::wait_until(Duration::from_secs(20), || {
        lab.ctl_json(&["host", "inspect", "h4"])
            .map(|v| v["state"] == "up")
            .unwrap_or(false)
    });
    assert!(registered.is_some(), "h4 did not register");
    let ip4 = lab.attach("blue", h4, &ns4).unwrap();
    let reach = Lab::wait_until(Duration::from_secs(20), || {
        ws.iter().all(|(ns, _, _)| lab.ping(ns, ip4))
    });
    let took = joined.elapsed();
    assert!(reach.is_some(), "h4's workload not reachable from every host");
    assert!(
        ws.iter().all(|(_, ip, _)| lab.ping(&ns4, *ip)),
        "h4 reaches every host"
    );
    println!("4th host: agent start to reachable from all 3 hosts in {took:?}");

    // h1's agent is down while h4 is removed: it must clean up when it returns.
    lab.stop_agent(h4);
    lab.stop_agent(0);
    let out = lab.ctl_ok(&["host", "rm", "h4"]).unwrap();
    assert!(out.contains("removed host h4"), "{out}");
    let h4_ip = lab.hosts[h4].ip.to_string();
    let gone = |lab: &Lab, h: usize| {
        let fdb = lab
            .on_host(h, "bridge", &["fdb", "show", "dev", "ovx-1"])
            .unwrap_or_default();
        let neigh = lab
            .on_host(h, "ip", &["neigh", "show", "dev", "ovx-1"])
            .unwrap_or_default();
        let routes = lab
            .on_host(h, "ip", &["route", "show", "dev", "ovx-1"])
            .unwrap_or_default();
        !fdb.contains(&h4_ip) && !neigh.contains("10.1.3.0") && !routes.contains("10.1.3.0/24")
    };
    for h in [1, 2] {
        assert!(
            Lab::wait_until(Duration::from_secs(10), || gone(&lab, h)).is_some(),
            "h{} kept h4's entries",
            h + 1
        );
    }
    assert!(!gone(&lab, 0), "h1's agent is down: its entries are still there");
    lab.start_agent(0).unwrap();
    assert!(
        Lab::wait_until(Duration::from_secs(15), || gone(&lab, 0)).is_some(),
        "h1 kept h4's entries after resync"
    );
    assert!(
        lab.ping(&ws[0].0, ws[2].1),
        "remaining hosts still reach each other"
    );
}

/// Acceptance 6: the (single) controller stopped for 30 s: workloads keep pinging; the agents
/// re-sync when it returns (a change made afterwards is programmed).
#[test]
fn controller_outage_leaves_datapath_alone() {
    let mut lab = lab(2, "ve");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    let ws = workloads(&mut lab, "blue", 1, "");
    lab.controllers.stop(1).unwrap();
    let flow = PingFlow::start(&ws[0].0, ws[1].1, 100, Duration::from_secs(30)).unwrap();
    let stats = flow.wait().unwrap();
    println!(
        "30 s without a controller: {} pings sent, {} lost",
        stats.sent,
        stats.lost()
    );
    assert_eq!(stats.lost(), 0);
    assert!(
        lab.ctl(&["network", "ls"]).unwrap().status.code() == Some(1),
        "overlayctl fails while down"
    );
    lab.controllers.start(1).unwrap();
    lab.wait_leader(Duration::from_secs(30)).unwrap();
    // Re-sync: a new workload attached after the outage is wired (attach waits for the agent).
    let ns = lab.add_workload("late").unwrap();
    let ip = lab.attach("blue", 1, &ns).unwrap();
    assert!(lab.ping(&ws[0].0, ip), "post-outage endpoint reachable");
}

/// Acceptance 7: detach removes the veth and frees the address; attaching to a missing
/// namespace fails clearly and leaves nothing behind; a namespace that vanishes is reported.
#[test]
fn endpoint_detach_missing_and_vanished_namespaces() {
    let mut lab = lab(2, "vf");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/29",
        "--host-prefix",
        "30",
    ])
    .unwrap();
    let ns = lab.add_workload("w1").unwrap();
    let ip = lab.attach("blue", 0, &ns).unwrap();
    let id = lab.ctl_json(&["endpoint", "ls"]).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    let veth = format!("ovv-{id:x}");
    assert!(lab.ifindex(0, &veth).is_ok());
    let out = lab
        .ctl_ok(&["endpoint", "detach", "blue", "--host", "h1", "--netns", &ns])
        .unwrap();
    assert!(out.contains(&ip.to_string()), "{out}");
    assert!(
        Lab::wait_until(Duration::from_secs(10), || lab.ifindex(0, &veth).is_err()).is_some(),
        "veth not removed"
    );
    let inside = overlay_lab::netns::exec(&ns, "ip", &["-o", "link"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&inside.stdout).contains("eth0"),
        "workload side gone too"
    );
    // The /30 holds one endpoint: attaching again only works because the address was freed.
    let again = lab.attach("blue", 0, &ns).unwrap();
    assert_eq!(again, ip);

    let out = lab
        .ctl(&[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h2",
            "--netns",
            "no-such-ns",
            "--wait",
            "10",
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("not found") && stderr.contains("no-such-ns"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
    let eps = lab.ctl_json(&["endpoint", "ls", "--host", "h2"]).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 0, "failed attach rolled back");
    let leftovers = lab.on_host(1, "ip", &["-o", "link"]).unwrap();
    assert!(
        !leftovers.contains("ovv-") && !leftovers.contains("ovp-"),
        "{leftovers}"
    );

    // The workload's namespace disappears: the endpoint is reported gone (and released after
    // the agent's grace period, see tests/endpoints.rs), the agent lives on.
    lab.remove_workload(&ns).unwrap();
    let reported = Lab::wait_until(Duration::from_secs(20), || {
        lab.ctl_json(&["endpoint", "ls", "--host", "h1"])
            .map(|v| {
                v[0]["state"] == "gone" && v[0]["message"].as_str().is_some_and(|m| m.contains("not found"))
            })
            .unwrap_or(false)
    });
    assert!(
        reported.is_some(),
        "vanished namespace not reported: {:?}",
        lab.ctl_json(&["endpoint", "ls"])
    );
    assert!(lab.hosts[0].agent_running(), "agent survived");
}
