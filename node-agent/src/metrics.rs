//! Prometheus metrics of an agent (`--metrics-listen`): reconcile passes and what they changed
//! in the kernel, errors, the desired revision received and the one applied, the controller
//! session, and the kernel notifications that trigger repairs (see [`crate::events`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::PassReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// created | updated | deleted | set (entries added or replaced)
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// relevant (concerns overlay) | ignored
    pub verdict: &'static str,
}

pub struct AgentMetrics {
    pub registry: Registry,
    reconcile_seconds: Histogram,
    objects: Family<OpLabel, Counter>,
    errors: Counter,
    applied_revision: Gauge,
    desired_revision: Gauge,
    connected: Gauge,
    endpoints: Gauge,
    endpoints_failed: Gauge,
    kernel_events: Family<VerdictLabel, Counter>,
    event_overflows: Counter,
    event_audits: Counter,
    event_passes: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("overlay_agent");
        // 100 µs .. ~6.5 s
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        let m = Self {
            registry: Registry::default(),
            reconcile_seconds,
            objects: Family::default(),
            errors: Counter::default(),
            applied_revision: Gauge::default(),
            desired_revision: Gauge::default(),
            connected: Gauge::default(),
            endpoints: Gauge::default(),
            endpoints_failed: Gauge::default(),
            kernel_events: Family::default(),
            event_overflows: Counter::default(),
            event_audits: Counter::default(),
            event_passes: Counter::default(),
        };
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass (dump, diff, apply)",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "objects",
            "Kernel objects changed by reconcile passes",
            m.objects.clone(),
        );
        registry.register(
            "errors",
            "Operations that failed in reconcile passes (netlink, nftables, namespaces)",
            m.errors.clone(),
        );
        registry.register(
            "applied_revision",
            "Desired-state revision the kernel was last converged to without error",
            m.applied_revision.clone(),
        );
        registry.register(
            "desired_revision",
            "Latest desired-state revision received",
            m.desired_revision.clone(),
        );
        registry.register(
            "controller_connected",
            "1 while a Watch stream from a controller is open",
            m.connected.clone(),
        );
        registry.register("endpoints", "Endpoints of this host", m.endpoints.clone());
        registry.register(
            "endpoints_failed",
            "Endpoints of this host that could not be wired",
            m.endpoints_failed.clone(),
        );
        registry.register(
            "kernel_events",
            "Kernel change notifications received (rtnetlink and nftables), by whether they concerned overlay",
            m.kernel_events.clone(),
        );
        registry.register(
            "kernel_event_overflows",
            "Times a notification socket overflowed (ENOBUFS) and notifications were lost",
            m.event_overflows.clone(),
        );
        registry.register(
            "event_audits",
            "Audits run because kernel notifications said overlay's objects changed",
            m.event_audits.clone(),
        );
        registry.register(
            "event_passes",
            "Reconcile passes run because kernel notifications showed drift (repairs)",
            m.event_passes.clone(),
        );
        Self { registry, ..m }
    }

    pub fn observe_pass(&self, r: &PassReport) {
        self.reconcile_seconds.observe(r.took.as_secs_f64());
        for (op, n) in [
            ("created", r.objects.created),
            ("updated", r.objects.updated),
            ("deleted", r.objects.deleted),
            ("set", r.objects.set),
        ] {
            if n > 0 {
                self.objects.get_or_create(&OpLabel { op }).inc_by(n);
            }
        }
        self.errors.inc_by(r.errors.len() as u64);
        if r.errors.is_empty() {
            self.applied_revision.set(r.revision as i64);
        }
        self.endpoints.set(r.endpoints.len() as i64);
        self.endpoints_failed
            .set(r.endpoints.values().filter(|s| s.is_err()).count() as i64);
    }

    pub fn observe_kernel_events(&self, relevant: u64, ignored: u64) {
        for (verdict, n) in [("relevant", relevant), ("ignored", ignored)] {
            if n > 0 {
                self.kernel_events
                    .get_or_create(&VerdictLabel { verdict })
                    .inc_by(n);
            }
        }
    }

    pub fn observe_event_overflow(&self) {
        self.event_overflows.inc();
    }

    pub fn observe_event_audit(&self) {
        self.event_audits.inc();
    }

    pub fn observe_event_pass(&self) {
        self.event_passes.inc();
    }

    pub fn set_desired(&self, revision: u64) {
        self.desired_revision.set(revision as i64);
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }
}
