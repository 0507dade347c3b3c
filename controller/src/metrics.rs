//! Prometheus metrics of a controller replica (`--metrics-listen`): Raft position, gRPC traffic,
//! Watch subscribers, what each agent has applied, endpoints and IPAM pool usage per network.
//!
//! Counters and histograms are updated as requests pass ([`RpcMetricsLayer`]); gauges that mirror
//! state are set at scrape time by [`ControllerMetrics::refresh`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::{AgentSeen, Node};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// gRPC status name: OK, NOT_FOUND, UNAVAILABLE ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabel {
    pub network: String,
}

type LatencyFamily = Family<MethodLabel, Histogram, fn() -> Histogram>;

pub struct ControllerMetrics {
    pub registry: Registry,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_is_leader: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_apply_lag: Gauge,
    raft_members: Gauge,
    state_revision: Gauge,
    requests: Family<RpcLabels, Counter>,
    latency: LatencyFamily,
    /// Set by the Watch handler as streams open and close.
    pub watch_subscribers: Arc<AtomicI64>,
    watch_gauge: Gauge,
    agent_applied_revision: Family<HostLabel, Gauge>,
    agent_revision_lag: Family<HostLabel, Gauge>,
    agent_heartbeat_age: Family<HostLabel, Gauge>,
    endpoints: Family<NetworkLabel, Gauge>,
    subnets_used: Family<NetworkLabel, Gauge>,
    subnets_total: Family<NetworkLabel, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("overlay");
        let m = Self {
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_members: Gauge::default(),
            state_revision: Gauge::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            watch_subscribers: Arc::default(),
            watch_gauge: Gauge::default(),
            agent_applied_revision: Family::default(),
            agent_revision_lag: Family::default(),
            agent_heartbeat_age: Family::default(),
            endpoints: Family::default(),
            subnets_used: Family::default(),
            subnets_total: Family::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_leader",
            "Id of the leader this replica knows (0: none)",
            m.raft_leader.clone(),
        );
        registry.register("raft_is_leader", "1 on the leader", m.raft_is_leader.clone());
        registry.register(
            "raft_commit_index",
            "Highest log index known committed",
            m.raft_commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state",
            m.raft_applied_index.clone(),
        );
        registry.register(
            "raft_apply_lag",
            "Log entries held but not yet applied",
            m.raft_apply_lag.clone(),
        );
        registry.register("raft_members", "Voting members", m.raft_members.clone());
        registry.register(
            "state_revision",
            "Revision of the desired state",
            m.state_revision.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC requests served, by method and status",
            m.requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a gRPC request (to the first response for streams)",
            m.latency.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Open Watch streams (agents) on this replica",
            m.watch_gauge.clone(),
        );
        registry.register(
            "agent_applied_revision",
            "Desired-state revision each agent reported as applied (agents talking to this replica)",
            m.agent_applied_revision.clone(),
        );
        registry.register(
            "agent_revision_lag",
            "Revision last sent to the agent minus the one it reports applied (agents watching this replica)",
            m.agent_revision_lag.clone(),
        );
        registry.register(
            "agent_heartbeat_age_seconds",
            "Seconds since the agent's last heartbeat or report to this replica",
            m.agent_heartbeat_age.clone(),
        );
        registry.register("endpoints", "Endpoints per network", m.endpoints.clone());
        registry.register(
            "ipam_subnets_used",
            "Host subnets leased per network (vxlan, nat)",
            m.subnets_used.clone(),
        );
        registry.register(
            "ipam_subnets_total",
            "Host subnets the network's CIDR holds (vxlan, nat)",
            m.subnets_total.clone(),
        );
        Self { registry, ..m }
    }

    /// Records one answered gRPC request.
    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .observe(seconds);
    }

    /// Sets every state-mirroring gauge from `node` and the agents seen by this replica.
    pub fn refresh(&self, node: &Node, seen: &Mutex<HashMap<String, AgentSeen>>, now_ms: i64) {
        let m = node.raft.metrics().borrow().clone();
        self.raft_term.set(m.current_term as i64);
        self.raft_leader.set(m.current_leader.unwrap_or(0) as i64);
        self.raft_is_leader
            .set(i64::from(m.current_leader == Some(node.id)));
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        self.raft_commit_index.set(node.committed_index() as i64);
        self.raft_applied_index.set(applied as i64);
        self.raft_apply_lag
            .set(m.last_log_index.unwrap_or(0).saturating_sub(applied) as i64);
        self.raft_members
            .set(m.membership_config.membership().voter_ids().count() as i64);
        self.watch_gauge
            .set(self.watch_subscribers.load(Ordering::Relaxed));

        let (revision, hosts, per_network) = node.view.read(|s| {
            let mut per_network: Vec<(String, i64, i64, i64)> = s
                .networks
                .values()
                .map(|n| {
                    let (used, total) = if n.mode.uses_leases() {
                        let bits = u32::from(n.host_prefix).saturating_sub(u32::from(n.cidr.prefix()));
                        (n.leases.len() as i64, 1i64 << bits.min(32))
                    } else {
                        (0, 0)
                    };
                    (n.name.clone(), 0, used, total)
                })
                .collect();
            for ep in s.endpoints.values() {
                if let Some(row) = per_network.iter_mut().find(|r| r.0 == ep.network) {
                    row.1 += 1;
                }
            }
            let hosts: Vec<String> = s.hosts.keys().cloned().collect();
            (s.revision, hosts, per_network)
        });
        self.state_revision.set(revision as i64);

        self.endpoints.clear();
        self.subnets_used.clear();
        self.subnets_total.clear();
        for (network, endpoints, used, total) in per_network {
            let label = NetworkLabel { network };
            self.endpoints.get_or_create(&label).set(endpoints);
            if total > 0 {
                self.subnets_used.get_or_create(&label).set(used);
                self.subnets_total.get_or_create(&label).set(total);
            }
        }

        self.agent_applied_revision.clear();
        self.agent_revision_lag.clear();
        self.agent_heartbeat_age.clear();
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        for host in hosts {
            let Some(s) = seen.get(&host) else { continue };
            let label = HostLabel { host };
            self.agent_applied_revision
                .get_or_create(&label)
                .set(s.applied_revision as i64);
            self.agent_revision_lag
                .get_or_create(&label)
                .set(s.sent_revision.saturating_sub(s.applied_revision) as i64);
            self.agent_heartbeat_age
                .get_or_create(&label)
                .set((now_ms - s.last_heartbeat_ms).max(0) / 1000);
        }
    }
}

/// A tower layer on the gRPC server that counts requests and times them.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<ControllerMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<ControllerMetrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Unknown paths share one label: a caller must not be able to grow the label set.
        let path = req.uri().path();
        let method = if crate::auth::access(path).is_some() {
            path.to_string()
        } else {
            "unknown".to_string()
        };
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                // A handler's error travels in the headers (trailers-only response); success
                // in the trailers, which this layer does not wait for.
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| code_name(tonic::Code::from_i32(c)))
                    .unwrap_or("OK"),
                Err(_) => "TRANSPORT_ERROR",
            };
            metrics.observe(&method, code, started.elapsed().as_secs_f64());
            res
        })
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
