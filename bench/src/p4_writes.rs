//! P4: controller write throughput. 3 overlay replicas (fsync'd redb) recording endpoint requests
//! from many concurrent clients through all replicas, vs a 3-member etcd 3.4 cluster on the
//! same loopback doing what flannel does to take a lease: a transaction "create the key if it
//! does not exist" (compare create_revision == 0, then put).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use overlay_lab::controllers::{ControllerCluster, free_port};
use overlay_lab::process::Daemon;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;

use crate::common::{client, register_fake_hosts};
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

/// Allocations spread over this many hosts (a realistic ~100 workloads per host at 10,000).
const HOSTS: usize = 100;

pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

/// One run: throughput (ops/s) and per-operation latencies (ms).
pub(crate) struct Run {
    pub per_s: f64,
    pub latencies_ms: Vec<f64>,
}

pub fn run(ops: usize, clients: usize, runs: usize) -> anyhow::Result<Measure> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ours = rt.block_on(overlay(ops, clients, runs))?;
    let etcd = rt.block_on(etcd(ops, clients, runs))?;
    let ours_tp = Summary::of(&ours.iter().map(|r| r.per_s).collect::<Vec<_>>());
    let etcd_tp = Summary::of(&etcd.iter().map(|r| r.per_s).collect::<Vec<_>>());
    let ours_lat = Summary::of(
        &ours
            .iter()
            .flat_map(|r| r.latencies_ms.clone())
            .collect::<Vec<_>>(),
    );
    let etcd_lat = Summary::of(
        &etcd
            .iter()
            .flat_map(|r| r.latencies_ms.clone())
            .collect::<Vec<_>>(),
    );
    println!(
        "P4: overlay {:.0}/s (p99 {:.1} ms), etcd {:.0}/s (p99 {:.1} ms)",
        ours_tp.median, ours_lat.p99, etcd_tp.median, etcd_lat.p99
    );
    Ok(Measure {
        id: "P4".into(),
        title: format!("controller writes: 3 replicas, {clients} concurrent clients"),
        rows: vec![
            Row {
                subject: "overlay (3 replicas)".into(),
                metric: "endpoint writes".into(),
                unit: "1/s".into(),
                summary: ours_tp.clone(),
            },
            Row {
                subject: "etcd 3.4 (3 members)".into(),
                metric: "create-if-absent txn".into(),
                unit: "1/s".into(),
                summary: etcd_tp.clone(),
            },
            Row {
                subject: "overlay (3 replicas)".into(),
                metric: "latency per write".into(),
                unit: "ms".into(),
                summary: ours_lat.clone(),
            },
            Row {
                subject: "etcd 3.4 (3 members)".into(),
                metric: "latency per txn".into(),
                unit: "ms".into(),
                summary: etcd_lat.clone(),
            },
        ],
        ratios: vec![
            Ratio {
                what: "write throughput".into(),
                ours: ours_tp.median,
                peer: etcd_tp.median,
                peer_name: "etcd".into(),
                higher_is_better: true,
            },
            Ratio {
                what: "p99 write latency".into(),
                ours: ours_lat.p99,
                peer: etcd_lat.p99,
                peer_name: "etcd".into(),
                higher_is_better: false,
            },
        ],
        goal: "throughput ≥ 1× etcd".into(),
        goal_met: Some(ours_tp.median >= etcd_tp.median),
        notes: vec![format!(
            "{runs} runs of {ops} operations each, clients spread over all three replicas/members (followers \
             forward to the leader in both systems). Both fsync every commit: overlay through redb, etcd \
             through its WAL. An overlay write is an endpoint request (what `overlayctl endpoint attach` records before the \
             host's agent allocates and wires it): checked against the network, the host's lease and the \
             host's other endpoints (one per namespace and network), duplicates refused, as etcd's \
             put-if-absent transaction does for its one key."
        )],
    })
}

