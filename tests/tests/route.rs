//! Mode `route` (host-gw), in the netns lab (root): hosts on one L2 segment route each other's
//! subnets through their underlay addresses, with no tunnel (tcpdump sees no UDP 4789), at the
//! underlay's MTU; another network's workloads cannot use those routes; a host whose underlay
//! address is off the segment is reported by `doctor` instead of black-holed.

use std::net::Ipv4Addr;
use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::{exec, stdout};
use overlay_lab::process::Daemon;
use serde_json::Value;

fn attach(lab: &Lab, network: &str, host: usize, ns: &str) -> Ipv4Addr {
    lab.attach(network, host, ns).expect("attach")
}

/// A tcpdump in `ns` on `iface`, ready once it says it is listening.
fn capture(lab: &Lab, ns: &str, iface: &str, filter: &str, name: &str) -> Daemon {
    lab.tcpdump(ns, iface, filter, name).expect("tcpdump")
}

#[test]
fn route_mode_routes_on_the_segment_and_reports_hosts_off_it() {
    let mut lab = Lab::start_with_agents(LabConfig {
        hosts: 3,
        controllers: 1,
        tag: "rt",
        resync_secs: 10,
    })
    .expect("lab");
    for (name, mode, cidr) in [("hg", "route", "10.80.0.0/16"), ("blue", "vxlan", "10.81.0.0/16")] {
        let args = ["network", "create", name, "--mode", mode, "--subnet", cidr];
        lab.ctl_ok(&args).unwrap();
    }
    let w: Vec<String> = (1..=3)
        .map(|i| lab.add_workload(&format!("w{i}")).unwrap())
        .collect();
    let ips: Vec<Ipv4Addr> = (0..3).map(|h| attach(&lab, "hg", h, &w[h])).collect();
    let b1 = lab.add_workload("b1").unwrap();
    attach(&lab, "blue", 0, &b1);

    // Every pair, with the routes the agents wrote: each peer's subnet via its underlay address.
    let all = Lab::wait_until(Duration::from_secs(15), || {
        (0..3).all(|a| (0..3).filter(|b| *b != a).all(|b| lab.ping(&w[a], ips[b])))
    });
    assert!(
        all.is_some(),
        "route-mode workloads do not reach each other\n{}",
        lab.logs()
    );
    let routes = lab.on_host(0, "ip", &["route", "show", "proto", "79"]).unwrap();
    let leases = lab.ctl_json(&["network", "inspect", "hg"]).unwrap()["host_leases"].clone();
    for (h, peer_ip) in [(1, "192.0.2.12"), (2, "192.0.2.13")] {
        let subnet = leases
            .as_array()
            .and_then(|l| l.iter().find(|l| l["host"] == format!("h{}", h + 1)))
            .and_then(|l| l["subnet"].as_str())
            .unwrap_or_else(|| panic!("no lease of h{} in {leases}", h + 1))
            .to_string();
        assert!(
            routes.contains(&format!("{subnet} via {peer_ip} dev eth0")),
            "h1's route to {subnet}: {routes}"
        );
    }
    let mtu = stdout(&exec(&w[0], "cat", &["/sys/class/net/eth0/mtu"]).unwrap());
    assert_eq!(mtu.trim(), "1500", "a route network's MTU is the underlay's");
    println!(
        "route mode: 6/6 pairs; h1 routes {}",
        routes.trim().replace('\n', "; ")
    );

    // No tunnel: the packets cross the underlay as they are.
    let dump = capture(
        &lab,
        &lab.hosts[1].ns,
        "eth0",
        "udp port 4789 or icmp",
        "tcpdump-h2",
    );
    assert!(lab.ping(&w[0], ips[1]));
    std::thread::sleep(Duration::from_millis(500));
    let seen = std::fs::read_to_string(dump.log_path()).unwrap_or_default();
    assert!(
        seen.contains(&format!("{} > {}: ICMP echo request", ips[0], ips[1])),
        "the workload's own packet on h2's underlay: {seen}"
    );
    assert!(!seen.contains(".4789"), "VXLAN on a route network's path: {seen}");
    println!("h2's eth0 saw the workload's ICMP as is, and no UDP 4789");

    // Another network's workload cannot ride those routes.
    assert!(
        !lab.ping(&b1, ips[1]),
        "a vxlan network's workload reached a route network's"
    );
    println!("blue's workload on h1 cannot reach hg's workload on h2");

    // A host behind a router namespace, its underlay address off the segment: the others
    // report it instead of sending into the void.
    let h4 = lab.add_routed_host().unwrap();
    let ns4 = lab.hosts[h4].ns.clone();
    lab.start_agent(h4).unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    let w4 = lab.add_workload("w4").unwrap();
    attach(&lab, "hg", h4, &w4);
    let mut drift = String::new();
    let reported = Lab::wait_until(Duration::from_secs(20), || {
        let out = lab.ctl(&["--output", "json", "doctor"]).expect("doctor");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        drift = v["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["host"] == "h1"))
            .map(|h| h["drift"].to_string())
            .unwrap_or_default();
        drift.contains("peer h4 (198.51.100.14) is not on this host's underlay segment")
    });
    assert!(
        reported.is_some(),
        "doctor does not report the off-segment host: {drift}\n{ns4}"
    );
    let routes = lab.on_host(0, "ip", &["route", "show", "proto", "79"]).unwrap();
    assert!(
        !routes.contains("198.51.100.14"),
        "a route through an off-segment address: {routes}"
    );
    println!("off-segment h4 reported by doctor for h1: {drift}");

    // h4 has no route on h1, so with a default route on the underlay (the usual setup) a
    // source in h4's subnet would pass a reverse-path check alone: a machine on the segment
    // forging one must still not reach w1.
    exec(
        &lab.hosts[0].ns,
        "ip",
        &["route", "replace", "default", "via", "192.0.2.253"],
    )
    .unwrap();
    let forged = lab
        .lease("hg", "h4")
        .expect("lease")
        .0
        .nth(66)
        .unwrap()
        .to_string();
    let evil = lab.add_lan_host("evil", "192.0.2.66/24", None).unwrap();
    exec(
        &evil,
        "ip",
        &["route", "add", "10.80.0.0/16", "via", "192.0.2.11"],
    )
    .unwrap();
    exec(
        &evil,
        "ip",
        &["addr", "add", &format!("{forged}/32"), "dev", "eth0"],
    )
    .unwrap();
    let w1_cap = capture(&lab, &w[0], "eth0", "icmp", "cap-w1");
    let _ = exec(
        &evil,
        "ping",
        &["-c", "2", "-W", "1", "-I", &forged, &ips[0].to_string()],
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = std::fs::read_to_string(w1_cap.log_path()).unwrap_or_default();
    assert!(
        !seen.contains(&format!("{forged} > ")),
        "h1 took a segment machine's packet as unreachable h4's workload {forged}: {seen}"
    );
    println!("a forged source in unreachable h4's subnet is dropped by h1");
}
