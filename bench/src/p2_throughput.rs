//! P2: TCP throughput (iperf3) between workloads on two simulated hosts: over overlay's vxlan,
//! over the same topology built by hand with `ip`/`bridge` (flannel's vxlan recipe), and over
//! plain routing with no tunnel. Also checks that nothing was fragmented on the way.

use std::net::Ipv4Addr;
use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig, UNDERLAY_NET};
use overlay_lab::netns::{exec, stdout};

use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

/// One path between two workloads: where the client and server run.
struct Path {
    name: &'static str,
    client_ns: String,
    server_ns: String,
    server_ip: Ipv4Addr,
    /// Namespaces whose fragmentation counters must not move (hosts and workloads).
    watched: Vec<String>,
}

pub fn run(seconds: u32, rounds: usize, ablate: bool) -> anyhow::Result<Measure> {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "b2",
        resync_secs: 30,
    })?;
    lab.ctl_ok(&[
        "network",
        "create",
        "bench",
        "--mode",
        "vxlan",
        "--subnet",
        "10.71.0.0/16",
    ])?;
    // The same two hosts, host-gw: overlay's route mode, for the modes issue's goal.
    lab.ctl_ok(&[
        "network",
        "create",
        "benchr",
        "--mode",
        "route",
        "--subnet",
        "10.72.0.0/16",
    ])?;
    // And vxlan with direct routing: both hosts share the segment, so no peer is tunnelled.
    lab.ctl_ok(&[
        "network",
        "create",
        "benchd",
        "--mode",
        "vxlan",
        "--direct-routing",
        "--subnet",
        "10.73.0.0/16",
    ])?;
    lab.start_agents()?;
    lab.wait_hosts_up(Duration::from_secs(30))?;
    let ours_route = overlay_path(&mut lab, "benchr", "hg", "overlay route (host-gw)", false)?;
    let ours = overlay_path(&mut lab, "bench", "o", "overlay vxlan", true)?;
    let flannel = hand_built(&mut lab, Recipe::Vxlan)?;
    let routed = hand_built(&mut lab, Recipe::Routed)?;
    let ours_direct = overlay_path(&mut lab, "benchd", "dr", "overlay vxlan --direct-routing", false)?;
    let paths = [ours, flannel, routed, ours_route, ours_direct];

    let servers = serve(&lab, &paths)?;
    let (sums, fragmented) = interleaved(&paths, seconds, rounds)?;
    let ablation = if ablate {
        // The control: the same hand-built recipe on two more hosts, so that the distance left
        // once every overlay rule is gone can be told from what two identical paths differ by.
        let control = hand_built_as(&mut lab, Recipe::Vxlan, "g", 83)?;
        let _control_server = lab.spawn_in(&control.server_ns, "iperf3", &["-s"], "iperf3-control")?;
        ablation(&mut lab, &paths[0], &paths[1], &control, seconds, rounds)?
    } else {
        Vec::new()
    };
    drop(servers);
    let mtu = workload_mtu(&paths[0].client_ns)?;
    println!(
        "P2: overlay {:.2} Gbit/s, hand-built vxlan {:.2}, routed {:.2}, overlay route mode {:.2}, direct routing {:.2}; fragments {:?}; workload MTU {mtu}",
        sums[0].median, sums[1].median, sums[2].median, sums[3].median, sums[4].median, fragmented
    );
    let rows = paths
        .iter()
        .map(|p| p.name.to_string())
        .zip(sums.iter().cloned())
        .chain(ablation.iter().cloned())
        .map(|(subject, summary)| Row {
            subject,
            metric: format!("iperf3 TCP, {seconds} s"),
            unit: "Gbit/s".into(),
            summary,
        })
        .collect();
    let ratio = sums[0].median / sums[1].median;
    let vs_routing = |what: &str, ours: f64| Ratio {
        what: what.into(),
        ours,
        peer: sums[2].median,
        peer_name: "plain routing".into(),
        higher_is_better: true,
    };
    Ok(Measure {
        id: "P2".into(),
        title: "throughput between workloads on two hosts".into(),
        rows,
        ratios: vec![
            Ratio {
                what: "TCP throughput vs hand-built vxlan".into(),
                ours: sums[0].median,
                peer: sums[1].median,
                peer_name: "hand-built vxlan".into(),
                higher_is_better: true,
            },
            vs_routing("TCP throughput vs plain routing", sums[0].median),
            vs_routing(
                "route mode vs plain routing (modes issue: goal >= 0.97x)",
                sums[3].median,
            ),
            vs_routing(
                "vxlan --direct-routing vs plain routing (modes issue: goal >= 0.97x)",
                sums[4].median,
            ),
        ],
        goal: "≥ 0.97× the hand-built vxlan, no fragments".into(),
        goal_met: Some(ratio >= 0.97 && fragmented[0] == 0),
        notes: vec![format!(
            "{rounds} runs of iperf3 -t {seconds} per path, interleaved. The hand-built path is flannel's \
             recipe (vxlan nolearning, permanent neigh + fdb entry per peer, onlink route via the peer's \
             vxlan address, workload MTU 1450) in two more host namespaces on the same underlay bridge; \
             the routed path sends workload traffic to the peer host's underlay address with no tunnel \
             (MTU 1500). Workload MTU on overlay: {mtu}. IP fragments created or reassembled in the \
             hosts and workloads during the runs (overlay, hand-built, routed, route mode, direct \
             routing): {fragmented:?}. Overlay's route mode (host-gw) and its vxlan network with \
             --direct-routing (the two hosts share the segment: no peer is tunnelled; workload MTU \
             stays the vxlan one) run on the same two hosts as its vxlan network, with overlay's \
             firewall in the path. Both \
             ends share the machine's 2 cores with the tunnel's softirq work, so the figures are \
             CPU-bound, which is where encapsulation overhead shows."
        )],
    })
}

