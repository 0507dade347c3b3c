//! VXLAN over an IPv6-only underlay, in the netns lab (root): no underlay interface has an
//! IPv4 address, the controllers listen on IPv6, and the agents pick their interface's global
//! IPv6 address. The vxlan devices send from it, at 1430 bytes on a 1500 underlay (VXLAN over
//! IPv6 costs 70), and a full-size packet with DF crosses; the FDB points at the peers' IPv6
//! addresses; VXLAN from an address that is no peer's is dropped, the same frame from a peer
//! is not. The network is dual-stack, so the same holds for IPv6 inside IPv6: `ping -6 -M do
//! -s 1382` (1430 bytes) crosses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::{exec, exec_any, stdout};
use serde_json::Value;

const ATTACKS: &str = include_str!("isolation_attacks.py");

fn json(ns: &str, program: &str, args: &[&str]) -> Value {
    let out = exec(ns, program, args).unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null)
}

/// `ping -M do` (DF set) with `size` bytes of payload from `ns` to `ip` (either family):
/// whether it is answered.
fn ping_df(ns: &str, ip: impl Into<IpAddr>, size: usize) -> bool {
    let ip = ip.into();
    let size = size.to_string();
    exec_any(
        ns,
        "ping",
        &["-c", "1", "-W", "2", "-M", "do", "-s", &size, &ip.to_string()],
    )
    .is_ok_and(|o| o.status.success())
}

/// Vxlan network `blue` on `cidr` (and `more` arguments) and a workload attached on each of
/// the first three hosts: their namespaces and addresses.
fn blue_on_three_hosts(lab: &mut Lab, cidr: &str, more: &[&str]) -> (Vec<String>, Vec<Ipv4Addr>) {
    let mut args = vec!["network", "create", "blue", "--mode", "vxlan", "--subnet", cidr];
    args.extend_from_slice(more);
    lab.ctl_ok(&args).unwrap();
    let w: Vec<String> = (1..=3)
        .map(|i| lab.add_workload(&format!("w{i}")).unwrap())
        .collect();
    let ips = (0..3).map(|h| lab.attach("blue", h, &w[h]).unwrap()).collect();
    (w, ips)
}

