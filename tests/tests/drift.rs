//! Drift repaired within 1 s (issue 14): on one host of a 3-host vxlan lab with workloads
//! pinging, things are deleted behind the agent's back, several times each (a peer route, an
//! FDB entry, a neighbour entry, the bridge address, the nft table, the vxlan device), and the
//! time from the deletion to the repair is measured by polling with `ip`/`bridge`/`nft` in the
//! host namespace every ~10 ms. The periodic pass is set to 300 s, so only the kernel
//! notifications can have repaired anything within the bound.
//!
//! Printed: p50 and max per kind (goal < 1 s; not asserted), how many passes and audits the
//! agent ran (its metrics), and its CPU with unrelated churn: routes, addresses, neighbours and
//! links of a non-overlay device, then a hostile workload flooding its host with frames and
//! ARP from random MACs and addresses. Asserted: every deletion is repaired within 10 s, by an
//! event-triggered pass; a quiet agent runs no pass and no audit (no loop); neither kind of
//! churn costs a pass; `doctor` shows what was repaired.

use std::fs::File;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig, PingFlow, metric};
use serde_json::Value;

/// Generous bound for one repair; the goal is < 1 s.
const REPAIR_BOUND: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
const REPEATS: usize = 5;
const METRICS_PORT: u16 = 9401;

/// Runs `work` on a thread that entered namespace `ns`: the commands it spawns run there
/// without `ip netns exec` (whose setup costs milliseconds per poll).
fn in_ns<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/run/netns/{ns}")).expect("open namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("namespace thread")
}

/// stdout of a command in the calling thread's namespace, `None` if it failed.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(program: &str, args: &[&str]) -> Value {
    run(program, args)
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// What overlay programmed on the host for one peer of the network.
#[derive(Clone, Debug)]
struct Peer {
    subnet: String,
    vtep_ip: String,
    vtep_mac: String,
    underlay: String,
}

/// The host's overlay state as found before the drill (all read in its namespace).
#[derive(Clone, Debug)]
struct HostState {
    vxlan: String,
    bridge: String,
    /// gateway address with prefix, as `ip addr` prints it
    gateway: String,
    peers: Vec<Peer>,
    nft_family: String,
    nft_listing: String,
}

fn discover(peers: usize) -> HostState {
    let links = json("ip", &["-j", "link", "show"]);
    let name = |prefix: &str| {
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} device in {links}"))
            .to_string()
    };
    let (vxlan, bridge) = (name("ovx-"), name("ovb-"));
    let addr = json("ip", &["-j", "-4", "addr", "show", "dev", &bridge]);
    let info = &addr[0]["addr_info"][0];
    let gateway = format!("{}/{}", info["local"].as_str().unwrap_or(""), info["prefixlen"]);
    let routes = json("ip", &["-j", "route", "show", "proto", "79"]);
    let fdb = json("bridge", &["-j", "fdb", "show", "dev", &vxlan]);
    let neigh = json("ip", &["-j", "neigh", "show", "dev", &vxlan]);
    let mut found = Vec::new();
    for r in routes.as_array().into_iter().flatten() {
        let (Some(subnet), Some(vtep_ip)) = (r["dst"].as_str(), r["gateway"].as_str()) else {
            continue;
        };
        let Some(vtep_mac) = neigh
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["dst"] == vtep_ip)
            .and_then(|n| n["lladdr"].as_str())
        else {
            continue;
        };
        let Some(underlay) = fdb
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["mac"] == vtep_mac)
            .and_then(|f| f["dst"].as_str())
        else {
            continue;
        };
        found.push(Peer {
            subnet: subnet.into(),
            vtep_ip: vtep_ip.into(),
            vtep_mac: vtep_mac.into(),
            underlay: underlay.into(),
        });
    }
    assert_eq!(found.len(), peers, "routes {routes} fdb {fdb} neigh {neigh}");
    let tables = json("nft", &["-j", "list", "tables"]);
    let nft_family = tables["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("table"))
        .find(|t| t["name"] == "overlay")
        .and_then(|t| t["family"].as_str())
        .unwrap_or_else(|| panic!("no overlay table in {tables}"))
        .to_string();
    let nft_listing =
        run("nft", &["-s", "list", "table", &nft_family, "overlay"]).expect("list the overlay table");
    HostState {
        vxlan,
        bridge,
        gateway,
        peers: found,
        nft_family,
        nft_listing,
    }
}

