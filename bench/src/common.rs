//! Helpers shared by the measures: JSON log scanning, fake hosts, process sampling.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use serde_json::Value;

/// Every JSON log line of `path` whose message is `message`, as its `fields` object.
pub fn log_events(path: &Path, message: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .map(|v| {
            let mut fields = v["fields"].clone();
            fields["timestamp"] = v["timestamp"].clone();
            fields
        })
        .collect()
}

/// Polls `cond` every 20 ms for up to `within`.
pub fn wait_for<T>(within: Duration, mut cond: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        anyhow::ensure!(start.elapsed() < within, "timed out after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn client(addrs: &str) -> anyhow::Result<Controllers> {
    Ok(Controllers::new(
        &[addrs.to_string()],
        Duration::from_secs(2),
        Duration::from_secs(60),
    )?)
}

/// Registers `n` hosts named `r0001`... with addresses from 100.64.0.0/10, `parallel` at a time.
pub async fn register_fake_hosts(c: &Controllers, n: usize, parallel: usize) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let req = pb::RegisterRequest {
                host_name: format!("r{:04}", i + 1),
                underlay_ip: format!("100.{}.{}.{}", 64 + i / 62500, (i / 250) % 250, i % 250 + 1),
                underlay_iface: "eth0".into(),
                underlay_mtu: 1500,
                instance_id: String::new(),
            };
            c.call(|ch| {
                let req = req.clone();
                async move { AgentClient::new(ch).register(req).await }
            })
            .await?;
            Ok(())
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Resident set size (MiB) and CPU time (s) of a process, from /proc.
pub fn rss_and_cpu(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb / 1024.0, ticks / 100.0))
}

/// The machine and the versions of everything measured, for the report.
pub fn machine() -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    [
        format!("kernel: {}", sh("uname -sr")),
        format!(
            "cpu: {} x {}",
            sh("nproc"),
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'")
        ),
        format!(
            "memory: {}",
            sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'")
        ),
        format!("rustc: {}", sh("rustc --version")),
        format!(
            "overlay: {} ({})",
            env!("CARGO_PKG_VERSION"),
            sh("git rev-parse --short HEAD 2>/dev/null")
        ),
        format!("iproute2: {}", sh("ip -V")),
        format!("iperf3: {}", sh("iperf3 --version 2>/dev/null | head -1")),
        format!("etcd: {}", sh("etcd --version 2>/dev/null | head -1")),
        format!(
            "cni plugins: {}",
            sh("dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null")
        ),
        format!(
            "netavark: {}",
            sh("/usr/lib/podman/netavark --version 2>/dev/null")
        ),
        format!("date: {}", sh("date -u +%Y-%m-%dT%H:%MZ")),
    ]
    .join("\n")
}
