//! P3: convergence at N simulated hosts, each running a real agent with a workload. (1) A new
//! host joins: from its agent's start until the workload of every other host gets a ping reply
//! from a workload on the new host. (2) One network change (the workload MTU) pushed to every
//! agent: from the request until the last agent has received it, and until it has applied it.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::run_in;

use crate::common::{log_events, wait_for};
use crate::report::{Measure, Row};
use crate::stats::Summary;

pub struct Scale {
    /// Per (joining host, existing host): ms from the agent's start to a ping reply.
    pub reach_ms: Vec<f64>,
    /// Per joining host: ms until the last existing host got its reply.
    pub join_ms: Vec<f64>,
    /// Per change: ms until the last agent received it / applied it.
    pub received_ms: Vec<f64>,
    pub applied_ms: Vec<f64>,
}

pub fn run(scales: &[usize], joins: usize, changes: usize) -> anyhow::Result<Measure> {
    let mut rows = Vec::new();
    let mut met = true;
    let mut notes = Vec::new();
    for &n in scales {
        let s = at_scale(n, joins, changes)?;
        let reach = Summary::of(&s.reach_ms);
        let join = Summary::of(&s.join_ms);
        let received = Summary::of(&s.received_ms);
        let applied = Summary::of(&s.applied_ms);
        println!(
            "P3 N={n}: join reach p50 {:.0} ms p99 {:.0} ms; change received by all {:.0} ms, applied {:.0} ms",
            reach.median, reach.p99, received.median, applied.median
        );
        if n == *scales.iter().max().unwrap_or(&n) {
            met = reach.p99 < 1000.0 && received.p99 < 100.0;
        }
        let row = |metric: String, summary: Summary| Row {
            subject: format!("overlay, N={n}"),
            metric,
            unit: "ms".into(),
            summary,
        };
        rows.push(row("new host: agent start → a host pings it".into(), reach));
        rows.push(row("new host: agent start → all hosts ping it".into(), join));
        rows.push(row("network change received by all agents".into(), received));
        rows.push(row("network change applied by all agents".into(), applied));
        notes.push(format!(
            "N={n}: {} hosts joined one after another (the last one makes N), {} reachability \
             samples (one per existing host per join); {} changes pushed to all N agents.",
            s.join_ms.len(),
            s.reach_ms.len(),
            s.received_ms.len()
        ));
    }
    notes.push(
        "Every host is a network namespace with a real agent programming its kernel; 3 controller \
         replicas. The last hosts join one at a time: the clock starts when the new agent is \
         spawned; it registers, a workload is attached on it (overlayctl waits until the agent has \
         wired it), and every existing workload pings it every 10 ms until a reply. A change is \
         `overlayctl network update --mtu`; received/applied come from each agent's own log \
         timestamps (\"desired state received\" / \"reconciled\"), measured from the request."
            .into(),
    );
    Ok(Measure {
        id: "P3".into(),
        title: "convergence with N hosts".into(),
        rows,
        ratios: Vec::new(),
        goal: "at N=50: new host reachable from all, p99 < 1 s; per-change push < 100 ms".into(),
        goal_met: Some(met),
        notes,
    })
}

fn at_scale(n: usize, joins: usize, changes: usize) -> anyhow::Result<Scale> {
    let joins = joins.min(n - 1);
    let mut lab = Lab::start(LabConfig {
        hosts: n - joins,
        controllers: 3,
        tag: "b3",
        resync_secs: 30,
    })?;
    lab.ctl_ok(&[
        "network",
        "create",
        "bench",
        "--mode",
        "vxlan",
        "--subnet",
        "10.72.0.0/16",
    ])?;
    let env = [
        ("OVERLAY_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,overlay_agent=debug"),
    ];
    let mut workloads = Vec::new();
    for h in 0..n - joins {
        lab.start_agent_with_env(h, &env)?;
    }
    for h in 0..n - joins {
        let ns = lab.add_workload(&format!("w{h}"))?;
        lab.attach("bench", h, &ns)?;
        workloads.push(ns);
    }
    let mut reach_ms = Vec::new();
    let mut join_ms = Vec::new();
    for _ in 0..joins {
        let h = lab.add_host()?;
        let ns = lab.add_workload(&format!("w{h}"))?;
        let started = Instant::now();
        lab.start_agent_with_env(h, &env)?;
        let name = lab.hosts[h].name.clone();
        wait_for(Duration::from_secs(30), || {
            lab.ctl(&["host", "inspect", &name])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        })?;
        let ip = lab.attach("bench", h, &ns)?.to_string();
        let pingers: Vec<_> = workloads
            .iter()
            .cloned()
            .map(|w| {
                let ip = ip.clone();
                std::thread::spawn(move || -> anyhow::Result<f64> {
                    let mut ping = Command::new("ping");
                    ping.args(["-c", "1", "-i", "0.01", "-w", "10", "-q", &ip]);
                    let out = run_in(&w, ping, Vec::new())?;
                    anyhow::ensure!(out.status.success(), "{w} cannot reach {ip}");
                    Ok(started.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        let mut last: f64 = 0.0;
        for p in pingers {
            let ms = p.join().map_err(|_| anyhow::anyhow!("pinger panicked"))??;
            last = last.max(ms);
            reach_ms.push(ms);
        }
        join_ms.push(last);
        workloads.push(ns);
    }

    let hosts = lab.hosts.len();
    let mut received_ms = Vec::new();
    let mut applied_ms = Vec::new();
    for i in 0..changes {
        let mtu = if i % 2 == 0 { "1400" } else { "1410" };
        let t0 = unix_s();
        lab.ctl_ok(&["network", "update", "bench", "--mtu", mtu])?;
        let (received, applied) = wait_for(Duration::from_secs(30), || {
            let mut worst = (0.0f64, 0.0f64);
            for h in 0..hosts {
                let log = lab.agent_log_path(h);
                let first_after = |message: &str, changed: bool| {
                    log_events(log, message)
                        .iter()
                        .filter(|e| !changed || e["changes"].as_u64().unwrap_or(0) > 0)
                        .filter_map(|e| e["timestamp"].as_str().and_then(parse_rfc3339))
                        .find(|t| *t > t0)
                };
                let r = first_after("desired state received", false)?;
                let a = first_after("reconciled", true)?;
                worst.0 = worst.0.max(r - t0);
                worst.1 = worst.1.max(a - t0);
            }
            Some(worst)
        })?;
        received_ms.push(received * 1000.0);
        applied_ms.push(applied * 1000.0);
        // Let the change settle before the next one is timed.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Scale {
        reach_ms,
        join_ms,
        received_ms,
        applied_ms,
    })
}

fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Seconds since the epoch of a UTC RFC 3339 timestamp as tracing writes it
/// (`2026-11-23T07:12:33.123456Z`).
fn parse_rfc3339(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_the_epoch() {
        assert_eq!(super::parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1.5));
        assert_eq!(
            super::parse_rfc3339("2026-11-23T00:00:00Z"),
            Some(1_795_392_000.0)
        );
    }
}