fn route_ok(p: &Peer) -> bool {
    run("ip", &["route", "show", &p.subnet, "proto", "79"])
        .is_some_and(|s| s.contains(&format!("via {}", p.vtep_ip)))
}

fn fdb_ok(s: &HostState, p: &Peer) -> bool {
    run("bridge", &["fdb", "show", "dev", &s.vxlan])
        .is_some_and(|out| out.contains(&format!("{} dst {} self permanent", p.vtep_mac, p.underlay)))
}

fn neigh_ok(s: &HostState, p: &Peer) -> bool {
    run("ip", &["neigh", "show", &p.vtep_ip, "dev", &s.vxlan])
        .is_some_and(|out| out.contains(&format!("lladdr {}", p.vtep_mac)) && out.contains("PERMANENT"))
}

fn everything_ok(s: &HostState) -> bool {
    run("ip", &["link", "show", &s.vxlan]).is_some_and(|l| l.contains(",UP"))
        && s.peers
            .iter()
            .all(|p| route_ok(p) && fdb_ok(s, p) && neigh_ok(s, p))
}

/// One way of damaging the host, and how to tell it was repaired.
struct Drill {
    kind: &'static str,
    delete: Vec<String>,
    repaired: Box<dyn Fn(&HostState) -> bool + Send>,
}

fn drills(s: &HostState) -> Vec<Drill> {
    let p = s.peers[0].clone();
    let (p1, p2, p3) = (p.clone(), p.clone(), p.clone());
    let argv = |line: String| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    vec![
        Drill {
            kind: "peer route",
            delete: argv(format!("ip route del {} proto 79", p.subnet)),
            repaired: Box::new(move |_| route_ok(&p1)),
        },
        Drill {
            kind: "fdb entry",
            delete: argv(format!(
                "bridge fdb del {} dev {} dst {} self",
                p.vtep_mac, s.vxlan, p.underlay
            )),
            repaired: Box::new(move |s| fdb_ok(s, &p2)),
        },
        Drill {
            kind: "neighbour",
            delete: argv(format!("ip neigh del {} dev {}", p.vtep_ip, s.vxlan)),
            repaired: Box::new(move |s| neigh_ok(s, &p3)),
        },
        Drill {
            kind: "bridge address",
            delete: argv(format!("ip addr del {} dev {}", s.gateway, s.bridge)),
            repaired: Box::new(|s| {
                run("ip", &["-4", "addr", "show", "dev", &s.bridge])
                    .is_some_and(|out| out.contains(&format!("inet {} ", s.gateway)))
            }),
        },
        Drill {
            kind: "nft table",
            delete: argv(format!("nft delete table {} overlay", s.nft_family)),
            // Back whole (one transaction), rules and all. Listed stateless (counters keep
            // counting) and compared line by line, sorted: a rebuilt set lists its elements
            // in the order it was written, not the order they were added over time.
            repaired: Box::new(|s| {
                run("nft", &["-s", "list", "table", &s.nft_family, "overlay"]).map(|l| sorted_lines(&l))
                    == Some(sorted_lines(&s.nft_listing))
            }),
        },
        Drill {
            kind: "vxlan device",
            delete: argv(format!("ip link del {}", s.vxlan)),
            // The device and every peer's route, neighbour and FDB entry through it.
            repaired: Box::new(everything_ok),
        },
    ]
}

