//! The server: the table swapped by [`DnsServer::update`], and a supervisor task that keeps
//! one [`Listener`] per gateway of the current table (binding new ones, closing gone ones,
//! retrying failed binds).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::cache::Limits;
use super::forward::Forwarder;
use super::listener::{Listener, Shared};
use super::resolv::{self, Upstreams};
use super::zone::{Table, Ttls, Zone, ZoneError};
use crate::metrics::DnsMetrics;

/// A failed bind (the port taken by another server) is tried again this often.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// How the server runs. [`Default`] is what the agent uses; tests shorten the timeouts.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// 53; another port only for tests and benchmarks.
    pub port: u16,
    /// The host's resolver configuration, read for upstreams.
    pub resolv_conf: PathBuf,
    /// How often `resolv_conf` is checked for changes.
    pub resolv_poll: Duration,
    /// One attempt at one upstream (a query tries up to three upstreams).
    pub upstream_timeout: Duration,
    /// Forwarded queries waiting for an upstream at once (each holds one socket); past it,
    /// SERVFAIL at once.
    pub max_in_flight: usize,
    /// Open TCP connections over all gateways; past it, new ones are closed.
    pub max_tcp_connections: usize,
    /// How long a TCP client has to send each whole query (and to take each response).
    pub tcp_timeout: Duration,
    pub cache: Limits,
    /// TTLs of our own answers.
    pub ttls: Ttls,
    pub metrics: DnsMetrics,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            port: 53,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            resolv_poll: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(2),
            max_in_flight: 512,
            max_tcp_connections: 128,
            tcp_timeout: Duration::from_secs(5),
            cache: Limits {
                max_entries: 10_000,
                max_bytes: 8 << 20,
                max_ttl: 3600,
                max_negative_ttl: 30,
                default_negative_ttl: 5,
            },
            // Short: a detached endpoint's name must be gone from clients' caches quickly.
            ttls: Ttls {
                positive: 1,
                negative: 1,
            },
            metrics: DnsMetrics::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the DNS server must be started inside a tokio runtime")]
    NoRuntime,
    #[error("invalid DNS server setting: {0}")]
    Config(&'static str),
    #[error("cannot start the DNS server's UDP thread: {0}")]
    Thread(std::io::Error),
}

/// The thread that serves every gateway's UDP socket, on a runtime of its own: local answers
/// are a few microseconds of work, and a single-threaded loop spends them without the
/// cross-thread wake-ups of a work-stealing runtime (which cost more than the answer).
/// Forwarded queries wait upstream as tasks on the same thread. Created by
/// [`DnsServer::start`], so in the namespace of the thread that starts the server.
struct UdpThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl UdpThread {
    fn start() -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("overlay-dns-udp".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                // Until the server goes; dropping the runtime then ends every task on it.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the DNS UDP thread exited"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for UdpThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What one [`DnsServer::update`] took in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Zones served.
    pub zones: usize,
    /// Names over all zones.
    pub names: usize,
    /// What was left out, one line each (also logged).
    pub problems: Vec<ZoneError>,
}

/// Whether each gateway of the current table is listening: `Err` holds the bind error.
pub type ListenerStatus = BTreeMap<Ipv4Addr, Result<(), String>>;

/// The agent's DNS server. Dropping it stops every listener.
pub struct DnsServer {
    shared: Arc<Shared>,
    ttls: Ttls,
    /// Bumped by each update; the supervisor reconciles to it.
    wanted: watch::Sender<u64>,
    /// The last generation the supervisor reconciled (closed if the supervisor is gone).
    done: watch::Receiver<u64>,
    status: Arc<Mutex<ListenerStatus>>,
    tasks: Vec<JoinHandle<()>>,
    _udp: UdpThread,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnsServer {
    /// Starts with no zone (so no listener): feed it with [`DnsServer::update`]. Must run
    /// inside the agent's tokio runtime, whose threads are in the host namespace: listeners
    /// are bound by a task of that runtime.
    pub fn start(config: DnsConfig) -> Result<DnsServer, DnsError> {
        tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let checks: [(bool, &'static str); 6] = [
            (config.port != 0, "port 0"),
            (config.max_in_flight > 0, "max_in_flight 0"),
            (config.max_tcp_connections > 0, "max_tcp_connections 0"),
            (!config.upstream_timeout.is_zero(), "upstream_timeout 0"),
            (!config.tcp_timeout.is_zero(), "tcp_timeout 0"),
            (!config.resolv_poll.is_zero(), "resolv_poll 0"),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(DnsError::Config(what));
        }
        let udp = UdpThread::start().map_err(DnsError::Thread)?;
        let upstreams = Arc::new(Upstreams::default());
        resolv::load(&config.resolv_conf, &upstreams);
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(Table::default())),
            upstreams: upstreams.clone(),
            forwarder: Forwarder::new(
                config.cache,
                config.max_in_flight,
                config.upstream_timeout,
                config.metrics.clone(),
            ),
            metrics: config.metrics.clone(),
            tcp_slots: Arc::new(Semaphore::new(config.max_tcp_connections)),
            tcp_timeout: config.tcp_timeout,
        });
        let (wanted, wanted_rx) = watch::channel(0u64);
        let (done_tx, done) = watch::channel(u64::MAX);
        let status = Arc::new(Mutex::new(ListenerStatus::new()));
        let watcher = {
            let shared = shared.clone();
            tokio::spawn(resolv::watch(
                config.resolv_conf.clone(),
                upstreams,
                config.resolv_poll,
                move || shared.forwarder.clear_cache(),
            ))
        };
        let supervisor = tokio::spawn(supervise(
            shared.clone(),
            config.port,
            udp.handle.clone(),
            wanted_rx,
            done_tx,
            status.clone(),
        ));
        Ok(DnsServer {
            shared,
            ttls: config.ttls,
            wanted,
            done,
            status,
            tasks: vec![watcher, supervisor],
            _udp: udp,
        })
    }

