//! Datapath filtering (issue 14 items 3-6, 8; issue 13 item 1), in the netns lab (root):
//! every attack a hostile workload can try from its namespace, each refused, while every
//! path the product serves keeps working. What arrives is checked with tcpdump in the
//! target namespace, and each crafted attack has a control sent the legitimate way that
//! does arrive, so "nothing seen" means refused, not mis-crafted.
//!
//! Also: an agent without a working `nft` refuses to start; a write that fails later is
//! reported until it succeeds; rules changed behind the agent's back are reported by the
//! audit and repaired.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::{exec, exec_any, stdout};
use overlay_lab::process::Daemon;
use serde_json::Value;

const ATTACKS: &str = include_str!("isolation_attacks.py");

fn lab(hosts: usize, tag: &'static str) -> Lab {
    Lab::start_with_agents(LabConfig {
        hosts,
        controllers: 1,
        tag,
        resync_secs: 5,
    })
    .expect("lab")
}

fn network(lab: &Lab, name: &str, subnet: &str, extra: &[&str]) {
    let mut args = vec!["network", "create", name, "--mode", "vxlan", "--subnet", subnet];
    args.extend_from_slice(extra);
    lab.ctl_ok(&args).unwrap();
}

/// A workload attached to `network` on `host`: (namespace, address, MAC).
#[derive(Clone, Debug)]
struct Workload {
    ns: String,
    ip: Ipv4Addr,
    mac: String,
}

fn workload(lab: &mut Lab, network: &str, host: usize, name: &str) -> Workload {
    let ns = lab.add_workload(name).unwrap();
    let ip = lab.attach(network, host, &ns).unwrap();
    let mac = link(&ns, "eth0")["address"].as_str().unwrap().to_string();
    Workload { ns, ip, mac }
}

/// `ip -j link show dev` in `ns`.
fn link(ns: &str, dev: &str) -> Value {
    let v: Value =
        serde_json::from_str(&stdout(&exec(ns, "ip", &["-j", "link", "show", dev]).unwrap())).unwrap();
    v[0].clone()
}

/// The IPv4 address of `dev` in `ns`.
fn address(ns: &str, dev: &str) -> Ipv4Addr {
    let v: Value = serde_json::from_str(&stdout(
        &exec(ns, "ip", &["-j", "-4", "addr", "show", dev]).unwrap(),
    ))
    .unwrap();
    v[0]["addr_info"][0]["local"].as_str().unwrap().parse().unwrap()
}

fn ping(ns: &str, ip: &str) -> bool {
    exec_any(ns, "ping", &["-c", "1", "-W", "1", ip]).is_ok_and(|o| o.status.success())
}

fn ping_from(ns: &str, src: &str, ip: &str) -> bool {
    exec_any(ns, "ping", &["-c", "2", "-i", "0.2", "-W", "1", "-I", src, ip])
        .is_ok_and(|o| o.status.success())
}

fn py(script: &Path, ns: &str, args: &[&str]) -> bool {
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    exec_any(ns, "python3", &all).is_ok_and(|o| o.status.success())
}

/// The IPv6 link-local address of `eth0` in `ns`, if IPv6 is on there.
fn link_local(ns: &str) -> Option<String> {
    let text = stdout(
        &exec(
            ns,
            "ip",
            &["-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"],
        )
        .ok()?,
    );
    let v: Value = serde_json::from_str(&text).ok()?;
    v[0]["addr_info"][0]["local"].as_str().map(str::to_string)
}

/// A tcpdump in `ns` on `iface`, ready once it says it is listening.
fn capture(lab: &Lab, ns: &str, iface: &str, filter: &str, name: &str) -> Daemon {
    lab.tcpdump(ns, iface, filter, name).expect("tcpdump")
}

fn captured(d: &Daemon) -> String {
    std::fs::read_to_string(d.log_path()).unwrap_or_default()
}

/// Checks run in parallel (most of them wait for a timeout): name → whether it got through.
type Check<'a> = (String, Box<dyn FnOnce() -> bool + Send + 'a>);

