//! P7: what mutual TLS costs. The same 3-replica cluster twice in one run, once plaintext and
//! once with every connection on mTLS (replicas among themselves too): the price of a new
//! connection plus its first call (what each overlayctl invocation pays), and endpoint
//! allocation throughput from many clients over long-lived connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, client as lab_client, free_port};
use overlay_lab::pki::{CertFiles, Pki};
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;
use tonic::transport::ClientTlsConfig;

use crate::p4_writes::{Run, allocation_runs};
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

struct Side {
    connect_ms: Vec<f64>,
    runs: Vec<Run>,
}

pub fn run(connects: usize, ops: usize, clients: usize, runs: usize) -> anyhow::Result<Measure> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let plain = rt.block_on(side(false, connects, ops, clients, runs))?;
    let tls = rt.block_on(side(true, connects, ops, clients, runs))?;
    let connect = |s: &Side| Summary::of(&s.connect_ms);
    let throughput = |s: &Side| Summary::of(&s.runs.iter().map(|r| r.per_s).collect::<Vec<_>>());
    let latency = |s: &Side| {
        Summary::of(
            &s.runs
                .iter()
                .flat_map(|r| r.latencies_ms.clone())
                .collect::<Vec<_>>(),
        )
    };
    let (tls_tp, plain_tp) = (throughput(&tls), throughput(&plain));
    println!(
        "P7: connect+call {:.2} ms (TLS) vs {:.2} ms; writes {:.0}/s (TLS) vs {:.0}/s",
        connect(&tls).median,
        connect(&plain).median,
        tls_tp.median,
        plain_tp.median
    );
    let mut rows = Vec::new();
    for (name, s) in [("mutual TLS", &tls), ("plaintext", &plain)] {
        rows.push(Row {
            subject: format!("overlay, {name}"),
            metric: "new connection + ClusterStatus".into(),
            unit: "ms".into(),
            summary: connect(s),
        });
        rows.push(Row {
            subject: format!("overlay, {name}"),
            metric: "endpoint allocations".into(),
            unit: "1/s".into(),
            summary: throughput(s),
        });
        rows.push(Row {
            subject: format!("overlay, {name}"),
            metric: "latency per allocation".into(),
            unit: "ms".into(),
            summary: latency(s),
        });
    }
    Ok(Measure {
        id: "P7".into(),
        title: format!("cost of mutual TLS: 3 replicas, {clients} concurrent clients"),
        rows,
        ratios: vec![
            Ratio {
                what: "new connection + first call".into(),
                ours: connect(&tls).median,
                peer: connect(&plain).median,
                peer_name: "plaintext".into(),
                higher_is_better: false,
            },
            Ratio {
                what: "write throughput".into(),
                ours: tls_tp.median,
                peer: plain_tp.median,
                peer_name: "plaintext".into(),
                higher_is_better: true,
            },
        ],
        goal: "mTLS costs ≤ 10% of write throughput".into(),
        goal_met: Some(tls_tp.median >= 0.9 * plain_tp.median),
        notes: vec![format!(
            "The same build and machine, one cluster after the other. {connects} sequential new \
             connections (TCP + TLS 1.3 handshake with client certificate, ECDSA P-256) each \
             followed by one ClusterStatus; then {runs} runs of {ops} allocations over \
             long-lived connections spread over the three replicas. In the TLS cluster the \
             replicas also replicate to each other over mTLS."
        )],
    })
}

async fn side(tls: bool, connects: usize, ops: usize, clients: usize, runs: usize) -> anyhow::Result<Side> {
    let dir = tempfile::Builder::new().prefix("overlay-bench-tls-").tempdir()?;
    let addrs: Vec<(String, Option<String>)> = (0..3)
        .map(|_| Ok((format!("127.0.0.1:{}", free_port()?), None)))
        .collect::<anyhow::Result<_>>()?;
    let mut cluster = ControllerCluster::new(addrs, dir.path())?;
    let (mut admin, mut agent): (Option<ClientTlsConfig>, Option<ClientTlsConfig>) = (None, None);
    if tls {
        let pki = Pki::create(&dir.path().join("pki"))?;
        for id in 1..=3u64 {
            let files = pki.issue("controller", &format!("c{id}"), &["127.0.0.1"])?;
            cluster.set_replica_tls(id, &files)?;
        }
        let load = |f: CertFiles| -> anyhow::Result<ClientTlsConfig> { Ok(f.load()?.client_config()) };
        admin = Some(load(pki.issue("admin", "bench", &[])?)?);
        agent = Some(load(pki.issue("agent", "r0001", &[])?)?);
        cluster.set_client_tls(admin.clone());
    }
    cluster.start_all()?;
    cluster.wait_leader(1, Duration::from_secs(30)).await?;
    let connect = |tls: Option<ClientTlsConfig>| -> anyhow::Result<Controllers> {
        Ok(lab_client(&cluster.addrs())?.with_tls(tls))
    };
    overlay_lab::api::try_register(&connect(agent)?, "r0001", "100.64.0.1").await?;
    let req = pb::CreateNetworkRequest {
        name: "bench".into(),
        mode: pb::NetworkMode::Vxlan as i32,
        subnet: "10.64.0.0/10".into(),
        host_prefix: Some(12),
        ..Default::default()
    };
    connect(admin.clone())?
        .call(|ch| {
            let req = req.clone();
            async move { OverlayClient::new(ch).create_network(req).await }
        })
        .await?;

    // What every overlayctl invocation pays: a new connection and one call.
    let mut connect_ms = Vec::with_capacity(connects);
    for _ in 0..connects {
        let c = lab_client(&[cluster.addr(1)])?.with_tls(admin.clone());
        let t = Instant::now();
        c.call(|ch| async move {
            OverlayClient::new(ch)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
        })
        .await?;
        connect_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let per_replica: Arc<Vec<Controllers>> = Arc::new(
        cluster
            .addrs()
            .iter()
            .map(|a| Ok(lab_client(std::slice::from_ref(a))?.with_tls(admin.clone())))
            .collect::<anyhow::Result<_>>()?,
    );
    let out = allocation_runs(per_replica, 1, ops, clients, runs).await?;
    Ok(Side {
        connect_ms,
        runs: out,
    })
}