    /// Replaces every zone at once: queries from now on see the new names (queries in flight
    /// finish with the old ones); listeners of new gateways are bound and those of gone ones
    /// closed right after, by the supervisor ([`DnsServer::settled`] waits for that). Bad
    /// zones and names are left out and reported; the rest is served.
    pub fn update(&self, zones: Vec<Zone>) -> UpdateReport {
        let generation = self.wanted.borrow().wrapping_add(1);
        let (table, problems) = Table::build(zones, self.ttls, generation as u32);
        for p in &problems {
            tracing::warn!(problem = %p, "DNS zone data left out");
        }
        let report = UpdateReport {
            zones: table.gateways().count(),
            names: table.names(),
            problems,
        };
        self.shared.set_table(table);
        self.wanted.send_replace(generation);
        report
    }

    /// Waits until the listeners match the last update, then tells how they are.
    pub async fn settled(&self) -> ListenerStatus {
        let want = *self.wanted.borrow();
        let mut done = self.done.clone();
        // An error means the supervisor is gone: the status is then as it left it.
        let _ = done.wait_for(|g| *g != u64::MAX && *g >= want).await;
        self.listeners()
    }

    pub fn listeners(&self) -> ListenerStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The host's resolvers as last read (before leaving out our own gateways).
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.shared.upstreams.get().to_vec()
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.shared.metrics
    }
}

async fn supervise(
    shared: Arc<Shared>,
    port: u16,
    udp: tokio::runtime::Handle,
    mut wanted: watch::Receiver<u64>,
    done: watch::Sender<u64>,
    status: Arc<Mutex<ListenerStatus>>,
) {
    let mut running: HashMap<Ipv4Addr, Listener> = HashMap::new();
    let mut retry = tokio::time::interval(BIND_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let generation = *wanted.borrow_and_update();
        let want: BTreeSet<Ipv4Addr> = shared.table().gateways().collect();
        running.retain(|gw, _| {
            let keep = want.contains(gw);
            if !keep {
                tracing::info!(gateway = %gw, "DNS listener closed");
            }
            keep
        });
        let before = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut now = ListenerStatus::new();
        for gw in want {
            if running.contains_key(&gw) {
                now.insert(gw, Ok(()));
                continue;
            }
            match Listener::bind(SocketAddrV4::new(gw, port), shared.clone(), &udp) {
                Ok(l) => {
                    tracing::info!(gateway = %gw, port, "DNS listening");
                    running.insert(gw, l);
                    now.insert(gw, Ok(()));
                }
                Err(e) => {
                    let e = format!("cannot listen on {gw}:{port}: {e}");
                    if before.get(&gw) != Some(&Err(e.clone())) {
                        tracing::warn!(error = %e, "DNS listener not started; retrying");
                    }
                    now.insert(gw, Err(e));
                }
            }
        }
        let failed = now.values().any(Result::is_err);
        shared.metrics.set_listeners(running.len());
        *status.lock().unwrap_or_else(|e| e.into_inner()) = now;
        done.send_replace(generation);
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            _ = retry.tick(), if failed => {}
        }
    }
}