/// Deletes, then polls until repaired; the time from the deletion's end to the first poll
/// that sees the repair (`None`: not within the bound).
fn time_repair(state: &HostState, drill: &Drill) -> Option<Duration> {
    let (program, args) = drill.delete.split_first().expect("a command");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(program, &args).unwrap_or_else(|| panic!("{}: {} failed", drill.kind, drill.delete.join(" ")));
    let t0 = Instant::now();
    while t0.elapsed() < REPAIR_BOUND {
        if (drill.repaired)(state) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(POLL);
    }
    None
}

/// The lines of an `nft list` output, each trimmed, in sorted order.
fn sorted_lines(listing: &str) -> Vec<String> {
    let mut lines: Vec<String> = listing
        .lines()
        .flat_map(|l| l.split(','))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The agent's counters of interest, from its metrics endpoint.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    passes: f64,
    event_passes: f64,
    event_audits: f64,
    relevant: f64,
    ignored: f64,
    overflows: f64,
}

impl Counters {
    fn scrape(lab: &Lab, addr: &str) -> Self {
        let text = lab.scrape(addr).expect("scrape the agent");
        let m = |name: &str| metric(&text, name).unwrap_or(0.0);
        Self {
            passes: m("overlay_agent_reconcile_duration_seconds_count"),
            event_passes: m("overlay_agent_event_passes_total"),
            event_audits: m("overlay_agent_event_audits_total"),
            relevant: m("overlay_agent_kernel_events_total{verdict=\"relevant\"}"),
            ignored: m("overlay_agent_kernel_events_total{verdict=\"ignored\"}"),
            overflows: m("overlay_agent_kernel_event_overflows_total"),
        }
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            passes: self.passes - before.passes,
            event_passes: self.event_passes - before.event_passes,
            event_audits: self.event_audits - before.event_audits,
            relevant: self.relevant - before.relevant,
            ignored: self.ignored - before.ignored,
            overflows: self.overflows - before.overflows,
        }
    }
}

/// CPU time the process has used (user + system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    let hz: u64 = run("getconf", &["CLK_TCK"])
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// Runs `churn`, then lets the agent settle; prints and returns what it cost the agent.
fn measure_churn(lab: &Lab, addr: &str, pid: u32, what: &str, churn: impl FnOnce()) -> Counters {
    let before = Counters::scrape(lab, addr);
    let (cpu0, t0) = (cpu(pid), Instant::now());
    churn();
    std::thread::sleep(Duration::from_secs(1));
    let (used, took) = (cpu(pid) - cpu0, t0.elapsed());
    let d = Counters::scrape(lab, addr).since(before);
    println!(
        "{what}: agent CPU {:.0} ms over {:.1} s ({:.1}% of a core); notifications: {} ignored, {} \
         relevant, {} overflows; {} event audits, {} passes ({} event passes)",
        used.as_secs_f64() * 1000.0,
        took.as_secs_f64(),
        100.0 * used.as_secs_f64() / took.as_secs_f64(),
        d.ignored,
        d.relevant,
        d.overflows,
        d.event_audits,
        d.passes,
        d.event_passes
    );
    d
}

/// A hostile workload floods its host: frames from `n` random MACs (learned by the bridge)
/// carrying ARP requests for the gateway from random unassigned addresses of the subnet
/// (neighbour entries on the bridge). None of it is overlay's to program.
fn flood_script(n: usize, gateway: &str) -> String {
    format!(
        r#"
import os, socket, struct
gw = socket.inet_aton("{gateway}")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range({n}):
    r = os.urandom(6)
    mac = bytes([0x02, r[0], r[1], r[2], r[3], r[4]])
    ip = gw[:3] + bytes([100 + r[5] % 150])
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, gw)
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
"#
    )
}