/// P2 over an IPv6-only underlay (the IPv6 issue): overlay's vxlan against the same hand-built
/// flannel recipe with IPv6 VTEP addresses, on the same two-plus-two hosts layout.
pub fn run_ipv6(seconds: u32, rounds: usize) -> anyhow::Result<Measure> {
    let mut lab = Lab::start_ipv6(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "b6",
        resync_secs: 30,
    })?;
    let args = [
        "network",
        "create",
        "bench",
        "--mode",
        "vxlan",
        "--subnet",
        "10.71.0.0/16",
    ];
    lab.ctl_ok(&args)?;
    lab.start_agents()?;
    lab.wait_hosts_up(Duration::from_secs(30))?;
    let ours = overlay_path(&mut lab, "bench", "o", "overlay vxlan over IPv6", true)?;
    let flannel = hand_built(&mut lab, Recipe::Vxlan)?;
    let paths = [ours, flannel];
    let servers = serve(&lab, &paths)?;
    let (sums, fragmented) = interleaved(&paths, seconds, rounds)?;
    drop(servers);
    let mtu = workload_mtu(&paths[0].client_ns)?;
    println!(
        "P2 over IPv6: overlay {:.2} Gbit/s, hand-built vxlan over IPv6 {:.2}; fragments {:?}; workload MTU {mtu}",
        sums[0].median, sums[1].median, fragmented
    );
    let rows = paths
        .iter()
        .zip(sums.iter().cloned())
        .map(|(p, summary)| Row {
            subject: p.name.to_string(),
            metric: format!("iperf3 TCP, {seconds} s"),
            unit: "Gbit/s".into(),
            summary,
        })
        .collect();
    let ratio = sums[0].median / sums[1].median;
    Ok(Measure {
        id: "P2v6".into(),
        title: "throughput between workloads on two hosts, IPv6-only underlay".into(),
        rows,
        ratios: vec![Ratio {
            what: "TCP throughput vs hand-built vxlan over IPv6".into(),
            ours: sums[0].median,
            peer: sums[1].median,
            peer_name: "hand-built vxlan over IPv6".into(),
            higher_is_better: true,
        }],
        goal: "≥ 0.97× the hand-built VXLAN over IPv6, no fragments (IPv6 issue)".into(),
        goal_met: Some(ratio >= 0.97 && fragmented[0] == 0),
        notes: vec![format!(
            "{rounds} runs of iperf3 -t {seconds} per path, interleaved, on a lab whose underlay \
             interfaces have IPv6 addresses only (2001:db8::/64; controllers on IPv6 too). The \
             hand-built path is flannel's vxlan recipe with `local` and the FDB destinations set \
             to the hosts' IPv6 addresses and workload MTU 1430 (1500 - 70). Workload MTU on \
             overlay: {mtu}. IP fragments created or reassembled in the hosts and workloads \
             during the runs (overlay, hand-built): {fragmented:?}."
        )],
    })
}

