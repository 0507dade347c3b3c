//! A controller cluster of real `overlay-controller` processes, each with its own data dir,
//! on loopback or inside network namespaces. Killing, stopping and restarting replicas is how
//! the tests inject faults.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use crate::pki::CertFiles;
use crate::process::Daemon;
use crate::{LabError, Result, bins};

/// One replica: where it listens and keeps its data, and its process while it runs.
pub struct Replica {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub netns: Option<String>,
    log: PathBuf,
    daemon: Option<Daemon>,
    /// Environment of this replica alone (its TLS files), after the cluster-wide one.
    env: Vec<(String, String)>,
    /// A command the replica is started through (e.g. `nsenter -t PID -m --`), if any.
    wrapper: Vec<String>,
}

impl Replica {
    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

pub struct ControllerCluster {
    pub replicas: Vec<Replica>,
    bin: PathBuf,
    peers: String,
    request_timeout: String,
    env: Vec<(String, String)>,
    /// What [`client`](Self::client) presents to the replicas when they run mutual TLS.
    client_tls: Option<ClientTlsConfig>,
    _dir: Option<tempfile::TempDir>,
}

/// A loopback port nobody listens on right now.
///
/// Never the same port twice in one process: tests of one binary run in parallel, and a port
/// the kernel just handed to one of them (or that belongs to a replica killed and about to be
/// restarted on it) must not become another test's replica, whose client would then talk to
/// the wrong cluster.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").map_err(crate::io("bind 127.0.0.1:0"))?;
        let port = l.local_addr().map_err(crate::io("local_addr"))?.port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return Ok(port);
        }
    }
}

impl ControllerCluster {
    /// `n` replicas on 127.0.0.1, data under a fresh temporary directory.
    pub fn start_loopback(n: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("overlay-ctl-")
            .tempdir()
            .map_err(crate::io("tempdir"))?;
        let mut addrs = Vec::new();
        for _ in 0..n {
            addrs.push((format!("127.0.0.1:{}", free_port()?), None));
        }
        let mut c = Self::new(addrs, dir.path())?;
        c._dir = Some(dir);
        c.start_all()?;
        Ok(c)
    }

