//! P7: what mutual TLS costs. Two 3-replica clusters side by side, one plaintext and one with
//! every connection on mTLS (replicas among themselves too), measured in alternation so that
//! neither gets the quieter moment: the price of a new connection plus its first call (what
//! each overlayctl invocation pays), and endpoint write throughput from many clients
//! over long-lived connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, client as lab_client, free_port};
use overlay_lab::pki::{CertFiles, Pki};
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;
use tonic::transport::ClientTlsConfig;

use crate::common::rss_and_cpu;
use crate::p4_writes::{Run, allocation_runs};
use crate::report::{Measure, Ratio, Row};
use crate::stats::Summary;

#[derive(Default)]
struct Side {
    connect_ms: Vec<f64>,
    runs: Vec<Run>,
    /// CPU time of the three replicas together per write, one value per run (µs).
    cpu_us_per_op: Vec<f64>,
}

pub fn run(connects: usize, ops: usize, clients: usize, runs: usize) -> anyhow::Result<Measure> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (plain, tls) = rt.block_on(async {
        let plain_cluster = Prepared::start(false).await?;
        let tls_cluster = Prepared::start(true).await?;
        let mut plain = Side::default();
        let mut tls = Side::default();
        for round in 0..runs {
            // Each goes first every other round.
            let mut turns = [(&plain_cluster, &mut plain), (&tls_cluster, &mut tls)];
            if round % 2 == 1 {
                turns.reverse();
            }
            for (prepared, side) in turns {
                side.connect_ms
                    .extend(prepared.connects(connects.div_ceil(runs.max(1))).await?);
                let cpu_before = prepared.cpu_s();
                side.runs.extend(
                    allocation_runs(prepared.per_replica.clone(), 1, ops, clients, round..round + 1).await?,
                );
                side.cpu_us_per_op
                    .push((prepared.cpu_s() - cpu_before) * 1e6 / ops as f64);
            }
        }
        anyhow::Ok((plain, tls))
    })?;
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
    let cpu = |s: &Side| Summary::of(&s.cpu_us_per_op);
    let (tls_tp, plain_tp) = (throughput(&tls), throughput(&plain));
    println!(
        "P7: connect+call {:.2} ms (TLS) vs {:.2} ms; writes {:.0}/s (TLS) vs {:.0}/s; replica CPU per write {:.0} µs (TLS) vs {:.0} µs",
        connect(&tls).median,
        connect(&plain).median,
        tls_tp.median,
        plain_tp.median,
        cpu(&tls).median,
        cpu(&plain).median
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
            metric: "endpoint writes".into(),
            unit: "1/s".into(),
            summary: throughput(s),
        });
        rows.push(Row {
            subject: format!("overlay, {name}"),
            metric: "latency per write".into(),
            unit: "ms".into(),
            summary: latency(s),
        });
        rows.push(Row {
            subject: format!("overlay, {name}"),
            metric: "CPU of the 3 replicas per write".into(),
            unit: "µs".into(),
            summary: cpu(s),
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
                what: "replica CPU per write".into(),
                ours: cpu(&tls).median,
                peer: cpu(&plain).median,
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
            "Both clusters run at once and are measured in turn, round by round. {} sequential new \
             connections (TCP + TLS 1.3 handshake with client certificate, ECDSA P-256) each \
             followed by one ClusterStatus; then {runs} runs of {ops} endpoint writes over \
             long-lived connections spread over the three replicas. In the TLS cluster the \
             replicas also replicate to each other over mTLS.",
            tls.connect_ms.len()
        )],
    })
}

/// A running cluster with the network `bench` and host `r0001`, and clients for it.
struct Prepared {
    cluster: ControllerCluster,
    admin: Option<ClientTlsConfig>,
    per_replica: Arc<Vec<Controllers>>,
    _dir: tempfile::TempDir,
}

impl Prepared {
    async fn start(tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("overlay-bench-tls-").tempdir()?;
        let addrs: Vec<(String, Option<String>)> = (0..3)
            .map(|_| Ok((format!("127.0.0.1:{}", free_port()?), None)))
            .collect::<anyhow::Result<_>>()?;
        let mut cluster = ControllerCluster::new(addrs, dir.path())?;
        let (mut admin, mut agent) = (None, None);
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
        let all = |tls: Option<ClientTlsConfig>| -> anyhow::Result<Controllers> {
            Ok(lab_client(&cluster.addrs())?.with_tls(tls))
        };
        overlay_lab::api::try_register(&all(agent)?, "r0001", "100.64.0.1").await?;
        let req = pb::CreateNetworkRequest {
            name: "bench".into(),
            mode: pb::NetworkMode::Vxlan as i32,
            subnet: "10.64.0.0/10".into(),
            host_prefix: Some(12),
            ..Default::default()
        };
        all(admin.clone())?
            .call(|ch| {
                let req = req.clone();
                async move { OverlayClient::new(ch).create_network(req).await }
            })
            .await?;
        let per_replica = Arc::new(
            cluster
                .addrs()
                .iter()
                .map(|a| Ok(lab_client(std::slice::from_ref(a))?.with_tls(admin.clone())))
                .collect::<anyhow::Result<_>>()?,
        );
        Ok(Self {
            cluster,
            admin,
            per_replica,
            _dir: dir,
        })
    }

    /// CPU seconds the three replica processes have used so far.
    fn cpu_s(&self) -> f64 {
        (1..=3)
            .filter_map(|id| self.cluster.pid(id))
            .filter_map(rss_and_cpu)
            .map(|(_, cpu)| cpu)
            .sum()
    }

    /// What every overlayctl invocation pays: `n` times a new connection and one call (ms).
    async fn connects(&self, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let c = lab_client(&[self.cluster.addr(1)])?.with_tls(self.admin.clone());
            let t = Instant::now();
            c.call(|ch| async move {
                OverlayClient::new(ch)
                    .cluster_status(pb::ClusterStatusRequest {})
                    .await
            })
            .await?;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(out)
    }
}
