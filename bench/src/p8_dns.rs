//! P8: DNS queries/s and latency of the agent's DNS server vs dnsmasq, both answering the same
//! N local names (ours from its zone, dnsmasq from a hosts file), both on the same bridge of
//! one host namespace, loaded by the same tool (dnsperf, Debian) from a workload namespace,
//! in alternation. Throughput saturating (dnsperf's closed loop); latency at a fixed rate
//! well below saturation, from dnsperf's per-query report.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use overlay_lab::dns::{DnsConfig, DnsLab, Dnsmasq, ServerInNs, zone};
use overlay_lab::netns::exec_any;

use crate::common::rss_and_cpu;
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

const OURS: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 53);
/// The fixed query rate of the latency runs.
const LATENCY_QPS: u32 = 5000;

#[derive(Default)]
struct Side {
    qps: Vec<f64>,
    latency_ms: Vec<f64>,
    cpu_us: Vec<f64>,
    lost: u64,
    not_noerror: u64,
}

/// dnsmasq and dnsperf from Debian, if missing.
fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("/usr/sbin/dnsmasq", "dnsmasq-base"),
        ("/usr/bin/dnsperf", "dnsperf"),
    ]
    .iter()
    .filter(|(f, _)| !Path::new(f).exists())
    .map(|(_, p)| *p)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let ok = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
        anyhow::ensure!(ok, "apt-get {} failed", args.join(" "));
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}