#[test]
fn drift_is_repaired_within_a_second_by_kernel_notifications() {
    let mut lab = Lab::start(LabConfig {
        hosts: 3,
        controllers: 1,
        tag: "dft",
        // The safety net is out of the picture: only notifications repair within the bound.
        resync_secs: 300,
    })
    .expect("lab");
    let listen = format!("0.0.0.0:{METRICS_PORT}");
    for h in 0..3 {
        lab.start_agent_with_env(h, &[("OVERLAY_METRICS_LISTEN", &listen)])
            .expect("agent");
    }
    lab.wait_hosts_up(Duration::from_secs(30)).expect("hosts up");
    lab.ctl_ok(&[
        "network",
        "create",
        "d",
        "--mode",
        "vxlan",
        "--subnet",
        "10.61.0.0/16",
    ])
    .expect("network");
    let mut workloads = Vec::new();
    for h in 0..3 {
        let ns = lab.add_workload(&format!("w{h}")).expect("workload");
        let ip = lab.attach("d", h, &ns).expect("attach");
        workloads.push((ns, ip));
    }
    for (_, ip) in &workloads[1..] {
        let reached = Lab::wait_until(Duration::from_secs(30), || lab.ping(&workloads[0].0, *ip));
        assert!(reached.is_some(), "w0 cannot reach {ip}\n{}", lab.logs());
    }
    let host_ns = lab.hosts[0].ns.clone();
    let state = in_ns(&host_ns, || discover(2));
    let agent = format!("{}:{METRICS_PORT}", lab.hosts[0].ip);
    let pid = lab.agent_pid(0).expect("agent pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "overlay-agent", "pid {pid} is the agent itself");
    println!("h1: {state:?}");

    // Workloads ping all along (what a deletion costs them is printed, not asserted).
    let flows: Vec<PingFlow> = workloads[1..]
        .iter()
        .map(|(_, ip)| PingFlow::start(&workloads[0].0, *ip, 20, Duration::from_secs(600)).expect("ping"))
        .collect();

    let before = Counters::scrape(&lab, &agent);
    let state = Arc::new(state);
    let mut deletions = 0usize;
    let mut summary = Vec::new();
    for drill in drills(&state) {
        let st = state.clone();
        let (kind, times) = in_ns(&host_ns, move || {
            let mut times = Vec::new();
            for _ in 0..REPEATS {
                times.push(time_repair(&st, &drill));
                // Let the follow-up audit and any straggling notification settle.
                std::thread::sleep(Duration::from_millis(300));
                assert!(everything_ok(&st), "{}: the host is whole again", drill.kind);
            }
            (drill.kind, times)
        });
        deletions += times.len();
        let mut got: Vec<Duration> = times
            .iter()
            .map(|t| {
                t.unwrap_or_else(|| panic!("{kind}: not repaired within {REPAIR_BOUND:?}\n{}", lab.logs()))
            })
            .collect();
        got.sort();
        println!(
            "drift repair, {kind:>14}: p50 {:>4} ms, max {:>4} ms ({} deletions: {:?})",
            percentile(&got, 0.5).as_millis(),
            got[got.len() - 1].as_millis(),
            got.len(),
            got.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
        summary.push((kind, percentile(&got, 0.5), got[got.len() - 1]));
        if kind == "peer route" {
            // What was repaired still shows in doctor, marked as such.
            let doctor = || {
                lab.ctl(&["--output", "json", "doctor"])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let seen = Lab::wait_until(Duration::from_secs(10), || {
                doctor().contains("repaired: missing or different route")
            });
            assert!(seen.is_some(), "doctor shows the repaired route: {}", doctor());
        }
    }
    let drill = Counters::scrape(&lab, &agent).since(before);
    println!(
        "{deletions} deletions: {} passes ({} triggered by notifications, {:.1} per deletion), {} event \
         audits, {} relevant and {} ignored notifications, {} overflows",
        drill.passes,
        drill.event_passes,
        drill.event_passes / deletions as f64,
        drill.event_audits,
        drill.relevant,
        drill.ignored,
        drill.overflows
    );
    assert!(
        drill.event_passes >= deletions as f64,
        "every repair was a pass triggered by notifications: {drill:?}"
    );

    // No loop: once repaired, a quiet agent neither passes nor audits on notifications.
    std::thread::sleep(Duration::from_secs(1));
    let settled = Counters::scrape(&lab, &agent);
    std::thread::sleep(Duration::from_secs(3));
    let quiet = Counters::scrape(&lab, &agent).since(settled);
    println!("quiet 3 s: {quiet:?}");
    assert_eq!(quiet.passes, 0.0, "passes while nothing changed: {quiet:?}");
    assert_eq!(quiet.event_audits, 0.0, "audits while nothing changed: {quiet:?}");

    for (flow, (_, ip)) in flows.into_iter().zip(&workloads[1..]) {
        let stats = flow.stop().expect("ping summary");
        println!(
            "ping w0 -> {ip} every 20 ms during the drill: {} sent, {} lost",
            stats.sent,
            stats.lost()
        );
    }
    for (_, ip) in &workloads[1..] {
        assert!(lab.ping(&workloads[0].0, *ip), "w0 reaches {ip} after the drill");
    }

    // Unrelated churn on a device that is not overlay's: routes, addresses, neighbours, MTU.
    let idle = measure_churn(&lab, &agent, pid, "idle 2 s", || {
        std::thread::sleep(Duration::from_secs(1))
    });
    assert_eq!(idle.passes, 0.0, "{idle:?}");
    let batch = lab.dir().join("churn.batch");
    let mut lines = vec![
        "link add chr0 type veth peer name chr1".to_string(),
        "link set chr0 up".into(),
    ];
    for i in 0..2000 {
        let (a, b) = (i / 250, i % 250);
        lines.push(format!("route add 198.51.{}.{}/32 dev chr0", 100 + a, b));
        lines.push(format!("addr add 203.0.113.{}/32 dev chr1", b));
        lines.push(format!(
            "neigh replace 198.51.100.{} lladdr 02:00:00:00:{a:02x}:{b:02x} dev chr0",
            b
        ));
        lines.push(format!("link set chr1 mtu {}", 1300 + i % 100));
        lines.push(format!("addr del 203.0.113.{}/32 dev chr1", b));
        lines.push(format!("route del 198.51.{}.{}/32 dev chr0", 100 + a, b));
    }
    lines.push("link del chr0".into());
    std::fs::write(&batch, lines.join("\n") + "\n").expect("batch file");
    let churn = measure_churn(&lab, &agent, pid, "12000 changes on a non-overlay device", || {
        let path = batch.clone();
        in_ns(&host_ns, move || {
            run("ip", &["-force", "-batch", path.to_str().expect("path")]).expect("churn batch")
        });
    });
    assert_eq!(churn.passes, 0.0, "unrelated churn cost passes: {churn:?}");
    assert_eq!(
        churn.relevant, 0.0,
        "unrelated churn passed the filter: {churn:?}"
    );
    assert!(
        churn.ignored > 1000.0,
        "the churn was heard (and ignored): {churn:?}"
    );

    // A hostile workload: 20000 frames from random MACs, ARP for the gateway from random
    // addresses. The bridge learns the MACs, the host answers ARP: none of it is overlay's.
    let gateway = state.gateway.split('/').next().unwrap_or_default().to_string();
    let script = flood_script(20_000, &gateway);
    let w0 = workloads[0].0.clone();
    let flood = measure_churn(
        &lab,
        &agent,
        pid,
        "workload flood, 20000 random-MAC ARP frames",
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &w0, "python3", "-c", &script])
                .output()
                .expect("python3");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        },
    );
    assert_eq!(flood.passes, 0.0, "a workload's flood cost passes: {flood:?}");
    assert!(
        lab.ping(&workloads[0].0, workloads[1].1),
        "still forwarding after the flood"
    );

    println!("drift repair summary (goal < 1 s):");
    for (kind, p50, max) in summary {
        println!(
            "  {kind:>14}: p50 {:>4} ms, max {:>4} ms",
            p50.as_millis(),
            max.as_millis()
        );
    }
}
