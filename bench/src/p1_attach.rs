//! P1: attach latency. From the request to a workload namespace that has its interface, address
//! and default route and answers a ping from its gateway, for `overlay-cni ADD` and `overlayctl
//! endpoint attach` (and the agent's own wiring time alone) vs the CNI reference `bridge` +
//! `host-local` plugins and netavark, all wiring into the same simulated host. overlay-cni and the
//! bridge plugin are exec'd the same way: CNI_* in the environment, the netconf on stdin.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::run_in;

use crate::common::log_events;
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

const CNI_DIR: &str = "/usr/lib/cni";
const NETAVARK: &str = "/usr/lib/podman/netavark";
/// Longer than the agent's report batching (50 ms) and its notification debounce (30 ms).
const SETTLE: Duration = Duration::from_millis(150);

pub fn run(attaches: usize) -> anyhow::Result<Measure> {
    let mut lab = Lab::start(LabConfig {
        hosts: 1,
        controllers: 3,
        tag: "b1",
        resync_secs: 30,
    })?;
    lab.ctl_ok(&[
        "network",
        "create",
        "bench",
        "--mode",
        "vxlan",
        "--subnet",
        "10.70.0.0/16",
        "--host-prefix",
        "20",
    ])?;
    lab.start_agent_with_env(0, &[("OVERLAY_LOG_FORMAT", "json")])?;
    wait_registered(&lab)?;
    let gateway = lab.ctl_json(&["network", "inspect", "bench"])?["host_leases"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["host"] == "h1"))
        .and_then(|l| l["gateway"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("host h1 has no lease on network bench"))?;

    let ctl = bins::bin("overlayctl")?;
    let controllers = lab.controller_list();
    let host_ns = lab.hosts[0].ns.clone();
    let scratch = tempfile::tempdir()?;
    let cni_conf = cni_netconf(scratch.path());
    let overlay_cni = bins::bin("overlay-cni")?;
    let overlay_conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "overlay-cni",
        "agentSocket": lab.local_socket(0),
    })
    .to_string();
    let (mut ours, mut cni, mut netavark) = (Vec::new(), Vec::new(), Vec::new());
    let mut ours_cni = Vec::new();
    // The two CNI plugins' commands alone (spawn to exit), without the ping after them.
    let (mut ours_cni_cmd, mut cni_cmd) = (Vec::new(), Vec::new());
    // Interleaved, so drift of the machine (page cache, CPU frequency) hits all alike.
    for i in 0..attaches {
        let ns = lab.add_workload(&format!("oc{i}"))?;
        settle();
        let mut cmd = Command::new(&overlay_cni);
        cni_env(&mut cmd, &format!("bench-o{i}"), &ns);
        let (exited, pinged) = timed(&host_ns, cmd, overlay_conf.clone().into_bytes(), &ns, &gateway)?;
        ours_cni_cmd.push(exited);
        ours_cni.push(pinged);

        let ns = lab.add_workload(&format!("ov{i}"))?;
        settle();
        let mut cmd = Command::new(&ctl);
        cmd.args(["--controller", &controllers, "endpoint", "attach", "bench"])
            .args(["--host", "h1", "--netns", &ns]);
        ours.push(timed(&lab.ul, cmd, Vec::new(), &ns, &gateway)?.1);

        let ns = lab.add_workload(&format!("cni{i}"))?;
        settle();
        let mut cmd = Command::new(format!("{CNI_DIR}/bridge"));
        cni_env(&mut cmd, &format!("bench-c{i}"), &ns);
        let (exited, pinged) = timed(&host_ns, cmd, cni_conf.clone().into_bytes(), &ns, "10.99.0.1")?;
        cni_cmd.push(exited);
        cni.push(pinged);

        let ns = lab.add_workload(&format!("nva{i}"))?;
        settle();
        let mut cmd = Command::new(NETAVARK);
        cmd.arg("--config")
            .arg(scratch.path().join("netavark"))
            .args(["setup", &format!("/run/netns/{ns}")]);
        let options = netavark_options(i);
        netavark.push(timed(&host_ns, cmd, options.into_bytes(), &ns, "10.98.0.1")?.1);
    }
    let wiring: Vec<f64> = log_events(lab.agent_log_path(0), "endpoint wired")
        .iter()
        .filter_map(|e| e["took_us"].as_f64())
        .map(|us| us / 1000.0)
        .collect();
    anyhow::ensure!(
        wiring.len() >= 2 * attaches,
        "the agent logged {} wired endpoints, expected {}",
        wiring.len(),
        2 * attaches
    );

    // The agent's side of an attach (both paths): from the request to the answer, and the
    // part of it before the pass (namespace checks, allocation, store commit).
    let attached = log_events(lab.agent_log_path(0), "endpoint attached");
    let agent_total: Vec<f64> = attached
        .iter()
        .filter_map(|e| e["took_us"].as_f64())
        .map(|us| us / 1000.0)
        .collect();
    let agent_stored: Vec<f64> = attached
        .iter()
        .filter_map(|e| e["stored_us"].as_f64())
        .map(|us| us / 1000.0)
        .collect();
    let (agent_total, agent_stored) = (Summary::of(&agent_total), Summary::of(&agent_stored));
    let (ours, wiring) = (Summary::of(&ours), Summary::of(&wiring));
    let (ours_cni, cni, netavark) = (Summary::of(&ours_cni), Summary::of(&cni), Summary::of(&netavark));
    let (ours_cni_cmd, cni_cmd) = (Summary::of(&ours_cni_cmd), Summary::of(&cni_cmd));
    println!(
        "P1: overlay-cni {:.1} ms, overlayctl {:.1} ms (agent wiring {:.2} ms), CNI bridge {:.1} ms, \
         netavark {:.1} ms (p50)",
        ours_cni.median, ours.median, wiring.median, cni.median, netavark.median
    );
    let (faster_name, faster) = if cni.median <= netavark.median {
        ("CNI bridge+host-local", &cni)
    } else {
        ("netavark", &netavark)
    };
    let bridge_name = "CNI bridge+host-local";
    let row = |subject: &str, metric: &str, summary: &Summary| Row {
        subject: subject.into(),
        metric: metric.into(),
        unit: "ms".into(),
        summary: summary.clone(),
    };
    let to_ping = "request to a pingable gateway";
    Ok(Measure {
        id: "P1".into(),
        title: format!("attach latency: {attaches} attaches each"),
        rows: vec![
            row("overlay-cni ADD", to_ping, &ours_cni),
            row(
                "overlay-cni ADD",
                "the command alone (spawn to exit)",
                &ours_cni_cmd,
            ),
            row("overlayctl endpoint attach (3 replicas)", to_ping, &ours),
            row("overlay agent alone", "wiring (veth, address, route)", &wiring),
            row("overlay agent alone", "attach: request to answer", &agent_total),
            row(
                "overlay agent alone",
                "attach: up to the stored record",
                &agent_stored,
            ),
            row("CNI bridge + host-local", to_ping, &cni),
            row(
                "CNI bridge + host-local",
                "the command alone (spawn to exit)",
                &cni_cmd,
            ),
            row("netavark setup", to_ping, &netavark),
        ],
        ratios: vec![
            Ratio {
                what: "CNI ADD p50, overlay-cni".into(),
                ours: ours_cni.median,
                peer: cni.median,
                peer_name: bridge_name.into(),
                higher_is_better: false,
            },
            Ratio {
                what: "CNI ADD p99, overlay-cni".into(),
                ours: ours_cni.p99,
                peer: cni.p99,
                peer_name: bridge_name.into(),
                higher_is_better: false,
            },
            Ratio {
                what: "attach p50, overlayctl".into(),
                ours: ours.median,
                peer: faster.median,
                peer_name: faster_name.into(),
                higher_is_better: false,
            },
            Ratio {
                what: "attach p99, overlayctl".into(),
                ours: ours.p99,
                peer: faster.p99,
                peer_name: faster_name.into(),
                higher_is_better: false,
            },
            Ratio {
                what: "attach p50, agent wiring alone".into(),
                ours: wiring.median,
                peer: faster.median,
                peer_name: faster_name.into(),
                higher_is_better: false,
            },
        ],
        goal: "overlay-cni ADD p50 ≤ 0.5× the CNI bridge plugin's".into(),
        goal_met: Some(ours_cni.median <= 0.5 * cni.median),
        notes: vec![format!(
            "Each figure runs from spawning the command to the first ping reply from the gateway inside \
             the new namespace. overlay-cni and the bridge plugin are exec'd alike (CNI_* environment, \
             netconf on stdin, in the host's namespace); overlay-cni asks the host's agent on its local \
             socket, which allocates from the host's lease, commits it to its store (fsync) and wires \
             the namespace; no controller is involved. overlayctl asks a controller (3 replicas, \
             fsync), which records the request through Raft and streams it to the host's agent; the \
             agent carries it out and the controller answers once the agent reports it (another Raft \
             commit); the agent's own wiring time (both paths) comes from its log. The \
             peers run in the host's namespace: the CNI bridge plugin with host-local IPAM reads its \
             netconf on stdin (CNI_COMMAND=ADD); netavark (which leaves IPAM to podman) gets a static \
             address and sets up its firewall rules as it does for podman. All four are interleaved, \
             one attach each per round, each after a 150 ms pause that lets the previous one's \
             deferred work (the agent's batched report, the controllers' commit) end."
        )],
    })
}