/// An iperf3 server at the far end of every path.
fn serve(lab: &Lab, paths: &[Path]) -> anyhow::Result<Vec<overlay_lab::process::Daemon>> {
    let mut servers = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        servers.push(lab.spawn_in(&p.server_ns, "iperf3", &["-s"], &format!("iperf3-s{i}"))?);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(servers)
}

/// `rounds` runs of every path, interleaved, each round starting one path later so no path
/// always runs first (or right after the same neighbour): each path's figures, and the IP
/// fragments its namespaces created or reassembled meanwhile.
fn interleaved(paths: &[Path], seconds: u32, rounds: usize) -> anyhow::Result<(Vec<Summary>, Vec<u64>)> {
    let before: Vec<u64> = paths.iter().map(|p| fragments(&p.watched)).collect();
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            gbps[i].push(iperf(&paths[i], seconds)?);
        }
    }
    let fragmented = paths
        .iter()
        .zip(&before)
        .map(|(p, b)| fragments(&p.watched).saturating_sub(*b))
        .collect();
    Ok((gbps.iter().map(|v| Summary::of(v)).collect(), fragmented))
}

/// What each part of overlay's firewall costs: the agents are killed (the datapath stays in
/// the kernel) and the overlay path measured again after each base chain is deleted in both
/// hosts, cumulatively, in the order a packet meets them, interleaved with runs of the
/// hand-built vxlan (`peer`) so that each step has its own ratio. The last step deletes the
/// tables themselves: only then is conntrack off (the regular chains' `ct` rules hold it),
/// and its distance to the hand-built vxlan is the datapath's, not the filtering's.
/// `control` is a second hand-built vxlan, measured the same way at the end: what two
/// identical paths on different hosts differ by.
fn ablation(
    lab: &mut Lab,
    ours: &Path,
    peer: &Path,
    control: &Path,
    seconds: u32,
    rounds: usize,
) -> anyhow::Result<Vec<(String, Summary)>> {
    for host in 0..2 {
        lab.kill_agent(host);
    }
    // An empty chain list: the tables themselves (`nft flush ruleset`), so nothing of
    // overlay's is left in the hosts' netfilter.
    let steps: [(&str, &[(&str, &str)]); 6] = [
        ("bridge per-port source checks", &[("bridge", "prerouting")]),
        (
            "bridge per-port delivery checks",
            &[("bridge", "forward"), ("bridge", "output")],
        ),
        ("inet forward (isolation)", &[("inet", "forward")]),
        ("inet input (host policy, VXLAN peers)", &[("inet", "input")]),
        (
            // Conntrack stays on: the `ct` rules in the regular chains keep the namespace's
            // conntrack hooks registered until the tables go.
            "raw notrack chains (conntrack on for every packet)",
            &[("inet", "untracked"), ("inet", "untracked_local")],
        ),
        ("overlay's tables (nft flush ruleset: no conntrack)", &[]),
    ];
    let mut out = Vec::new();
    let mut label = String::from("overlay vxlan, agents stopped, all rules");
    for step in std::iter::once(None).chain(steps.iter().map(Some)) {
        if let Some((what, chains)) = step {
            for host in 0..2 {
                let ns = &lab.hosts[host].ns;
                if chains.is_empty() {
                    exec(ns, "nft", &["flush", "ruleset"])?;
                }
                for (family, chain) in chains.iter() {
                    exec(ns, "nft", &["delete", "chain", family, "overlay", chain])?;
                }
            }
            label = format!("overlay vxlan, also without {what}");
        }
        let (summary, ratio) = against(ours, peer, seconds, rounds)?;
        println!(
            "P2 ablation: {label}: {:.2} Gbit/s: {ratio:.3}x the hand-built vxlan",
            summary.median
        );
        out.push((format!("{label} ({ratio:.2}x the hand-built vxlan)"), summary));
    }
    let (summary, ratio) = against(control, peer, seconds, rounds)?;
    println!(
        "P2 ablation: control, the hand-built vxlan on two other hosts: {:.2} Gbit/s: {ratio:.3}x",
        summary.median
    );
    out.push((
        format!("control: hand-built vxlan on two other hosts ({ratio:.2}x the first)"),
        summary,
    ));
    Ok(out)
}

