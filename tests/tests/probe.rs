//! `overlayctl probe` (issue #8): the N×N matrix finds a tunnel blocked between two hosts (UDP
//! 4789 dropped by nftables in one host's namespace) and an MTU black hole (an underlay port
//! that drops full-size frames), each exactly for the pairs concerned.

use std::collections::BTreeSet;
use std::time::Instant;

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::exec;
use serde_json::Value;

/// (exit success, JSON) of `overlayctl -o json probe p`.
fn probe(lab: &Lab) -> (bool, Value) {
    let out = lab.ctl(&["--output", "json", "probe", "p"]).expect("run probe");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

/// The (from, to) pairs that lost packets at the small or the big size.
fn failing(v: &Value, big: bool) -> BTreeSet<(String, String)> {
    let results = v["results"].as_array().cloned().unwrap_or_default();
    let sizes: Vec<u64> = results.iter().filter_map(|r| r["size"].as_u64()).collect();
    let size = if big {
        sizes.iter().max()
    } else {
        sizes.iter().min()
    }
    .copied();
    results
        .iter()
        .filter(|r| r["size"].as_u64() == size)
        .filter(|r| r["received"] != r["sent"] || r["error"] != "")
        .map(|r| {
            (
                r["from"].as_str().unwrap_or("").to_string(),
                r["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn probe_matrix_finds_blocked_tunnels_and_mtu_black_holes() {
    let mut lab = Lab::start(LabConfig {
        hosts: 3,
        controllers: 1,
        tag: "pr",
        resync_secs: 30,
    })
    .expect("lab");
    lab.start_agents().unwrap();
    lab.wait_hosts_up(std::time::Duration::from_secs(30)).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "p",
        "--mode",
        "vxlan",
        "--subnet",
        "10.55.0.0/16",
    ])
    .unwrap();
    // A workload per host makes sure every agent has programmed the network.
    for h in 0..3 {
        let ns = lab.add_workload(&format!("w{h}")).unwrap();
        lab.attach("p", h, &ns).unwrap();
    }

    let t = Instant::now();
    let (ok, healthy) = probe(&lab);
    let healthy_in = t.elapsed();
    assert!(ok, "a healthy network probes clean: {healthy}");
    assert_eq!(
        healthy["results"].as_array().map(Vec::len),
        Some(12),
        "3×2 pairs × 2 sizes"
    );

    // The tunnel between h1 and h2 is cut: UDP 4789 dropped in h1's namespace, both ways.
    let (h1, h2) = (lab.hosts[0].ns.clone(), lab.hosts[1].ip.to_string());
    let nft = |args: &[&str]| exec(&h1, "nft", args).expect("nft");
    nft(&["add", "table", "inet", "probe_test"]);
    for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
        nft(&[
            "add",
            "chain",
            "inet",
            "probe_test",
            chain,
            &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
        ]);
        nft(&[
            "add",
            "rule",
            "inet",
            "probe_test",
            chain,
            "ip",
            dir,
            &h2,
            "udp",
            "dport",
            "4789",
            "drop",
        ]);
    }
    let (ok, blocked) = probe(&lab);
    assert!(!ok, "probe exits 1 when a path fails");
    let cut = pairs(&[("h1", "h2"), ("h2", "h1")]);
    assert_eq!(failing(&blocked, false), cut, "small probes: {blocked}");
    assert_eq!(failing(&blocked, true), cut, "big probes: {blocked}");
    nft(&["delete", "table", "inet", "probe_test"]);

    // An MTU black hole: h3's underlay port drops frames over 1400 bytes. Small probes pass,
    // full-size ones (1450-byte packets, 1500 bytes with VXLAN) to and from h3 are lost.
    exec(&lab.ul, "ip", &["link", "set", "h3", "mtu", "1400"]).unwrap();
    let (ok, holed) = probe(&lab);
    assert!(!ok);
    assert_eq!(
        failing(&holed, false),
        BTreeSet::new(),
        "small probes pass: {holed}"
    );
    assert_eq!(
        failing(&holed, true),
        pairs(&[("h1", "h3"), ("h3", "h1"), ("h2", "h3"), ("h3", "h2")]),
        "big probes: {holed}"
    );
    exec(&lab.ul, "ip", &["link", "set", "h3", "mtu", "1500"]).unwrap();
    let (ok, _) = probe(&lab);
    assert!(ok, "clean again once the underlay is fixed");

    let table = lab.ctl(&["probe", "p"]).unwrap();
    println!(
        "probe: healthy 3-host matrix in {healthy_in:?}; blocked UDP 4789 h1<->h2 found exactly; \
         MTU black hole at h3 found by the big probe only\n{}",
        String::from_utf8_lossy(&table.stdout)
    );
}