async fn overlay(ops: usize, clients: usize, runs: usize) -> anyhow::Result<Vec<Run>> {
    let cluster = ControllerCluster::start_loopback(3)?;
    cluster.wait_leader(1, Duration::from_secs(30)).await?;
    let all = cluster.addrs().join(",");
    let setup = client(&all)?;
    register_fake_hosts(&setup, HOSTS, 16).await?;
    let req = pb::CreateNetworkRequest {
        name: "bench".into(),
        mode: pb::NetworkMode::Vxlan as i32,
        subnet: "10.64.0.0/10".into(),
        host_prefix: Some(20),
        ..Default::default()
    };
    setup
        .call(|ch| {
            let req = req.clone();
            async move { OverlayClient::new(ch).create_network(req).await }
        })
        .await?;
    let per_replica: Arc<Vec<_>> = Arc::new(
        cluster
            .addrs()
            .iter()
            .map(|a| client(a))
            .collect::<anyhow::Result<_>>()?,
    );
    allocation_runs(per_replica, HOSTS, ops, clients, 0..runs).await
}

/// One timed run per number in `runs` (which names its endpoints) of `ops` endpoint requests (no agent wait) in network `bench`, spread
/// over hosts `r0001`..`r{hosts}` and over the replicas of `per_replica` in turn.
pub(crate) async fn allocation_runs(
    per_replica: Arc<Vec<Controllers>>,
    hosts: usize,
    ops: usize,
    clients: usize,
    runs: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Run>> {
    let mut out = Vec::new();
    for run in runs {
        out.push(
            timed_run(ops, clients, |i| {
                let per_replica = per_replica.clone();
                async move {
                    let c = &per_replica[i % per_replica.len()];
                    let req = pb::AttachEndpointRequest {
                        network: "bench".into(),
                        host: format!("r{:04}", i % hosts + 1),
                        netns: format!("run{run}-{i}"),
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
            .await?,
        );
    }
    Ok(out)
}

async fn etcd(ops: usize, clients: usize, runs: usize) -> anyhow::Result<Vec<Run>> {
    let dir = tempfile::Builder::new().prefix("overlay-bench-etcd-").tempdir()?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, (client_port, peer)) in ports.iter().enumerate() {
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client_port}")])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
            ]);
        members.push(Daemon::spawn(
            &format!("etcd-{i}"),
            cmd,
            &dir.path().join(format!("e{i}.log")),
        )?);
    }
    let mut channels = Vec::new();
    for (client_port, _) in &ports {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{client_port}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let ch = loop {
            match endpoint.connect().await {
                Ok(ch) => break ch,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => anyhow::bail!("etcd did not come up: {e}"),
            }
        };
        channels.push(ch);
    }
    // Wait until the cluster commits writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while txn(&channels[0], b"/bench/ready".to_vec()).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "etcd cluster did not become writable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let channels = Arc::new(channels);
    let mut out = Vec::new();
    for run in 0..runs {
        out.push(
            timed_run(ops, clients, |i| {
                let channels = channels.clone();
                async move {
                    let key = format!("/overlay/bench/run{run}/ep-{i}").into_bytes();
                    let created = txn(&channels[i % channels.len()], key).await?;
                    anyhow::ensure!(created, "key already existed");
                    Ok(())
                }
            })
            .await?,
        );
    }
    drop(members);
    Ok(out)
}

/// Create `key` unless it exists (flannel's lease acquisition); returns whether it was created.
async fn txn(ch: &tonic::transport::Channel, key: Vec<u8>) -> anyhow::Result<bool> {
    use etcdpb::{Compare, PutRequest, RequestOp, TxnRequest, compare, request_op};
    let value = br#"{"PublicIP":"192.0.2.21","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#;
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value: value.to_vec(),
            })),
        }],
        failure: vec![],
    };
    let resp = etcdpb::kv_client::KvClient::new(ch.clone()).txn(req).await?;
    Ok(resp.into_inner().succeeded)
}

/// `ops` operations, `clients` in flight at a time: the throughput and each one's latency.
async fn timed_run<F, Fut>(ops: usize, clients: usize, op: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<f64>> = futures::stream::iter(0..ops)
        .map(|i| {
            let op = op(i);
            async move {
                let t = Instant::now();
                op.await?;
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    Ok(Run {
        per_s: ops as f64 / started.elapsed().as_secs_f64(),
        latencies_ms: latencies.into_iter().collect::<anyhow::Result<_>>()?,
    })
}