/// `rounds` runs over `path` interleaved with as many over `peer` (which of the two goes
/// first alternates): `path`'s figures and its median's ratio to `peer`'s.
fn against(path: &Path, peer: &Path, seconds: u32, rounds: usize) -> anyhow::Result<(Summary, f64)> {
    let (mut runs, mut peer_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 1 {
            peer_runs.push(iperf(peer, seconds)?);
        }
        runs.push(iperf(path, seconds)?);
        if round % 2 == 0 {
            peer_runs.push(iperf(peer, seconds)?);
        }
    }
    let (summary, peer_summary) = (Summary::of(&runs), Summary::of(&peer_runs));
    let ratio = summary.median / peer_summary.median;
    Ok((summary, ratio))
}

/// A workload on each of the lab's two hosts, attached to `network`: the path between them.
/// `watch_hosts`: the hosts' fragment counters are watched too, not only the workloads'.
fn overlay_path(
    lab: &mut Lab,
    network: &str,
    tag: &str,
    name: &'static str,
    watch_hosts: bool,
) -> anyhow::Result<Path> {
    let mut ns = Vec::new();
    let mut ip = Vec::new();
    for host in 0..2 {
        let w = lab.add_workload(&format!("{tag}{host}"))?;
        ip.push(lab.attach(network, host, &w)?);
        ns.push(w);
    }
    let mut watched = Vec::new();
    if watch_hosts {
        watched.extend([lab.hosts[0].ns.clone(), lab.hosts[1].ns.clone()]);
    }
    watched.extend(ns.iter().cloned());
    Ok(Path {
        name,
        client_ns: ns[0].clone(),
        server_ns: ns[1].clone(),
        server_ip: ip[1],
        watched,
    })
}