/// Lets the previous attach's deferred work end (the agent's batched report to the
/// controllers, their commit, the look after the agent's own writes) before the next one is
/// timed, so that no subject pays for another's.
fn settle() {
    std::thread::sleep(SETTLE);
}

/// The CNI environment of an ADD of interface eth0 in workload namespace `ns`.
fn cni_env(cmd: &mut Command, container: &str, ns: &str) {
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR);
}

/// Runs `cmd` in `ns`, then pings `gateway` from `workload` until it answers; the elapsed ms.
/// Milliseconds from spawning `cmd` to its exit, and to the first ping reply from `gateway`
/// inside `workload` after it.
fn timed(
    ns: &str,
    cmd: Command,
    stdin: Vec<u8>,
    workload: &str,
    gateway: &str,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let out = run_in(ns, cmd, stdin)?;
    let exited = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        out.status.success(),
        "attach into {workload} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    loop {
        let mut ping = Command::new("ping");
        ping.args(["-c", "1", "-W", "1", gateway]);
        if run_in(workload, ping, Vec::new())?.status.success() {
            return Ok((exited, started.elapsed().as_secs_f64() * 1000.0));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "{workload} cannot ping its gateway {gateway}"
        );
    }
}

fn wait_registered(lab: &Lab) -> anyhow::Result<()> {
    crate::common::wait_for(Duration::from_secs(30), || {
        lab.ctl(&["host", "inspect", "h1"])
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })
}

fn cni_netconf(dir: &Path) -> String {
    let data: PathBuf = dir.join("host-local");
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": "10.99.0.0/16",
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data,
        }
    })
    .to_string()
}

fn netavark_options(i: usize) -> String {
    serde_json::json!({
        "container_id": format!("{:064x}", i + 1),
        "container_name": format!("bench-n{i}"),
        "networks": {"bench": {
            "interface_name": "eth0",
            "static_ips": [format!("10.98.{}.{}", 1 + i / 250, 1 + i % 250)],
        }},
        "network_info": {"bench": {
            "name": "bench",
            "id": format!("{:064x}", 0xbe7c4),
            "driver": "bridge",
            "network_interface": "nv0",
            "subnets": [{"subnet": "10.98.0.0/16", "gateway": "10.98.0.1"}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
            "ipam_options": {"driver": "host-local"},
        }},
        "port_mappings": [],
        "dns_servers": [],
    })
    .to_string()
}
