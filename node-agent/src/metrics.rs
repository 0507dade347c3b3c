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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsTransportLabel {
    /// udp | tcp
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsRcodeLabel {
    /// noerror | nxdomain | servfail | refused | formerr | notimp | other
    pub rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsReasonLabel {
    pub reason: &'static str,
}

/// The response codes [`DnsMetrics`] counts by name (anything else is `other`).
pub const DNS_RCODES: &[&str] = &[
    "noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "other",
];
/// Why an upstream attempt failed: `timeout`, `io` (socket errors, refused ports), `malformed`
/// (a TCP answer that does not parse), `rcode` (it answered SERVFAIL or REFUSED).
pub const DNS_UPSTREAM_ERRORS: &[&str] = &["timeout", "io", "malformed", "rcode"];
/// Why a query got no answer or a canned one: `malformed` (not even a header), `response` (a
/// response sent to us), `busy` (too many forwarded queries in flight: SERVFAIL), `tcp_busy`
/// (too many TCP connections: closed), `tcp_timeout` (a TCP client too slow), `send`.
pub const DNS_DROPS: &[&str] = &["malformed", "response", "busy", "tcp_busy", "tcp_timeout", "send"];

/// Metrics of the agent's DNS server ([`crate::dns`]), registered under `dns_` in the agent's
/// registry by [`DnsMetrics::register`]. Cheap to clone: every clone counts into the same
/// series.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    /// The per-query series, resolved once: a family lookup (lock and hash) per query is a
    /// measurable share of a local answer.
    udp: Counter,
    tcp: Counter,
    by_rcode: [Counter; DNS_RCODES.len()],
    queries: Family<DnsTransportLabel, Counter>,
    responses: Family<DnsRcodeLabel, Counter>,
    forwarded: Counter,
    cache_hits: Counter,
    upstream_errors: Family<DnsReasonLabel, Counter>,
    dropped: Family<DnsReasonLabel, Counter>,
    in_flight: Gauge,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    listeners: Gauge,
}

/// A plain copy of [`DnsMetrics`], for tests and `doctor`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub queries: u64,
    pub responses: std::collections::BTreeMap<&'static str, u64>,
    pub forwarded: u64,
    pub cache_hits: u64,
    pub upstream_errors: u64,
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    pub in_flight: i64,
    pub cache_entries: i64,
    pub cache_bytes: i64,
    pub listeners: i64,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let queries: Family<DnsTransportLabel, Counter> = Family::default();
        let responses: Family<DnsRcodeLabel, Counter> = Family::default();
        let counter = |transport| queries.get_or_create(&DnsTransportLabel { transport }).clone();
        Self {
            udp: counter("udp"),
            tcp: counter("tcp"),
            by_rcode: std::array::from_fn(|i| {
                responses
                    .get_or_create(&DnsRcodeLabel { rcode: DNS_RCODES[i] })
                    .clone()
            }),
            queries,
            responses,
            forwarded: Counter::default(),
            cache_hits: Counter::default(),
            upstream_errors: Family::default(),
            dropped: Family::default(),
            in_flight: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            listeners: Gauge::default(),
        }
    }
}

impl DnsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dns");
        r.register(
            "queries",
            "DNS messages received on the gateways' port 53",
            self.queries.clone(),
        );
        r.register(
            "responses",
            "DNS responses sent, by rcode",
            self.responses.clone(),
        );
        r.register(
            "forwarded",
            "Queries sent to the host's resolvers (cache misses)",
            self.forwarded.clone(),
        );
        r.register(
            "cache_hits",
            "Forwardable queries answered from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed attempts at an upstream resolver, by reason",
            self.upstream_errors.clone(),
        );
        r.register(
            "dropped",
            "Queries refused for load or malformed, by reason",
            self.dropped.clone(),
        );
        r.register(
            "forward_in_flight",
            "Forwarded queries waiting for an upstream",
            self.in_flight.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the forwarding cache",
            self.cache_entries.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by the forwarding cache",
            self.cache_bytes.clone(),
        );
        r.register(
            "listeners",
            "Gateway addresses the DNS server listens on",
            self.listeners.clone(),
        );
    }

    pub fn snapshot(&self) -> DnsCounts {
        let by = |family: &Family<DnsReasonLabel, Counter>, names: &[&'static str]| {
            names
                .iter()
                .map(|&reason| (reason, family.get_or_create(&DnsReasonLabel { reason }).get()))
                .collect()
        };
        let responses: std::collections::BTreeMap<&'static str, u64> = DNS_RCODES
            .iter()
            .map(|&rcode| {
                (
                    rcode,
                    self.responses.get_or_create(&DnsRcodeLabel { rcode }).get(),
                )
            })
            .collect();
        let upstream_errors: std::collections::BTreeMap<&'static str, u64> =
            by(&self.upstream_errors, DNS_UPSTREAM_ERRORS);
        DnsCounts {
            queries: ["udp", "tcp"]
                .iter()
                .map(|&transport| self.queries.get_or_create(&DnsTransportLabel { transport }).get())
                .sum(),
            responses,
            forwarded: self.forwarded.get(),
            cache_hits: self.cache_hits.get(),
            upstream_errors: upstream_errors.values().sum(),
            dropped: by(&self.dropped, DNS_DROPS),
            in_flight: self.in_flight.get(),
            cache_entries: self.cache_entries.get(),
            cache_bytes: self.cache_bytes.get(),
            listeners: self.listeners.get(),
        }
    }

    /// One message received; `transport` is `udp` or `tcp`.
    pub fn query(&self, transport: &'static str) {
        match transport {
            "udp" => self.udp.inc(),
            "tcp" => self.tcp.inc(),
            other => self
                .queries
                .get_or_create(&DnsTransportLabel { transport: other })
                .inc(),
        };
    }

    /// One response sent; `rcode` one of [`DNS_RCODES`] (anything else counts as `other`).
    pub fn response(&self, rcode: &'static str) {
        let i = DNS_RCODES
            .iter()
            .position(|r| *r == rcode)
            .unwrap_or(DNS_RCODES.len() - 1);
        self.by_rcode[i].inc();
    }

    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&DnsReasonLabel { reason })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DnsReasonLabel { reason }).inc();
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub fn set_cache(&self, entries: usize, bytes: usize) {
        self.cache_entries.set(entries as i64);
        self.cache_bytes.set(bytes as i64);
    }

    pub fn set_listeners(&self, n: usize) {
        self.listeners.set(n as i64);
    }
}
