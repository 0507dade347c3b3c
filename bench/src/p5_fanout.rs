//! P5: fan-out at scale. 1,000 simulated agents hold Watch streams (no kernel behind them) over
//! a state with 10,000 endpoints; a change that concerns every host (a new host joins the
//! network) must reach all of them. Also the controller's memory and CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::block_on_in;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;
use tokio::sync::mpsc;

use crate::common::{client, register_fake_hosts, rss_and_cpu};
use crate::report::{Measure, Row};
use crate::stats::Summary;

pub struct Outcome {
    pub fanout_ms: Vec<f64>,
    pub attach_per_s: f64,
    pub rss_mib: f64,
    pub cpu_s_per_change: f64,
}

pub fn run(agents: usize, endpoints: usize, changes: usize) -> anyhow::Result<Measure> {
    let lab = Lab::start(LabConfig {
        hosts: 0,
        controllers: 1,
        tag: "b5",
        resync_secs: 30,
    })?;
    let pid = lab
        .controllers
        .pid(1)
        .ok_or_else(|| anyhow::anyhow!("controller not running"))?;
    let addrs = lab.controller_list();
    let outcome = block_on_in(&lab.ul, move || drive(addrs, agents, endpoints, changes, pid))??;
    let fanout = Summary::of(&outcome.fanout_ms);
    println!(
        "P5: change reaches {agents} watchers in {:.0} ms (median); RSS {:.0} MiB; {:.2} CPU s per change",
        fanout.median, outcome.rss_mib, outcome.cpu_s_per_change
    );
    Ok(Measure {
        id: "P5".into(),
        title: format!("fan-out: {agents} Watch streams, {endpoints} endpoints"),
        rows: vec![
            Row {
                subject: "overlay controller".into(),
                metric: format!("a change reaches all {agents} watchers"),
                unit: "ms".into(),
                summary: fanout.clone(),
            },
            Row {
                subject: "overlay controller".into(),
                metric: "resident memory with all of the above".into(),
                unit: "MiB".into(),
                summary: Summary::of(&[outcome.rss_mib]),
            },
            Row {
                subject: "overlay controller".into(),
                metric: "CPU per fanned-out change".into(),
                unit: "s".into(),
                summary: Summary::of(&[outcome.cpu_s_per_change]),
            },
            Row {
                subject: "overlay controller (1 replica)".into(),
                metric: "endpoint writes while loading".into(),
                unit: "1/s".into(),
                summary: Summary::of(&[outcome.attach_per_s]),
            },
        ],
        ratios: vec![],
        goal: "a change reaches all 1,000 in < 1 s, RSS < 300 MB".into(),
        goal_met: Some(fanout.p99 < 1000.0 && outcome.rss_mib < 300.0),
        notes: vec![
            "No peer runs this scenario; the figures stand against the goal. Each watcher is a real \
             gRPC Watch stream from the benchmark process (in the lab's underlay namespace); the change \
             is a host registration, which adds a peer to every host's desired state."
                .into(),
        ],
    })
}

async fn drive(
    addrs: String,
    agents: usize,
    endpoints: usize,
    changes: usize,
    pid: u32,
) -> anyhow::Result<Outcome> {
    let c = Arc::new(client(&addrs)?);
    register_fake_hosts(&c, agents, 32).await?;
    let create = pb::CreateNetworkRequest {
        name: "bench".into(),
        mode: pb::NetworkMode::Vxlan as i32,
        subnet: "10.64.0.0/14".into(),
        ..Default::default()
    };
    c.call(|ch| {
        let req = create.clone();
        async move { OverlayClient::new(ch).create_network(req).await }
    })
    .await?;
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..endpoints)
        .map(|i| {
            let c = c.clone();
            async move {
                let req = pb::AttachEndpointRequest {
                    network: "bench".into(),
                    host: format!("r{:04}", i % agents + 1),
                    netns: format!("w{i}"),
                    no_wait: true,
                    ..Default::default()
                };
                c.call(|ch| {
                    let req = req.clone();
                    async move { OverlayClient::new(ch).attach_endpoint(req).await }
                })
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    let attach_per_s = endpoints as f64 / t.elapsed().as_secs_f64();
    println!("P5: {endpoints} endpoint requests recorded at {attach_per_s:.0}/s");

    // 1,000 watchers over a handful of HTTP/2 connections; each reports every revision it sees.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let uri = format!("http://{}", addrs.split(',').next().unwrap_or_default());
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            tonic::transport::Endpoint::from_shared(uri.clone())?
                .connect()
                .await?,
        );
    }
    for i in 0..agents {
        let ch = channels[i % channels.len()].clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut client = AgentClient::new(ch).max_decoding_message_size(256 << 20);
            let Ok(resp) = client
                .watch(pb::WatchRequest {
                    host_name: format!("r{:04}", i + 1),
                    instance_id: String::new(),
                })
                .await
            else {
                return;
            };
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                let _ = tx.send((i, msg.revision, Instant::now()));
            }
        });
    }
    // Everyone has its initial state.
    let mut initial = vec![false; agents];
    let mut have = 0;
    while have < agents {
        let (i, _, _) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
        if !initial[i] {
            initial[i] = true;
            have += 1;
        }
    }
    let (rss_mib, cpu_before) = rss_and_cpu(pid).unwrap_or((f64::NAN, f64::NAN));

    let mut fanout_ms = Vec::new();
    for k in 0..changes {
        let req = pb::RegisterRequest {
            host_name: format!("joiner{k}"),
            underlay_ip: format!("100.127.0.{}", k + 1),
            underlay_iface: "eth0".into(),
            underlay_mtu: 1500,
            instance_id: String::new(),
        };
        let t = Instant::now();
        let revision = c
            .call(|ch| {
                let req = req.clone();
                async move { AgentClient::new(ch).register(req).await }
            })
            .await?
            .into_inner()
            .revision;
        let mut reached = vec![false; agents];
        let mut count = 0;
        let mut last = t;
        while count < agents {
            let (i, rev, at) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
            if rev >= revision && !reached[i] {
                reached[i] = true;
                count += 1;
                last = last.max(at);
            }
        }
        fanout_ms.push((last - t).as_secs_f64() * 1000.0);
    }
    let cpu_after = rss_and_cpu(pid).map(|(_, c)| c).unwrap_or(f64::NAN);
    Ok(Outcome {
        fanout_ms,
        attach_per_s,
        rss_mib,
        cpu_s_per_change: (cpu_after - cpu_before) / changes as f64,
    })
}