    /// Replicas at the given addresses, each optionally inside a network namespace; data and
    /// logs under `dir`. Call [`start_all`](Self::start_all) to launch them.
    pub fn new(addrs: Vec<(String, Option<String>)>, dir: &Path) -> Result<Self> {
        let bin = bins::bin("overlay-controller")?;
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, (a, _))| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let replicas = addrs
            .into_iter()
            .enumerate()
            .map(|(i, (addr, netns))| Replica {
                id: i as u64 + 1,
                addr,
                data_dir: dir.join(format!("controller-{}", i + 1)),
                netns,
                log: dir.join(format!("controller-{}.log", i + 1)),
                daemon: None,
                env: Vec::new(),
                wrapper: Vec::new(),
            })
            .collect();
        Ok(Self {
            replicas,
            bin,
            peers,
            request_timeout: "3s".into(),
            env: Vec::new(),
            client_tls: None,
            _dir: None,
        })
    }

    /// How long a replica lets a write or consistent read wait for a quorum (default 3s).
    pub fn set_request_timeout(&mut self, t: &str) {
        self.request_timeout = t.to_string();
    }

    /// An environment variable for replicas started from now on (e.g. OVERLAY_METRICS_LISTEN).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Mutual TLS for replica `id` from its next start: its own certificate files.
    pub fn set_replica_tls(&mut self, id: u64, files: &CertFiles) -> Result<()> {
        self.replica(id)?.env = files.env();
        Ok(())
    }

    /// The TLS identity [`client`](Self::client) and [`wait_leader`](Self::wait_leader) use.
    pub fn set_client_tls(&mut self, tls: Option<ClientTlsConfig>) {
        self.client_tls = tls;
    }

    /// Starts replica `id` through `wrapper` from its next start (e.g. `nsenter -t PID -m --`
    /// to run it in another mount namespace); empty = directly.
    pub fn set_replica_wrapper(&mut self, id: u64, wrapper: &[&str]) -> Result<()> {
        self.replica(id)?.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for id in self.replicas.iter().map(|r| r.id).collect::<Vec<_>>() {
            self.start(id)?;
        }
        Ok(())
    }

    fn replica(&mut self, id: u64) -> Result<&mut Replica> {
        self.replicas
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| LabError::Setup(format!("no replica {id}")))
    }

    /// Starts (or restarts) replica `id` on its existing data dir.
    pub fn start(&mut self, id: u64) -> Result<()> {
        let peers = self.peers.clone();
        self.start_with_peers(id, peers)
    }

    /// Starts replica `id` with `--peers` listing only itself: on an empty data dir it founds a
    /// one-member cluster, the seed of one grown with `overlayctl cluster add-member`.
    pub fn start_alone(&mut self, id: u64) -> Result<()> {
        let peers = format!("{id}={}", self.addr(id));
        self.start_with_peers(id, peers)
    }

    fn start_with_peers(&mut self, id: u64, peers: String) -> Result<()> {
        let (bin, timeout, env) = (self.bin.clone(), self.request_timeout.clone(), self.env.clone());
        let r = self.replica(id)?;
        if r.is_running() {
            return Ok(());
        }
        let mut cmd = match (&r.netns, r.wrapper.split_first()) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(&r.wrapper).arg(&bin);
                c
            }
            (None, Some((program, args))) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            (None, None) => Command::new(&bin),
        };
        cmd.arg("--node-id")
            .arg(r.id.to_string())
            .arg("--listen")
            .arg(&r.addr)
            .arg("--data-dir")
            .arg(&r.data_dir)
            .arg("--peers")
            .arg(&peers)
            .arg("--request-timeout")
            .arg(&timeout)
            .env(
                "RUST_LOG",
                std::env::var("OVERLAY_LAB_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(env)
            .envs(r.env.clone());
        r.daemon = Some(Daemon::spawn(&format!("controller-{id}"), cmd, &r.log)?);
        Ok(())
    }

    /// SIGKILL replica `id`.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        if let Some(d) = self.replica(id)?.daemon.take() {
            d.kill();
        }
        Ok(())
    }

    /// SIGTERM replica `id` and wait for it to exit.
    pub fn stop(&mut self, id: u64) -> Result<()> {
        if let Some(d) = self.replica(id)?.daemon.take() {
            d.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    /// SIGTERM replica `id` and wait up to `within`: its exit status and how long the exit
    /// took, or `None` if it had to be SIGKILLed.
    pub fn terminate(&mut self, id: u64, within: Duration) -> Result<Option<(ExitStatus, Duration)>> {
        Ok(self.replica(id)?.daemon.take().and_then(|d| d.terminate(within)))
    }

    /// Waits up to `within` for replica `id` to exit by itself; its exit status, or `None`
    /// if it still runs (or never ran).
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Result<Option<ExitStatus>> {
        let r = self.replica(id)?;
        let status = r.daemon.as_mut().and_then(|d| d.wait_exit(within));
        if status.is_some() {
            r.daemon = None;
        }
        Ok(status)
    }

    /// Process id of replica `id` while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.replicas
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.daemon.as_ref())
            .map(|d| d.pid())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.replicas
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.addr.clone())
            .unwrap_or_default()
    }

    /// A fail-over client over every replica.
    pub fn client(&self) -> Result<Controllers> {
        Ok(client(&self.addrs())?.with_tls(self.client_tls.clone()))
    }

    /// A client bound to replica `id` alone.
    pub fn client_of(&self, id: u64) -> Result<Controllers> {
        Ok(client(&[self.addr(id)])?.with_tls(self.client_tls.clone()))
    }

    /// Waits until replica `via` reports a leader, and returns its id.
    pub async fn wait_leader(&self, via: u64, within: Duration) -> Result<u64> {
        let c = self.client_of(via)?;
        let deadline = Instant::now() + within;
        loop {
            let status = c
                .call(|ch| async move {
                    OverlayClient::new(ch)
                        .cluster_status(pb::ClusterStatusRequest {})
                        .await
                })
                .await;
            if let Ok(s) = status
                && s.get_ref().leader_id != 0
            {
                return Ok(s.get_ref().leader_id);
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "no leader seen by replica {via} within {within:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Log tails of every replica, for a failing test's report.
    pub fn logs(&self, lines: usize) -> String {
        self.replicas
            .iter()
            .map(|r| {
                format!(
                    "--- controller-{} ({})\n{}",
                    r.id,
                    r.log.display(),
                    crate::process::tail(&r.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ControllerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(40));
        }
        for r in &mut self.replicas {
            if let Some(d) = r.daemon.take() {
                d.kill();
            }
        }
    }
}

pub fn client(addrs: &[String]) -> Result<Controllers> {
    Controllers::new(addrs, Duration::from_secs(1), Duration::from_secs(30))
        .map_err(|e| LabError::Setup(e.to_string()))
}