fn run_all(checks: Vec<Check<'_>>) -> BTreeMap<String, bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .into_iter()
            .map(|(name, check)| (name, s.spawn(check)))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join().unwrap_or(false)))
            .collect()
    })
}

/// What the test found, as a table for the record: (what was tried, expected, got).
#[derive(Default)]
struct Findings {
    rows: Vec<(String, bool, bool)>,
}

impl Findings {
    fn expect(&mut self, results: BTreeMap<String, bool>, passes: bool) {
        for (what, got) in results {
            self.rows.push((what, passes, got));
        }
    }

    fn one(&mut self, what: &str, passes: bool, got: bool) {
        self.rows.push((what.to_string(), passes, got));
    }

    fn finish(self) {
        let mut wrong = Vec::new();
        println!("{:<78} {:<10} result", "path", "expected");
        for (what, passes, got) in &self.rows {
            let expected = if *passes { "works" } else { "refused" };
            let result = match (passes, got) {
                (true, true) => "works",
                (false, false) => "refused",
                (true, false) => "BROKEN",
                (false, true) => "GOT THROUGH",
            };
            println!("{what:<78} {expected:<10} {result}");
            if passes != got {
                wrong.push(format!("{what}: {result}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} wrong: {wrong:#?}",
            wrong.len(),
            self.rows.len()
        );
    }
}

/// Two networks on three hosts, one with NAT egress, and an internet: every attack refused,
/// every served path working.
#[test]
fn workloads_cannot_cross_networks_spoof_or_reach_hosts() {
    let mut lab = lab(3, "is");
    let (_rt, inet) = lab.add_internet().unwrap();
    let evil = lab.add_lan_host("evil", "192.0.2.66/24", None).unwrap();
    let script = lab.dir().join("attacks.py");
    std::fs::write(&script, ATTACKS).unwrap();
    let s = script.as_path();
    network(&lab, "blue", "10.1.0.0/16", &[]);
    network(&lab, "red", "10.2.0.0/16", &["--nat-egress"]);
    let b1 = workload(&mut lab, "blue", 0, "b1");
    let b3 = workload(&mut lab, "blue", 0, "b3");
    let b2 = workload(&mut lab, "blue", 1, "b2");
    let r1 = workload(&mut lab, "red", 0, "r1");
    let r2 = workload(&mut lab, "red", 1, "r2");
    let (h1, h2, h3) = (
        lab.hosts[0].ns.clone(),
        lab.hosts[1].ns.clone(),
        lab.hosts[2].ns.clone(),
    );
    let (u1, u2) = (lab.hosts[0].ip.to_string(), lab.hosts[1].ip.to_string());
    let blue_gw1 = address(&h1, "ovb-1").to_string();
    let blue_gw2 = address(&h2, "ovb-1").to_string();
    let red_gw1 = address(&h1, "ovb-2").to_string();
    let controller = "192.0.2.101";
    let ip = |w: &Workload| w.ip.to_string();
    let all_up = Lab::wait_until(Duration::from_secs(20), || {
        ping(&b1.ns, &ip(&b2)) && ping(&r1.ns, &ip(&r2))
    });
    assert!(all_up.is_some(), "the networks never came up\n{}", lab.logs());

    // Services: a TCP listener on every address of h1 and h2, DNS stand-ins (UDP and TCP 53)
    // on h1's underlay address (the gateways' port 53 is the agent's own DNS server), a TCP
    // listener in a workload of each network and on the internet.
    let lab_bin = bins::bin("overlay-lab").unwrap();
    let lab_bin = lab_bin.to_str().unwrap();
    let serve =
        |ns: &str, addr: &str, name: &str| lab.spawn_in(ns, lab_bin, &["tcp-serve", addr], name).unwrap();
    let _servers = [
        serve(&h1, "0.0.0.0:2222", "h1-2222"),
        serve(&h2, "0.0.0.0:2222", "h2-2222"),
        serve(&h1, &format!("{u1}:53"), "h1-dns-tcp"),
        serve(&b1.ns, "0.0.0.0:7000", "b1-7000"),
        serve(&r1.ns, "0.0.0.0:7000", "r1-7000"),
        serve(&inet, "0.0.0.0:8080", "inet-8080"),
        lab.spawn_in(
            &h1,
            "python3",
            &[s.to_str().unwrap(), "udp-echo", &u1, "53"],
            "h1-dns-udp",
        )
        .unwrap(),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let mut found = Findings::default();

    // What the product serves.
    let tcp = |ns: &str, host: &str, port: &str| py(s, ns, &["tcp", host, port]);
    let tcp_echo = |ns: &str, addr: String| exec(ns, lab_bin, &["tcp-check", &addr]).is_ok();
    let served: Vec<Check> = vec![
        (
            "blue: ping across hosts (h1 -> h2)".into(),
            Box::new(|| ping(&b1.ns, &ip(&b2))),
        ),
        (
            "blue: ping on one host (h1 -> h1)".into(),
            Box::new(|| ping(&b1.ns, &ip(&b3))),
        ),
        (
            "blue: TCP echo across hosts (h2 -> h1)".into(),
            Box::new(|| tcp_echo(&b2.ns, format!("{}:7000", ip(&b1)))),
        ),
        (
            "red: ping across hosts".into(),
            Box::new(|| ping(&r2.ns, &ip(&r1))),
        ),
        (
            "red: ping the internet (NAT egress)".into(),
            Box::new(|| ping(&r1.ns, "203.0.113.10")),
        ),
        (
            "red: TCP to the internet (NAT egress)".into(),
            Box::new(|| tcp_echo(&r1.ns, "203.0.113.10:8080".into())),
        ),
        (
            "blue: ping the gateway".into(),
            Box::new(|| ping(&b1.ns, &blue_gw1)),
        ),
        (
            "blue: DNS over UDP to the gateway".into(),
            Box::new(|| py(s, &b1.ns, &["dns", &blue_gw1, "53"])),
        ),
        (
            "blue: DNS over TCP to the gateway".into(),
            Box::new(|| tcp(&b1.ns, &blue_gw1, "53")),
        ),
        (
            "underlay (h3) -> h1's service (not from a workload)".into(),
            Box::new(|| tcp(&h3, &u1, "2222")),
        ),
        (
            "h1 itself -> its workload b1 (TCP)".into(),
            Box::new(|| tcp(&h1, &ip(&b1), "7000")),
        ),
    ];
    found.expect(run_all(served), true);
    for net in ["blue", "red"] {
        let out = lab.ctl(&["--output", "json", "probe", net]).unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let clean = out.status.success()
            && v["results"].as_array().is_some_and(|r| {
                !r.is_empty() && r.iter().all(|r| r["received"] == r["sent"] && r["error"] == "")
            });
        found.one(
            &format!("{net}: overlayctl probe (gateway to gateway)"),
            true,
            clean,
        );
    }

    // The host's own services, through every address a workload can aim at.
    let refused: Vec<Check> = vec![
        (
            "blue -> TCP on h1's gateway address".into(),
            Box::new(|| tcp(&b1.ns, &blue_gw1, "2222")),
        ),
        (
            "blue -> TCP on h1's underlay address".into(),
            Box::new(|| tcp(&b1.ns, &u1, "2222")),
        ),
        (
            "blue -> TCP on h1's red gateway".into(),
            Box::new(|| tcp(&b1.ns, &red_gw1, "2222")),
        ),
        (
            "blue -> TCP on h2's gateway, through the vxlan".into(),
            Box::new(|| tcp(&b1.ns, &blue_gw2, "2222")),
        ),
        (
            "blue -> TCP on h2's underlay address".into(),
            Box::new(|| tcp(&b1.ns, &u2, "2222")),
        ),
        (
            "blue -> the controller's gRPC port".into(),
            Box::new(|| tcp(&b1.ns, controller, "7400")),
        ),
        (
            "blue -> DNS on h1's underlay address (UDP)".into(),
            Box::new(|| py(s, &b1.ns, &["udp", &u1, "53"])),
        ),
        (
            "blue -> ping h1's underlay address".into(),
            Box::new(|| ping(&b1.ns, &u1)),
        ),
        (
            "blue -> ping h1's red gateway".into(),
            Box::new(|| ping(&b1.ns, &red_gw1)),
        ),
        (
            "red (NAT) -> TCP on h1's gateway address".into(),
            Box::new(|| tcp(&r1.ns, &red_gw1, "2222")),
        ),
        (
            "red (NAT) -> TCP on h1's underlay address".into(),
            Box::new(|| tcp(&r1.ns, &u1, "2222")),
        ),
        (
            "red (NAT) -> TCP on h2's underlay address (masqueraded)".into(),
            Box::new(|| tcp(&r1.ns, &u2, "2222")),
        ),
        (
            "red (NAT) -> the controller's gRPC port (masqueraded)".into(),
            Box::new(|| tcp(&r1.ns, controller, "7400")),
        ),
        (
            "red (NAT) -> ping h2's underlay address".into(),
            Box::new(|| ping(&r1.ns, &u2)),
        ),
        (
            "blue -> red workload on the same host".into(),
            Box::new(|| ping(&b1.ns, &ip(&r1))),
        ),
        (
            "blue -> red workload on another host".into(),
            Box::new(|| ping(&b1.ns, &ip(&r2))),
        ),
        (
            "red -> blue workload on another host".into(),
            Box::new(|| ping(&r2.ns, &ip(&b1))),
        ),
        (
            "red -> TCP to a blue workload".into(),
            Box::new(|| tcp(&r1.ns, &ip(&b1), "7000")),
        ),
    ];
    found.expect(run_all(refused), false);

    // From outside into workloads: a route to the overlay through h1, then new connections.
    exec(&lab.ul, "ip", &["route", "add", "10.1.0.0/16", "via", &u1]).unwrap();
    exec(&lab.ul, "ip", &["route", "add", "10.2.0.0/16", "via", &u1]).unwrap();
    let ul = lab.ul.clone();
    let outside: Vec<Check> = vec![
        (
            "underlay -> TCP into a blue workload".into(),
            Box::new(|| tcp(&ul, &ip(&b1), "7000")),
        ),
        (
            "underlay -> TCP into a red (NAT) workload".into(),
            Box::new(|| tcp(&ul, &ip(&r1), "7000")),
        ),
        (
            "underlay -> ping a blue workload".into(),
            Box::new(|| ping(&ul, &ip(&b1))),
        ),
    ];
    found.expect(run_all(outside), false);
    // One way is enough to inject: h1 must not relay into its tunnel to b2 on h2 (whose
    // replies would be dropped, so only b2's capture tells).
    let b2_in = capture(&lab, &b2.ns, "eth0", "icmp", "cap-b2-relay");
    let _ = ping(&ul, &ip(&b2));
    let relayed = captured(&b2_in).contains(&format!("> {}: ICMP echo request", ip(&b2)));
    found.one(
        "underlay -> b2 on h2, relayed into h1's vxlan (tcpdump)",
        false,
        relayed,
    );
    exec(&lab.ul, "ip", &["route", "del", "10.1.0.0/16"]).unwrap();
    exec(&lab.ul, "ip", &["route", "del", "10.2.0.0/16"]).unwrap();

    // A forged source: b1 sends as a red address, to red workloads on both hosts.
    let r1_cap = capture(&lab, &r1.ns, "eth0", "icmp", "cap-r1");
    let r2_cap = capture(&lab, &r2.ns, "eth0", "icmp", "cap-r2");
    exec(&b1.ns, "ip", &["addr", "add", "10.2.0.77/32", "dev", "eth0"]).unwrap();
    let spoofed: Vec<Check> = vec![
        (
            "blue, forged red source -> red on the same host".into(),
            Box::new(|| ping_from(&b1.ns, "10.2.0.77", &ip(&r1))),
        ),
        (
            "blue, forged red source -> red on another host".into(),
            Box::new(|| ping_from(&b1.ns, "10.2.0.77", &ip(&r2))),
        ),
    ];
    found.expect(run_all(spoofed), false);
    exec(&b1.ns, "ip", &["addr", "del", "10.2.0.77/32", "dev", "eth0"]).unwrap();
    let leaked = |d: &Daemon| captured(d).contains("10.2.0.77");
    found.one("forged source seen in r1 (tcpdump)", false, leaked(&r1_cap));
    found.one("forged source seen in r2 (tcpdump)", false, leaked(&r2_cap));

    // Claiming a neighbour's address: b1 takes b3's IP, announces it, answers for it, and
    // then takes its MAC too.
    let b1_cap = capture(
        &lab,
        &b1.ns,
        "eth0",
        &format!("icmp and dst host {}", ip(&b3)),
        "cap-b1",
    );
    let b2_cap = capture(
        &lab,
        &b2.ns,
        "eth0",
        &format!("icmp and src host {}", ip(&b3)),
        "cap-b2",
    );
    exec(
        &b1.ns,
        "ip",
        &["addr", "add", &format!("{}/32", ip(&b3)), "dev", "eth0"],
    )
    .unwrap();
    for mode in ["-U", "-A"] {
        let _ = exec_any(
            &b1.ns,
            "busybox",
            &["arping", mode, "-c", "2", "-I", "eth0", "-s", &ip(&b3), &ip(&b3)],
        );
    }
    // h1 forgets whom b3's address belongs to, so it must ask again (and b1 answers too).
    exec(&h1, "ip", &["neigh", "flush", "dev", "ovb-1"]).unwrap();
    found.one(
        "b2 -> b3's address still reaches b3",
        true,
        ping(&b2.ns, &ip(&b3)),
    );
    let neigh = stdout(&exec(&h1, "ip", &["neigh", "show", &ip(&b3), "dev", "ovb-1"]).unwrap());
    found.one(
        "h1 resolves b3's address to b1 after b1's ARP",
        false,
        neigh.contains(&b1.mac),
    );
    found.one(
        "b1 sends as b3 (forged source) to b2",
        false,
        ping_from(&b1.ns, &ip(&b3), &ip(&b2)),
    );
    exec(&b1.ns, "ip", &["link", "set", "eth0", "address", &b3.mac]).unwrap();
    found.one("b1 with b3's MAC -> its gateway", false, ping(&b1.ns, &blue_gw1));
    found.one("b2 -> b3 after b1 took b3's MAC", true, ping(&b2.ns, &ip(&b3)));
    exec(&b1.ns, "ip", &["link", "set", "eth0", "address", &b1.mac]).unwrap();
    exec(
        &b1.ns,
        "ip",
        &["addr", "del", &format!("{}/32", ip(&b3)), "dev", "eth0"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    found.one(
        "b3's traffic seen in b1 (tcpdump)",
        false,
        captured(&b1_cap).contains("ICMP"),
    );
    // b3 only ever answers b2; an echo request "from b3" can only be b1's forgery.
    let forged_reached_b2 =
        captured(&b2_cap).contains(&format!("{} > {}: ICMP echo request", ip(&b3), ip(&b2)));
    found.one(
        "b1's forged frames seen in b2 (tcpdump)",
        false,
        forged_reached_b2,
    );

    // IPv6: link-local paths between neighbours and to the host, which no IPv4 check sees.
    match (link_local(&b1.ns), link_local(&b3.ns)) {
        (Some(own), Some(b3_ll)) => {
            let target = format!("{b3_ll}%eth0");
            found.one(
                "b1 -> b3 over IPv6 link-local",
                false,
                exec_any(&b1.ns, "ping", &["-6", "-c", "1", "-W", "1", &target])
                    .is_ok_and(|o| o.status.success()),
            );
            // b1 answers its own multicast echo: only other answers count.
            let all = exec_any(&b1.ns, "ping", &["-6", "-c", "2", "-W", "1", "ff02::1%eth0"]).unwrap();
            let others = stdout(&all)
                .lines()
                .filter(|l| l.contains("bytes from") && !l.contains(&own))
                .count();
            found.one(
                "b1 -> all IPv6 nodes on the bridge (ff02::1): answers",
                false,
                others > 0,
            );
        }
        _ => println!("IPv6 is off in workload namespaces here: no link-local check"),
    }

    // VXLAN with another network's VNI, crafted in a workload. Each attack has its own inner
    // source address; the control (the same frame from a peer host) must arrive.
    let inspect = |n: &str| lab.ctl_json(&["network", "inspect", n]).unwrap();
    let (blue_vni, red_vni) = (
        inspect("blue")["vni"].to_string(),
        inspect("red")["vni"].to_string(),
    );
    let vtep = |ns: &str, dev: &str| link(ns, dev)["address"].as_str().unwrap().to_string();
    let (h1_blue_vtep, h2_blue_vtep, h1_red_vtep) =
        (vtep(&h1, "ovx-1"), vtep(&h2, "ovx-1"), vtep(&h1, "ovx-2"));
    let b2_cap = capture(&lab, &b2.ns, "eth0", "icmp or arp", "cap-b2-vxlan");
    let b3_cap = capture(&lab, &b3.ns, "eth0", "icmp or arp", "cap-b3-vxlan");
    let r1_cap = capture(&lab, &r1.ns, "eth0", "icmp or arp", "cap-r1-vxlan");
    let h2_vx = capture(&lab, &h2, "ovx-1", "", "cap-h2-ovx");
    let h1_vx = capture(&lab, &h1, "ovx-1", "", "cap-h1-ovx");
    let vx = |ns: &str, dst: &str, vni: &str, mac: &str, src: &str, to: &Workload| {
        for kind in ["icmp", "arp"] {
            py(
                s,
                ns,
                &["vxlan", dst, vni, mac, src, &to.ip.to_string(), kind, "5"],
            );
        }
    };
    // h3 leaves the cluster: its underlay address is no peer of h2's any more.
    lab.stop_agent(2);
    if !lab.ctl(&["host", "rm", "h3"]).unwrap().status.success() {
        lab.ctl_ok(&["host", "rm", "h3", "--force"]).unwrap();
    }
    let u3 = lab.hosts[2].ip.to_string();
    let h3_gone = Lab::wait_until(Duration::from_secs(10), || {
        let fdb = lab
            .on_host(1, "bridge", &["fdb", "show", "dev", "ovx-1"])
            .unwrap_or_default();
        // The same pass also drops it from the VXLAN allow list (when there is one).
        let allowed = lab
            .on_host(1, "nft", &["list", "set", "inet", "overlay", "peers"])
            .is_ok_and(|p| p.contains(&u3));
        !fdb.contains(&u3) && !allowed
    });
    assert!(h3_gone.is_some(), "h2 still lists h3 as a peer\n{}", lab.logs());
    let attacks: [(&str, &str, &str, &str, &str, &str, &Workload); 6] = [
        (
            "red (NAT) -> its gateway, blue VNI",
            &r1.ns,
            &red_gw1,
            &blue_vni,
            &h1_blue_vtep,
            "10.1.99.1",
            &b3,
        ),
        (
            "red (NAT) -> h2's underlay, blue VNI (masqueraded as h1)",
            &r1.ns,
            &u2,
            &blue_vni,
            &h2_blue_vtep,
            "10.1.99.2",
            &b2,
        ),
        (
            "blue -> h2's underlay, blue VNI",
            &b1.ns,
            &u2,
            &blue_vni,
            &h2_blue_vtep,
            "10.1.99.3",
            &b2,
        ),
        (
            "blue -> its gateway, red VNI",
            &b1.ns,
            &blue_gw1,
            &red_vni,
            &h1_red_vtep,
            "10.2.99.4",
            &r1,
        ),
        (
            "LAN machine (never a host) -> h2's underlay",
            &evil,
            &u2,
            &blue_vni,
            &h2_blue_vtep,
            "10.1.99.5",
            &b2,
        ),
        (
            "h3, removed from the cluster -> h2's underlay",
            &h3,
            &u2,
            &blue_vni,
            &h2_blue_vtep,
            "10.1.99.6",
            &b2,
        ),
    ];
    for (_, ns, dst, vni, mac, src, to) in &attacks {
        vx(ns, dst, vni, mac, src, to);
    }
    // The control: h1 is a current peer of h2 in blue.
    vx(&h1, &u2, &blue_vni, &h2_blue_vtep, "10.1.99.9", &b2);
    let arrived = Lab::wait_until(Duration::from_secs(5), || captured(&b2_cap).contains("10.1.99.9"));
    found.one(
        "control: crafted VXLAN from a peer host reaches b2",
        true,
        arrived.is_some(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let everywhere = [&b2_cap, &b3_cap, &r1_cap, &h2_vx, &h1_vx]
        .map(captured)
        .join("\n");
    for (what, _, _, _, _, src, _) in &attacks {
        found.one(&format!("VXLAN: {what}"), false, everywhere.contains(src));
    }
    found.finish();

    let rules = lab
        .on_host(0, "nft", &["list", "table", "bridge", "overlay"])
        .unwrap();
    let dropped: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("counter packets"))
        .map(str::trim)
        .collect();
    println!("h1 bridge overlay drop counters:\n  {}", dropped.join("\n  "));
}

/// A directory holding `ip` (so `ip netns exec` still runs) and, when given, an `nft` script.
fn bin_dir(root: &Path, name: &str, nft: Option<&str>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("iproute2's ip");
    std::os::unix::fs::symlink(ip, dir.join("ip")).unwrap();
    if let Some(script) = nft {
        let path = dir.join("nft");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn real_nft() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nft")
}

/// Waits for `host`'s agent to exit; its log.
fn refused_start(lab: &mut Lab, host: usize) -> String {
    let exited = Lab::wait_until(Duration::from_secs(10), || !lab.hosts[host].agent_running());
    assert!(
        exited.is_some(),
        "the agent kept running:\n{}",
        lab.agent_log(host)
    );
    lab.agent_log(host)
}

fn doctor_drift(lab: &Lab, host: &str) -> Vec<String> {
    let out = lab.ctl(&["--output", "json", "doctor"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .and_then(|h| h["drift"].as_array())
        .map(|d| d.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Waits until `cond` holds for h1's drift in doctor; how long it took.
fn wait_drift(lab: &Lab, what: &str, cond: impl Fn(&[String]) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let drift = doctor_drift(lab, "h1");
        if cond(&drift) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: doctor says {drift:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// nft missing or failing at start: one line naming the package, exit 1. Failing later: the
/// error is reported (and the new port stays closed) until a write succeeds. Rules changed
/// behind the agent's back: reported by the audit, repaired by the next pass.
#[test]
fn nft_missing_failing_or_tampered_is_never_silent() {
    let mut lab = Lab::start(LabConfig {
        hosts: 1,
        controllers: 1,
        tag: "nf",
        resync_secs: 3,
    })
    .expect("lab");
    let root = lab.dir().to_path_buf();

    let no_nft = bin_dir(&root, "bin-no-nft", None);
    lab.start_agent_with_env(0, &[("PATH", no_nft.to_str().unwrap())])
        .unwrap();
    let log = refused_start(&mut lab, 0);
    let line = log.lines().last().unwrap_or_default().to_string();
    println!("nft not in PATH: {line}");
    assert!(
        line.contains("`nft` not found") && line.contains("nftables"),
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("nft")).count(),
        1,
        "one line:\n{log}"
    );

    let broken = bin_dir(
        &root,
        "bin-broken-nft",
        Some("#!/bin/sh\necho 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n"),
    );
    lab.start_agent_with_env(0, &[("PATH", broken.to_str().unwrap())])
        .unwrap();
    let log = refused_start(&mut lab, 0);
    let line = log.lines().last().unwrap_or_default().to_string();
    println!("nft that cannot program the kernel: {line}");
    assert!(
        line.contains("Operation not supported") && line.contains("nftables"),
        "{log}"
    );

    // An nft that works until told to fail.
    let flag = root.join("nft-fails");
    let flaky = bin_dir(
        &root,
        "bin-flaky-nft",
        Some(&format!(
            "#!/bin/sh\nif [ -e {} ]; then echo 'simulated nft failure' >&2; exit 1; fi\nexec {} \"$@\"\n",
            flag.display(),
            real_nft()
        )),
    );
    lab.start_agent_with_env(0, &[("PATH", flaky.to_str().unwrap())])
        .unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    network(&lab, "blue", "10.1.0.0/16", &[]);
    let w1 = lab.add_workload("w1").unwrap();
    lab.attach("blue", 0, &w1).unwrap();
    let h1 = lab.hosts[0].ns.clone();
    let gw = address(&h1, "ovb-1").to_string();
    assert!(ping(&w1, &gw), "w1 reaches its gateway");
    wait_drift(&lab, "a clean start", |d| d.is_empty());

    // A network with NAT egress changes the rules' shape (a nat chain): a rebuild by nft,
    // which now fails. (New endpoints and networks alone are set elements, written over
    // nfnetlink without nft.)
    std::fs::write(&flag, "").unwrap();
    network(&lab, "green", "10.2.0.0/16", &["--nat-egress"]);
    let w2 = lab.add_workload("w2").unwrap();
    lab.attach("green", 0, &w2).unwrap();
    let green_gw = address(&h1, "ovb-2").to_string();
    let reported = wait_drift(&lab, "the failed write reported", |d| {
        d.iter()
            .any(|l| l.contains("nft") && l.contains("simulated nft failure"))
    });
    println!(
        "failed nft write reported by doctor after {reported:?}: {:?}",
        doctor_drift(&lab, "h1")
    );
    assert!(
        !ping(&w2, &green_gw),
        "a port whose rules could not be written stays closed"
    );
    assert!(ping(&w1, &gw), "the rules already in the kernel stay");
    std::fs::remove_file(&flag).unwrap();
    let recovered = wait_drift(&lab, "the failure cleared", |d| d.is_empty());
    assert!(
        Lab::wait_until(Duration::from_secs(5), || ping(&w2, &green_gw)).is_some(),
        "w2 works once its rules are written"
    );
    println!("write succeeded again and doctor cleared {recovered:?} after nft recovered");

    // Behind the agent's back: the bridge table deleted, then a rule made to accept all.
    // Whichever looks first reports it: the audit (to doctor) or the pass that repairs it
    // (in the agent's log). Either way it is reported, and the pass repairs it.
    exec(&h1, "nft", &["delete", "table", "bridge", "overlay"]).unwrap();
    let (seen, repaired) = tampered(&lab, "missing nftables table bridge overlay", || {
        lab.on_host(0, "nft", &["list", "tables"])
            .is_ok_and(|t| t.contains("table bridge overlay"))
    });
    println!("table deleted: reported after {seen:?}, repaired after {repaired:?}");

    let chain = lab
        .on_host(
            0,
            "nft",
            &["-a", "list", "chain", "inet", "overlay", "workload_to_host"],
        )
        .unwrap();
    let handle = chain
        .lines()
        .find(|l| l.contains("comment \"no other service of this host\""))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    exec(
        &h1,
        "nft",
        &[&format!(
            "replace rule inet overlay workload_to_host handle {handle} accept comment \"no other service of this host\""
        )],
    )
    .unwrap();
    let (seen, repaired) = tampered(
        &lab,
        "nftables chain inet overlay workload_to_host: rule \"no other service of this host\" changed",
        || {
            lab.on_host(
                0,
                "nft",
                &["list", "chain", "inet", "overlay", "workload_to_host"],
            )
            .is_ok_and(|c| c.contains("drop comment \"no other service of this host\""))
        },
    );
    println!("rule changed: reported after {seen:?}, repaired after {repaired:?}");
    wait_drift(&lab, "doctor clean after the repairs", |d| d.is_empty());
}

/// After a change behind h1's agent: how long until `finding` was reported (by doctor, or in
/// the agent's log by the pass that repaired it) and until `repaired` holds.
fn tampered(lab: &Lab, finding: &str, repaired: impl Fn() -> bool) -> (Duration, Duration) {
    let t = Instant::now();
    let log = || std::fs::read_to_string(lab.agent_log_path(0)).unwrap_or_default();
    let log_before = log().matches(finding).count();
    let (mut seen, mut fixed) = (None, None);
    while seen.is_none() || fixed.is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{finding:?}: reported {seen:?}, repaired {fixed:?}\n{}",
            lab.agent_log(0)
        );
        if seen.is_none()
            && (doctor_drift(lab, "h1").iter().any(|l| l == finding)
                || log().matches(finding).count() > log_before)
        {
            seen = Some(t.elapsed());
        }
        if fixed.is_none() && repaired() {
            fixed = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (seen.unwrap_or_default(), fixed.unwrap_or_default())
}