/// One dnsperf run from `client` against `server`: its full output.
fn dnsperf(
    client: &str,
    server: Ipv4Addr,
    data: &Path,
    seconds: u32,
    extra: &[&str],
) -> anyhow::Result<String> {
    let mut args = vec![
        "-s".to_string(),
        server.to_string(),
        "-d".into(),
        data.display().to_string(),
        "-l".into(),
        seconds.to_string(),
        "-t".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = exec_any(client, "dnsperf", &args)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "dnsperf failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// The number after `label` in dnsperf's statistics.
fn stat(text: &str, label: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Non-NOERROR answers in dnsperf's "Response codes:" line.
fn not_noerror(text: &str) -> u64 {
    let Some(line) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
    else {
        return 0;
    };
    line.split(',')
        .filter_map(|part| {
            let mut w = part.split_whitespace();
            let code = w.next()?;
            let n: u64 = w.next()?.parse().ok()?;
            (code != "NOERROR").then_some(n)
        })
        .sum()
}

pub fn run(seconds: u32, rounds: usize, names: usize) -> anyhow::Result<Measure> {
    ensure_tools()?;
    anyhow::ensure!((1..=60_000).contains(&names), "--names must be 1..60000");
    let mut lab = DnsLab::new("b8")?;
    lab.bridge("ovb-1", Some("10.88.0.1/16"))?;
    lab.host_ip(&["addr", "add", "10.88.0.53/16", "dev", "ovb-1"])?;
    let client = lab.workload("c", "ovb-1", "10.88.0.2/16", OURS)?;

    let addr = |i: usize| Ipv4Addr::new(10, 88, 1 + (i / 250) as u8, (i % 250) as u8 + 1);
    let mut hosts = String::new();
    let mut data = String::new();
    let mut pairs = Vec::with_capacity(names);
    for i in 0..names {
        hosts.push_str(&format!("{} n{i}.blue.overlay n{i}\n", addr(i)));
        pairs.push((format!("n{i}"), addr(i).to_string()));
    }
    // A fixed shuffle, so that neither server sees names in insertion order.
    for k in 0..names {
        let i = (k * 7919) % names;
        data.push_str(&format!("n{i}.blue.overlay A\n"));
    }
    let hosts_file = lab.dir().join("hosts");
    let data_file = lab.dir().join("queries");
    std::fs::write(&hosts_file, hosts)?;
    std::fs::write(&data_file, data)?;

    let name_refs: Vec<(&str, Vec<&str>)> = pairs
        .iter()
        .map(|(n, a)| (n.as_str(), vec![a.as_str()]))
        .collect();
    let name_slices: Vec<(&str, &[&str])> = name_refs.iter().map(|(n, a)| (*n, a.as_slice())).collect();
    let blue = zone("blue", "10.88.0.1", "10.88.0.0/16", &name_slices)?;
    let empty_resolv = lab.resolv_conf("resolv.conf", &[])?;
    let server = ServerInNs::start(
        &lab.host,
        DnsConfig {
            resolv_conf: empty_resolv,
            ..DnsConfig::default()
        },
    )?;
    let (report, listeners) = server.update(vec![blue])?;
    anyhow::ensure!(
        report.problems.is_empty() && listeners.values().all(Result::is_ok),
        "zone not served: {:?} {listeners:?}",
        report.problems
    );
    let dnsmasq = Dnsmasq::start(
        &lab.host,
        DNSMASQ,
        &[
            format!("--addn-hosts={}", hosts_file.display()),
            "--local=/blue.overlay/".into(),
            "--domain-needed".into(),
            "--local-ttl=1".into(),
            "--cache-size=10000".into(),
        ],
        &lab.dir().join("dnsmasq.log"),
    )?;
    let dnsmasq_pid = dnsmasq
        .pid()
        .ok_or_else(|| anyhow::anyhow!("dnsmasq has no pid"))?;
    let our_pid = std::process::id();

    let mut ours = Side::default();
    let mut theirs = Side::default();
    for round in 0..rounds {
        let mut turns = [(OURS, our_pid, &mut ours), (DNSMASQ, dnsmasq_pid, &mut theirs)];
        if round % 2 == 1 {
            turns.reverse();
        }
        for (server_ip, pid, side) in turns {
            let cpu_before = rss_and_cpu(pid).map(|(_, c)| c).unwrap_or(f64::NAN);
            let out = dnsperf(&client, server_ip, &data_file, seconds, &["-c", "4", "-q", "200"])?;
            let cpu_after = rss_and_cpu(pid).map(|(_, c)| c).unwrap_or(f64::NAN);
            let qps = stat(&out, "Queries per second:").unwrap_or(f64::NAN);
            let completed = stat(&out, "Queries completed:").unwrap_or(f64::NAN);
            side.qps.push(qps);
            side.cpu_us.push((cpu_after - cpu_before) * 1e6 / completed);
            side.lost += stat(&out, "Queries lost:").unwrap_or(0.0) as u64;
            side.not_noerror += not_noerror(&out);

            let rate = LATENCY_QPS.to_string();
            let out = dnsperf(&client, server_ip, &data_file, 3, &["-Q", &rate, "-v"])?;
            side.latency_ms.extend(
                out.lines()
                    .filter(|l| l.starts_with("> "))
                    .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                    .map(|s| s * 1000.0),
            );
            side.not_noerror += not_noerror(&out);
        }
    }
    drop(dnsmasq);
    drop(server);

    let summary = |s: &Side| {
        (
            Summary::of(&s.qps),
            Summary::of(&s.latency_ms),
            Summary::of(&s.cpu_us),
        )
    };
    let (oq, ol, oc) = summary(&ours);
    let (tq, tl, tc) = summary(&theirs);
    println!(
        "P8: {names} names: overlay {:.0} q/s (p50 {:.3} ms, p99 {:.3} ms at {LATENCY_QPS} q/s, {:.1} µs CPU/query) \
         vs dnsmasq {:.0} q/s (p50 {:.3} ms, p99 {:.3} ms, {:.1} µs CPU/query); lost {} vs {}, non-NOERROR {} vs {}",
        oq.median,
        ol.median,
        ol.p99,
        oc.median,
        tq.median,
        tl.median,
        tl.p99,
        tc.median,
        ours.lost,
        theirs.lost,
        ours.not_noerror,
        theirs.not_noerror
    );
    let mut rows = Vec::new();
    for (subject, (q, l, c)) in [
        ("overlay agent DNS", (&oq, &ol, &oc)),
        ("dnsmasq (hosts file)", (&tq, &tl, &tc)),
    ] {
        rows.push(Row {
            subject: subject.into(),
            metric: "A queries, dnsperf saturating (4 clients, 200 outstanding)".into(),
            unit: "1/s".into(),
            summary: q.clone(),
        });
        rows.push(Row {
            subject: subject.into(),
            metric: format!("latency per query at {LATENCY_QPS} q/s (median = p50)"),
            unit: "ms".into(),
            summary: l.clone(),
        });
        rows.push(Row {
            subject: subject.into(),
            metric: "server CPU per query while saturated".into(),
            unit: "µs".into(),
            summary: c.clone(),
        });
    }
    let qps_ratio = oq.median / tq.median;
    let p99_ratio = ol.p99 / tl.p99;
    Ok(Measure {
        id: "P8".into(),
        title: format!("DNS queries/s: {names} local names, agent vs dnsmasq"),
        rows,
        ratios: vec![
            Ratio {
                what: "queries/s".into(),
                ours: oq.median,
                peer: tq.median,
                peer_name: "dnsmasq".into(),
                higher_is_better: true,
            },
            Ratio {
                what: format!("p99 latency at {LATENCY_QPS} q/s"),
                ours: ol.p99,
                peer: tl.p99,
                peer_name: "dnsmasq".into(),
                higher_is_better: false,
            },
        ],
        goal: "queries/s >= 1x dnsmasq's, p99 latency <= 1x".into(),
        goal_met: Some(qps_ratio >= 1.0 && p99_ratio <= 1.0),
        notes: vec![format!(
            "Both on one bridge of one host namespace, dnsperf {seconds} s per run from a workload \
             namespace, {rounds} rounds in alternation; the machine's 2 cores are shared by the \
             server under test and dnsperf. Lost queries: {} (ours) vs {} (dnsmasq); answers other \
             than NOERROR: {} vs {}.",
            ours.lost, theirs.lost, ours.not_noerror, theirs.not_noerror
        )],
    })
}
