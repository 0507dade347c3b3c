//! vxlan `--direct-routing`, in the netns lab (root): three hosts on one underlay segment and
//! a fourth behind a router namespace. Same-segment traffic crosses the underlay as it is
//! (tcpdump on the peer's eth0 sees the workload's ICMP and no UDP 4789), traffic with the
//! fourth host keeps the tunnel, and switching direct routing off and on with `network update`
//! keeps an established TCP flow going; another network's workload cannot use the direct routes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::exec;
use overlay_lab::process::Daemon;
use overlay_lab::tcp::Flow;

/// A tcpdump in `ns` on its eth0, ready once it says it is listening.
fn capture(lab: &Lab, ns: &str, filter: &str, name: &str) -> Daemon {
    lab.tcpdump(ns, "eth0", filter, name).expect("tcpdump")
}

/// What `capture` printed so far, after a moment for the last packets to be written.
fn captured(d: &Daemon) -> String {
    std::thread::sleep(Duration::from_millis(500));
    std::fs::read_to_string(d.log_path()).unwrap_or_default()
}

fn subnet_of(lab: &Lab, network: &str, host: &str) -> String {
    lab.lease(network, host).expect("lease").0.to_string()
}

/// h1's overlay route to `subnet`, as `ip route` prints it.
fn route_to(lab: &Lab, subnet: &str) -> String {
    let routes = lab.on_host(0, "ip", &["route", "show", "proto", "79"]).unwrap();
    routes
        .lines()
        .find(|l| l.starts_with(&format!("{subnet} ")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn direct_routing_skips_the_tunnel_on_the_segment_and_keeps_it_across_a_router() {
    let mut lab = Lab::start_with_agents(LabConfig {
        hosts: 3,
        controllers: 1,
        tag: "dr",
        resync_secs: 10,
    })
    .expect("lab");
    let h4 = lab.add_routed_host().unwrap();
    lab.start_agent(h4).unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    let args = [
        "network",
        "create",
        "dr",
        "--mode",
        "vxlan",
        "--subnet",
        "10.82.0.0/16",
        "--direct-routing",
    ];
    lab.ctl_ok(&args).unwrap();
    let inspect = lab.ctl_json(&["network", "inspect", "dr"]).unwrap();
    assert_eq!(inspect["direct_routing"], true, "{inspect}");

    let w: Vec<String> = (1..=4)
        .map(|i| lab.add_workload(&format!("w{i}")).unwrap())
        .collect();
    let ips: Vec<Ipv4Addr> = (0..4).map(|h| lab.attach("dr", h, &w[h]).unwrap()).collect();
    let all = Lab::wait_until(Duration::from_secs(20), || {
        (0..4).all(|a| (0..4).filter(|b| *b != a).all(|b| lab.ping(&w[a], ips[b])))
    });
    assert!(all.is_some(), "workloads do not reach each other\n{}", lab.logs());

    // h1's routes: the same-segment peers via their underlay addresses, h4 through the tunnel.
    let (s2, s4) = (subnet_of(&lab, "dr", "h2"), subnet_of(&lab, "dr", "h4"));
    let direct = route_to(&lab, &s2);
    assert!(
        direct.contains("via 192.0.2.12 dev eth0"),
        "h1's route to h2: {direct}"
    );
    let tunnelled = route_to(&lab, &s4);
    assert!(
        tunnelled.contains("dev ovx-"),
        "h1's route to h4 (behind the router): {tunnelled}"
    );
    println!("12/12 pairs; h1: {direct}; {tunnelled}");

    // On the wire: the workload's own packet on h2's underlay; VXLAN towards h4.
    let dump2 = capture(&lab, &lab.hosts[1].ns, "udp port 4789 or icmp", "tcpdump-h2");
    assert!(lab.ping(&w[0], ips[1]));
    let seen = captured(&dump2);
    assert!(
        seen.contains(&format!("{} > {}: ICMP echo request", ips[0], ips[1])),
        "the workload's packet on h2's eth0: {seen}"
    );
    assert!(
        !seen.contains(".4789"),
        "VXLAN between same-segment hosts: {seen}"
    );
    let dump4 = capture(&lab, &lab.hosts[h4].ns, "udp port 4789", "tcpdump-h4");
    assert!(lab.ping(&w[0], ips[3]));
    let seen4 = captured(&dump4);
    assert!(
        seen4.contains("192.0.2.11.") && seen4.contains("198.51.100.14.4789"),
        "h1 to h4 is not tunnelled: {seen4}"
    );
    println!("h2's eth0: the workload's ICMP as is, no UDP 4789; h4's eth0: VXLAN from h1");
    drop((dump2, dump4));

    // The underlay accepts the network's direct traffic only between its own bridge and CIDR:
    // another network's workload on h1 cannot ride those routes to w2.
    let args = [
        "network",
        "create",
        "other",
        "--mode",
        "vxlan",
        "--subnet",
        "10.83.0.0/16",
    ];
    lab.ctl_ok(&args).unwrap();
    let b1 = lab.add_workload("b1").unwrap();
    lab.attach("other", 0, &b1).unwrap();
    assert!(
        !lab.ping(&b1, ips[1]),
        "another network's workload reached a direct-routed one"
    );
    println!("another network's workload on h1 cannot reach dr's workload on h2");

    // An established flow w1 -> w2 across turning direct routing off and on again.
    let lab_bin = overlay_lab::bins::bin("overlay-lab").unwrap();
    let lab_bin = lab_bin.to_str().unwrap();
    let server: SocketAddr = (ips[1], 7100).into();
    let _srv = lab
        .spawn_in(&w[1], lab_bin, &["tcp-serve", &server.to_string()], "tcp-serve")
        .unwrap();
    let mut flow = Err(String::new());
    for _ in 0..50 {
        flow = Flow::start(&w[0], server);
        if flow.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let flow = flow.expect("cannot connect to the echo server in w2");
    for (on, path) in [("false", "dev ovx-"), ("true", "via 192.0.2.12 dev eth0")] {
        let before = flow.trips();
        lab.ctl_ok(&["network", "update", "dr", "--direct-routing", on])
            .unwrap();
        let moved = Lab::wait_until(Duration::from_secs(10), || route_to(&lab, &s2).contains(path));
        assert!(
            moved.is_some(),
            "direct routing {on}: h1's route to h2 is {}",
            route_to(&lab, &s2)
        );
        if on == "false" {
            // Off: h1 to h2 is tunnelled again.
            let dump = capture(&lab, &lab.hosts[1].ns, "udp port 4789", "tcpdump-h2-off");
            assert!(lab.ping(&w[0], ips[1]));
            let seen = captured(&dump);
            assert!(
                seen.contains("192.0.2.12.4789"),
                "h1 to h2 not tunnelled once off: {seen}"
            );
        }
        let going = Lab::wait_until(Duration::from_secs(10), || flow.trips() > before + 50);
        assert!(
            going.is_some(),
            "the flow stalled after direct routing {on} (at {})",
            flow.trips()
        );
        println!(
            "direct routing {on}: route moved in {:?}, {} round trips since",
            moved.unwrap_or_default(),
            flow.trips() - before
        );
    }
    let trips = flow
        .stop()
        .expect("the established flow broke across the switches");
    println!("one TCP connection, {trips} round trips, across both switches");

    // Another host's own services stay out of reach through its address in the network: h2's
    // gateway is routed to directly, but what arrives there from the underlay gets only what
    // the overlay's path gets (echo, replies).
    let _svc = lab
        .spawn_in(
            &lab.hosts[1].ns,
            lab_bin,
            &["tcp-serve", "0.0.0.0:7200"],
            "h2-service",
        )
        .unwrap();
    let served = Lab::wait_until(Duration::from_secs(5), || {
        exec(&lab.hosts[0].ns, lab_bin, &["tcp-check", "192.0.2.12:7200"]).is_ok()
    });
    assert!(
        served.is_some(),
        "the control: h1 itself cannot reach h2's service"
    );
    let gw2 = lab.lease("dr", "h2").expect("lease").1.to_string();
    assert!(
        lab.ping(&w[0], gw2.parse().unwrap()),
        "echo to h2's gateway (probes) is allowed"
    );
    let addr = format!("{gw2}:7200");
    assert!(
        exec(&w[0], lab_bin, &["tcp-check", &addr]).is_err(),
        "a workload on h1 reached h2's own service through h2's gateway {gw2}"
    );
    println!("h2's service: reachable from h1's host, not from w1 through h2's gateway {gw2}");

    // A machine on the segment that is no overlay host. It can always forge a direct peer's
    // addresses (as it can forge a peer's VXLAN); what it must not get: a host relaying its
    // packets into the tunnel, or a host taking its word that it is one of the host's own
    // workloads or a tunnelled peer's.
    let evil = lab.add_lan_host("evil", "192.0.2.66/24", None).unwrap();
    let w4_cap = capture(&lab, &w[3], "icmp", "cap-w4");
    exec(
        &evil,
        "ip",
        &["route", "add", "10.82.0.0/16", "via", "192.0.2.11"],
    )
    .unwrap();
    let _ = exec(&evil, "ping", &["-c", "2", "-W", "1", &ips[3].to_string()]);
    let relayed = captured(&w4_cap);
    assert!(
        !relayed.contains("192.0.2.66"),
        "h1 relayed a segment machine's packets through its tunnel to w4: {relayed}"
    );
    println!("a segment machine's packets are not relayed into h1's tunnel");
    exec(
        &evil,
        "ip",
        &["route", "replace", "10.82.0.0/16", "via", "192.0.2.12"],
    )
    .unwrap();
    let w2_cap = capture(&lab, &w[1], "icmp", "cap-w2");
    assert!(lab.ping(&w[2], ips[1]), "the control: w3 -> w2");
    let own: Ipv4Addr = lab.lease("dr", "h2").expect("lease").0.nth(77).unwrap();
    for forged in [own, ips[3]] {
        let src = forged.to_string();
        exec(&evil, "ip", &["addr", "add", &format!("{src}/32"), "dev", "eth0"]).unwrap();
        let _ = exec(
            &evil,
            "ping",
            &["-c", "2", "-W", "1", "-I", &src, &ips[1].to_string()],
        );
        exec(&evil, "ip", &["addr", "del", &format!("{src}/32"), "dev", "eth0"]).unwrap();
    }
    let seen = captured(&w2_cap);
    assert!(
        seen.contains(&format!("{} > {}: ICMP echo request", ips[2], ips[1])),
        "the control is not in w2's capture: {seen}"
    );
    for forged in [own, ips[3]] {
        assert!(
            !seen.contains(&format!("{forged} > ")),
            "h2 forwarded a segment machine's packet as {forged} (its own subnet, or a tunnelled peer's): {seen}"
        );
    }
    println!("forged sources from h2's own subnet and from h4's (tunnelled) are dropped by h2");
}