#[test]
fn vxlan_over_an_ipv6_only_underlay() {
    let mut lab = Lab::start_ipv6(LabConfig {
        hosts: 3,
        controllers: 1,
        tag: "v6",
        resync_secs: 10,
    })
    .expect("lab");
    lab.start_agents().unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    let hosts = lab.ctl_json(&["host", "ls"]).unwrap();
    let underlay_of = |name: &str| {
        hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == name))
            .map(|h| h["underlay_ip"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(underlay_of("h1"), "2001:db8::11", "{hosts}");
    assert_eq!(underlay_of("h2"), "2001:db8::12", "{hosts}");

    let (w, ips) = blue_on_three_hosts(&mut lab, "10.90.0.0/16", &["--subnet", "fd00:90::/48"]);
    let all = Lab::wait_until(Duration::from_secs(20), || {
        (0..3).all(|a| (0..3).filter(|b| *b != a).all(|b| lab.ping(&w[a], ips[b])))
    });
    assert!(all.is_some(), "workloads do not reach each other\n{}", lab.logs());
    let inspect = lab.ctl_json(&["network", "inspect", "blue"]).unwrap();
    assert_eq!(inspect["effective_mtu"], 1430, "{inspect}");

    // The kernel: the device sends from h1's IPv6 address, at 1430; the FDB names the peers'.
    let h1 = lab.hosts[0].ns.clone();
    let link = json(&h1, "ip", &["-d", "-j", "link", "show", "ovx-1"]);
    let data = &link[0]["linkinfo"]["info_data"];
    assert_eq!(data["local6"], "2001:db8::11", "{link}");
    assert_eq!(link[0]["mtu"], 1430, "{link}");
    let fdb = json(&h1, "bridge", &["-j", "fdb", "show", "dev", "ovx-1"]);
    for peer in ["2001:db8::12", "2001:db8::13"] {
        assert!(
            fdb.as_array().is_some_and(|f| f.iter().any(|e| e["dst"] == peer)),
            "no FDB entry to {peer}: {fdb}"
        );
    }
    println!("h1: ovx-1 local 2001:db8::11, mtu 1430; FDB to 2001:db8::12 and ::13");

    // On the wire: VXLAN over IPv6 between the hosts' addresses.
    let dump = lab
        .tcpdump(&lab.hosts[1].ns, "eth0", "ip6 and udp port 4789", "tcpdump-h2")
        .unwrap();
    assert!(lab.ping(&w[0], ips[1]));
    std::thread::sleep(Duration::from_millis(500));
    let seen = std::fs::read_to_string(dump.log_path()).unwrap_or_default();
    assert!(
        seen.contains("2001:db8::11.") && seen.contains("2001:db8::12.4789"),
        "no VXLAN over IPv6 from h1 on h2's eth0: {seen}"
    );
    drop(dump);

    // Full size with DF: 1402 bytes of ICMP payload + 28 of headers = 1430 crosses; one more
    // does not leave the workload.
    assert!(
        ping_df(&w[0], ips[1], 1402),
        "a 1430-byte packet with DF did not cross"
    );
    assert!(
        !ping_df(&w[0], ips[1], 1403),
        "a 1431-byte packet with DF left a 1430 device"
    );
    println!("ping -M do -s 1402 crosses, -s 1403 does not");
    // The same for IPv6 inside: 1382 bytes of ICMPv6 payload + 48 of headers = 1430.
    let listed = lab.ctl_json(&["endpoint", "ls"]).unwrap();
    let ip6_of = |ip: Ipv4Addr| -> std::net::Ipv6Addr {
        listed
            .as_array()
            .and_then(|a| a.iter().find(|e| e["ip"] == ip.to_string().as_str()))
            .and_then(|e| e["ip6"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no IPv6 address for {ip}: {listed}"))
    };
    let w2_ip6 = ip6_of(ips[1]);
    let crossed = Lab::wait_until(Duration::from_secs(10), || ping_df(&w[0], w2_ip6, 1382));
    assert!(
        crossed.is_some(),
        "a 1430-byte IPv6 packet did not cross to {w2_ip6}"
    );
    assert!(
        !ping_df(&w[0], w2_ip6, 1383),
        "a 1431-byte IPv6 packet left a 1430 device"
    );
    println!("ping -6 -M do -s 1382 to {w2_ip6} crosses, -s 1383 does not");

    // VXLAN forged from the underlay namespace (2001:db8::254, no host): dropped by h2. The
    // same frame from h3 (a peer) arrives, so the frame itself is good.
    let script = lab.dir().join("attacks.py");
    std::fs::write(&script, ATTACKS).unwrap();
    let script = script.to_str().unwrap().to_string();
    let vni = inspect["vni"].to_string();
    // The inner frame is for h2's VTEP (the vxlan device routes to its bridge).
    let h2_vtep = json(&lab.hosts[1].ns, "ip", &["-j", "link", "show", "ovx-1"]);
    let vtep_mac = h2_vtep[0]["address"].as_str().unwrap().to_string();
    let w2_cap = lab.tcpdump(&w[1], "eth0", "icmp", "cap-w2").unwrap();
    let (w2_ip, script) = (ips[1].to_string(), script.as_str());
    let forge = |ns: &str, src: &str| {
        let args = [
            script,
            "vxlan",
            "2001:db8::12",
            &vni,
            &vtep_mac,
            src,
            &w2_ip,
            "icmp",
            "5",
        ];
        let _ = exec_any(ns, "python3", &args);
    };
    forge(&lab.ul.clone(), "10.90.200.66");
    forge(&lab.hosts[2].ns.clone(), "10.90.200.13");
    std::thread::sleep(Duration::from_millis(500));
    let seen = std::fs::read_to_string(w2_cap.log_path()).unwrap_or_default();
    assert!(
        seen.contains("10.90.200.13 > "),
        "the control (VXLAN from peer h3) did not reach w2: {seen}"
    );
    assert!(
        !seen.contains("10.90.200.66 > "),
        "VXLAN from a non-peer IPv6 address reached w2: {seen}"
    );
    println!("VXLAN from 2001:db8::254 (no peer) dropped; from h3 (a peer) delivered");
}

/// A network whose hosts mix underlay families: h1 and h2 on IPv4, h3 on IPv6 (its control
/// plane over a management interface). h1 and h2 reach each other; nobody writes a tunnel
/// entry towards the other family, and `doctor` names each unreachable peer in one line.
#[test]
fn mixed_underlay_families_are_reported_never_half_wired() {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "mx",
        resync_secs: 10,
    })
    .expect("lab");
    let h3 = lab.add_ipv6_underlay_host().unwrap();
    lab.start_agents().unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    let (w, ips) = blue_on_three_hosts(&mut lab, "10.91.0.0/16", &[]);
    let same = Lab::wait_until(Duration::from_secs(20), || {
        lab.ping(&w[0], ips[1]) && lab.ping(&w[1], ips[0])
    });
    assert!(
        same.is_some(),
        "h1 and h2 (both IPv4) do not reach each other\n{}",
        lab.logs()
    );
    let inspect = lab.ctl_json(&["network", "inspect", "blue"]).unwrap();
    assert_eq!(
        inspect["effective_mtu"], 1430,
        "the IPv6 member's overhead counts: {inspect}"
    );

    let drift_of = |host: &str| {
        let out = lab.ctl(&["--output", "json", "doctor"]).expect("doctor");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["host"] == host))
            .map(|h| h["drift"].to_string())
            .unwrap_or_default()
    };
    let says = [
        (
            "h1",
            "peer h3 (2001:db8::13) is on an IPv6 underlay and this host (192.0.2.11) on an IPv4 one",
        ),
        (
            "h3",
            "peer h1 (192.0.2.11) is on an IPv4 underlay and this host (2001:db8::13) on an IPv6 one",
        ),
    ];
    for (host, line) in says {
        let reported = Lab::wait_until(Duration::from_secs(20), || drift_of(host).contains(line));
        assert!(
            reported.is_some(),
            "doctor on {host} does not say {line:?}: {}",
            drift_of(host)
        );
    }
    // Never half-wired: no FDB entry, neighbour or route towards the other family's host.
    let h1_fdb = lab
        .on_host(0, "bridge", &["fdb", "show", "dev", "ovx-1"])
        .unwrap();
    assert!(!h1_fdb.contains("2001:db8::13"), "h1 tunnels to h3: {h1_fdb}");
    let h3_fdb = lab
        .on_host(h3, "bridge", &["fdb", "show", "dev", "ovx-1"])
        .unwrap();
    assert!(
        !h3_fdb.contains("192.0.2."),
        "h3 tunnels to an IPv4 host: {h3_fdb}"
    );
    let s3 = lab.lease("blue", "h3").expect("lease").0.to_string();
    let routes = lab.on_host(0, "ip", &["route", "show", "proto", "79"]).unwrap();
    assert!(!routes.contains(&s3), "h1 routes h3's subnet {s3}: {routes}");
    assert!(!lab.ping(&w[0], ips[2]), "w1 reached w3 across underlay families");
    println!("h1 <-> h2 over IPv4; h3 (IPv6) reported by doctor on both sides, no entries towards it");
}