fn iperf(p: &Path, seconds: u32) -> anyhow::Result<f64> {
    let secs = seconds.to_string();
    let server = p.server_ip.to_string();
    let args = ["-c", server.as_str(), "-t", secs.as_str(), "-J"];
    // The server may still be starting on the first run: a refused connection is retried.
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        match exec(&p.client_ns, "iperf3", &args) {
            Ok(out) => break out,
            Err(e) if attempt < 5 => {
                eprintln!("P2: iperf3 over {} failed ({e}); retrying", p.name);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => anyhow::bail!("iperf3 over {}: {e}", p.name),
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| anyhow::anyhow!("iperf3 over {} reported no throughput", p.name))
}

/// IP fragments created plus reassemblies requested, summed over `namespaces`.
fn fragments(namespaces: &[String]) -> u64 {
    namespaces
        .iter()
        .filter_map(|ns| exec(ns, "cat", &["/proc/net/snmp"]).ok())
        .map(|out| {
            let text = stdout(&out);
            let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
            let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
                return 0;
            };
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .filter(|(n, _)| *n == "FragCreates" || *n == "ReasmReqds")
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn workload_mtu(ns: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&exec(ns, "ip", &["-j", "link", "show", "eth0"])?.stdout)?;
    v[0]["mtu"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no MTU on {ns} eth0"))
}

#[derive(Clone, Copy, PartialEq)]
enum Recipe {
    /// flannel's vxlan backend, by hand.
    Vxlan,
    /// No tunnel: routes via the peer's underlay address (flannel's host-gw).
    Routed,
}

/// Two more hosts on the lab's underlay, a workload on each, joined by `recipe` with iproute2.
fn hand_built(lab: &mut Lab, recipe: Recipe) -> anyhow::Result<Path> {
    match recipe {
        Recipe::Vxlan => hand_built_as(lab, recipe, "f", 81),
        Recipe::Routed => hand_built_as(lab, recipe, "r", 82),
    }
}

/// [`hand_built`] with its workloads named `tag`0/1 and its subnets in 10.`net`.0.0/16.
/// On an IPv6-only lab the hosts' VTEPs use their IPv6 addresses (and pay 70 bytes, not 50).
fn hand_built_as(lab: &mut Lab, recipe: Recipe, tag: &str, net: u8) -> anyhow::Result<Path> {
    let hosts = [lab.add_host()?, lab.add_host()?];
    let ipv6 = lab.hosts[hosts[0]].ip6.is_some();
    anyhow::ensure!(
        !(ipv6 && recipe == Recipe::Routed),
        "no plain routing over an IPv6 underlay"
    );
    let mtu = match (recipe, ipv6) {
        (Recipe::Vxlan, false) => "1450",
        (Recipe::Vxlan, true) => "1430",
        (Recipe::Routed, _) => "1500",
    };
    let mut workloads = Vec::new();
    for (side, &h) in hosts.iter().enumerate() {
        let host = lab.hosts[h].ns.clone();
        let underlay = match lab.hosts[h].ip6 {
            Some(ip6) => ip6.to_string(),
            None => lab.hosts[h].ip.to_string(),
        };
        let w = lab.add_workload(&format!("{tag}{side}"))?;
        let gw = format!("10.{net}.{side}.1");
        let sh = |args: &[&str]| exec(&host, "ip", args).map(|_| ());
        exec(&host, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        sh(&["link", "add", "cni0", "type", "bridge"])?;
        sh(&["addr", "add", &format!("{gw}/24"), "dev", "cni0"])?;
        sh(&["link", "set", "cni0", "up"])?;
        sh(&[
            "link", "add", "vw", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", &w,
        ])?;
        sh(&["link", "set", "vw", "master", "cni0", "up"])?;
        let in_w = |args: &[&str]| exec(&w, "ip", args).map(|_| ());
        in_w(&["addr", "add", &format!("10.{net}.{side}.2/24"), "dev", "eth0"])?;
        in_w(&["link", "set", "lo", "up"])?;
        in_w(&["link", "set", "eth0", "up"])?;
        in_w(&["route", "add", "default", "via", &gw])?;
        if recipe == Recipe::Vxlan {
            sh(&[
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &underlay,
                "dev",
                "eth0",
                "dstport",
                "4789",
                "nolearning",
            ])?;
            sh(&["link", "set", "flannel.1", "address", &vtep_mac(side)])?;
            sh(&["link", "set", "flannel.1", "mtu", mtu, "up"])?;
            sh(&[
                "addr",
                "add",
                &format!("10.{net}.{side}.0/32"),
                "dev",
                "flannel.1",
            ])?;
        }
        workloads.push((host, w, underlay));
    }
    for side in 0..2 {
        let (host, _, _) = &workloads[side];
        let (_, _, peer_underlay) = &workloads[1 - side];
        let peer_net = format!("10.{net}.{}.0", 1 - side);
        let sh = |args: &[&str]| exec(host, "ip", args).map(|_| ());
        match recipe {
            Recipe::Vxlan => {
                let mac = vtep_mac(1 - side);
                sh(&[
                    "neigh",
                    "add",
                    &peer_net,
                    "lladdr",
                    &mac,
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ])?;
                exec(
                    host,
                    "bridge",
                    &[
                        "fdb",
                        "append",
                        &mac,
                        "dev",
                        "flannel.1",
                        "dst",
                        peer_underlay,
                        "self",
                        "permanent",
                    ],
                )?;
                sh(&[
                    "route",
                    "add",
                    &format!("{peer_net}/24"),
                    "via",
                    &peer_net,
                    "dev",
                    "flannel.1",
                    "onlink",
                ])?;
            }
            Recipe::Routed => {
                sh(&["route", "add", &format!("{peer_net}/24"), "via", peer_underlay])?;
            }
        }
    }
    let server_ip = Ipv4Addr::new(10, net, 1, 2);
    let path = Path {
        name: match recipe {
            Recipe::Vxlan => "hand-built vxlan (flannel recipe)",
            Recipe::Routed => "plain routing, no tunnel",
        },
        client_ns: workloads[0].1.clone(),
        server_ns: workloads[1].1.clone(),
        server_ip,
        watched: workloads
            .iter()
            .flat_map(|(h, w, _)| [h.clone(), w.clone()])
            .collect(),
    };
    anyhow::ensure!(
        lab.ping(&path.client_ns, server_ip),
        "{}: no ping from {} to {server_ip} (underlay {UNDERLAY_NET}.0/24)",
        path.name,
        path.client_ns
    );
    Ok(path)
}

fn vtep_mac(side: usize) -> String {
    format!("02:f1:00:00:00:{:02x}", side + 1)
}
