//! P6: one agent told about N remote hosts (3N neighbour/FDB/route objects). How long it takes
//! to program them, and how much an idle reconcile costs, vs the same objects programmed by
//! iproute2's batch mode (the way a shell-scripted flannel-like setup would).

use std::io::Write;
use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::{block_on_in, exec};

use crate::common::{client, log_events, register_fake_hosts, wait_for};
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

pub fn run(remote_hosts: usize, rounds: usize) -> anyhow::Result<Measure> {
    let mut lab = Lab::start(LabConfig {
        hosts: 1,
        controllers: 1,
        tag: "b6",
        resync_secs: 2,
    })?;
    let addrs = lab.controller_list();
    let t = Instant::now();
    block_on_in(&lab.ul, move || async move {
        let c = client(&addrs)?;
        register_fake_hosts(&c, remote_hosts, 32).await
    })??;
    println!("P6: registered {remote_hosts} remote hosts in {:?}", t.elapsed());
    // Enough /24s for every host: 1024 in a /14.
    lab.ctl_ok(&[
        "network",
        "create",
        "bench",
        "--mode",
        "vxlan",
        "--subnet",
        "10.64.0.0/14",
    ])?;
    let objects = 3 * remote_hosts;

    lab.start_agent_with_env(
        0,
        &[
            ("OVERLAY_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,overlay_agent=debug"),
        ],
    )?;
    let log = lab.agent_log_path(0).to_path_buf();
    let mut program_ms = Vec::new();
    let big_passes = |log: &std::path::Path| -> Vec<f64> {
        log_events(log, "reconciled")
            .iter()
            .filter(|e| e["changes"].as_u64().unwrap_or(0) >= objects as u64)
            .filter_map(|e| e["took_us"].as_f64())
            .map(|us| us / 1000.0)
            .collect()
    };
    for round in 0..rounds {
        if round > 0 {
            // Behind the agent's back: the vxlan device (and with it every entry) disappears.
            exec(&lab.hosts[0].ns, "ip", &["link", "del", "ovx-1"])?;
        }
        let seen = wait_for(Duration::from_secs(120), || {
            let passes = big_passes(&log);
            (passes.len() > round).then(|| passes[round])
        })?;
        program_ms.push(seen);
    }
    let routes = lab
        .on_host(0, "ip", &["route", "show", "proto", "79"])?
        .lines()
        .count();
    anyhow::ensure!(
        routes == remote_hosts,
        "expected {remote_hosts} routes, kernel has {routes}"
    );

    // Idle passes: the periodic full reconcile with nothing to do.
    let idle = wait_for(Duration::from_secs(60), || {
        let v: Vec<f64> = log_events(&log, "reconcile pass: nothing to do")
            .iter()
            .filter_map(|e| e["took_us"].as_f64())
            .map(|us| us / 1000.0)
            .collect();
        (v.len() >= rounds).then_some(v)
    })?;

    let peer_ms = hand_built(&mut lab, remote_hosts, rounds)?;
    let ours = Summary::of(&program_ms);
    let peer = Summary::of(&peer_ms);
    let idle = Summary::of(&idle);
    println!(
        "P6: ours {:.1} ms, ip -batch {:.1} ms, idle pass {:.2} ms",
        ours.median, peer.median, idle.median
    );
    Ok(Measure {
        id: "P6".into(),
        title: format!("agent programming: {remote_hosts} remote hosts ({objects} objects)"),
        rows: vec![
            Row {
                subject: "overlay agent".into(),
                metric: format!("program {objects} neigh/fdb/route"),
                unit: "ms".into(),
                summary: ours.clone(),
            },
            Row {
                subject: "ip -batch + bridge -batch".into(),
                metric: format!("program {objects} neigh/fdb/route"),
                unit: "ms".into(),
                summary: peer.clone(),
            },
            Row {
                subject: "overlay agent".into(),
                metric: "idle full reconcile (dump + diff, 0 changes)".into(),
                unit: "ms".into(),
                summary: idle.clone(),
            },
        ],
        ratios: vec![Ratio {
            what: format!("program {objects} objects"),
            ours: ours.median,
            peer: peer.median,
            peer_name: "ip -batch".into(),
            higher_is_better: false,
        }],
        goal: "program < 1 s, idle reconcile ~0 work".into(),
        goal_met: Some(ours.median < 1000.0 && idle.median < 100.0),
        notes: vec![format!(
            "Ours is measured by the agent itself (one reconcile pass: dump, diff, apply, including creating \
             the vxlan device, which each round deletes behind its back). The peer programs the same \
             {objects} objects into a fresh vxlan device with two iproute2 batch commands. An idle pass \
             made 0 changes."
        )],
    })
}

/// The same objects, programmed by iproute2 batch files into a vxlan device made by hand.
fn hand_built(lab: &mut Lab, n: usize, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let ns = lab.add_workload("peer6")?;
    exec(
        &ns,
        "ip",
        &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
    )?;
    exec(&ns, "ip", &["addr", "add", "192.0.2.99/24", "dev", "eth0"])?;
    exec(&ns, "ip", &["link", "set", "eth0", "up"])?;
    let dir = tempfile::tempdir()?;
    let (ipb, brb) = (dir.path().join("ip.batch"), dir.path().join("bridge.batch"));
    {
        let mut ip = std::fs::File::create(&ipb)?;
        let mut br = std::fs::File::create(&brb)?;
        for i in 0..n {
            let (a, b) = (64 + i / 256, i % 256);
            let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
            writeln!(ip, "route add 10.{a}.{b}.0/24 via 10.{a}.{b}.0 dev vx0 onlink")?;
            writeln!(ip, "neigh add 10.{a}.{b}.0 lladdr {mac} dev vx0 nud permanent")?;
            writeln!(
                br,
                "fdb add {mac} dev vx0 dst 100.64.{}.{} self permanent",
                i / 250,
                i % 250 + 1
            )?;
        }
    }
    let mut times = Vec::new();
    for _ in 0..rounds {
        let _ = exec(&ns, "ip", &["link", "del", "vx0"]);
        let t = Instant::now();
        exec(
            &ns,
            "ip",
            &[
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "42",
                "dstport",
                "4789",
                "local",
                "192.0.2.99",
                "dev",
                "eth0",
                "nolearning",
            ],
        )?;
        exec(&ns, "ip", &["link", "set", "vx0", "up"])?;
        exec(&ns, "ip", &["-batch", ipb.to_str().unwrap_or_default()])?;
        exec(&ns, "bridge", &["-batch", brb.to_str().unwrap_or_default()])?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let routes = exec(&ns, "ip", &["route", "show", "dev", "vx0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())?;
    anyhow::ensure!(routes == n, "hand-built: {routes} routes, expected {n}");
    Ok(times)
}
