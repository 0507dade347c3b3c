//! The multi-host lab (DESIGN.md layout): `<prefix>-ul` holds the underlay bridge `br0`;
//! each simulated host `<prefix>-hN` and controller `<prefix>-cN` is a namespace with an
//! `eth0` on that bridge (192.0.2.0/24); workloads are further namespaces wired by the agents.
//! overlayctl runs in the underlay namespace (192.0.2.254), so nothing is created in, or
//! routed through, the root namespace. [`Lab::start_ipv6`] makes the same lab on an IPv6-only
//! underlay (2001:db8::/64: hosts `::1N`, controllers `::10N`, overlayctl `::254`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controllers::ControllerCluster;
use crate::netns::{self, Namespaces, exec, exec_any, stdout};
use crate::pki::{CertFiles, Pki};
use crate::process::Daemon;
use crate::{LabError, Result, bins};

pub const UNDERLAY_NET: &str = "192.0.2";
/// The IPv6-only underlay's prefix ([`Lab::start_ipv6`]), a /64.
pub const UNDERLAY_NET6: &str = "2001:db8::";
/// The far side of [`Lab::add_routed_host`]'s router: hosts off the underlay segment.
pub const FAR_NET: &str = "198.51.100";
const CONTROLLER_PORT: u16 = 7400;

#[derive(Clone, Debug)]
pub struct LabConfig {
    pub hosts: usize,
    pub controllers: usize,
    /// Short tag in namespace names, to tell labs apart in `ip netns`.
    pub tag: &'static str,
    /// Agent full-reconcile period.
    pub resync_secs: u64,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            hosts: 3,
            controllers: 1,
            tag: "ovl",
            resync_secs: 10,
        }
    }
}

pub struct SimHost {
    /// Cluster host name (h1, h2 ...).
    pub name: String,
    pub ns: String,
    /// Its IPv4 underlay address; unspecified (0.0.0.0) on an IPv6-only underlay (for
    /// [`Lab::add_ipv6_underlay_host`], its management address).
    pub ip: Ipv4Addr,
    /// Its IPv6 underlay address, on an IPv6-only underlay.
    pub ip6: Option<Ipv6Addr>,
    agent: Option<Daemon>,
    /// A mount namespace of its own ([`Lab::give_mount_namespace`]): the agent (and a container
    /// engine) run inside it. Dropped after the agent.
    pub mount_ns: Option<crate::mountns::MountNs>,
    log: PathBuf,
    state_dir: PathBuf,
}

impl SimHost {
    /// A host named `name` in namespace `ns` with underlay address `ip`; its agent's log and
    /// state live under the lab's `dir`.
    fn new(dir: &std::path::Path, name: String, ns: String, ip: Ipv4Addr) -> Self {
        SimHost {
            log: dir.join(format!("agent-{name}.log")),
            state_dir: dir.join(format!("agent-{name}")),
            name,
            ns,
            ip,
            ip6: None,
            agent: None,
            mount_ns: None,
        }
    }

    pub fn agent_running(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|a| a.is_running())
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The instance id the agent made in its state dir (after its first start).
    pub fn instance_id(&self) -> Result<String> {
        let path = self.state_dir.join("instance-id");
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(crate::io(format!("read {}", path.display())))
    }
}

/// A running lab. Dropping it kills every process and deletes every namespace it made.
pub struct Lab {
    pub prefix: String,
    /// The underlay namespace.
    pub ul: String,
    // Field order is drop order: processes first, namespaces after.
    pub hosts: Vec<SimHost>,
    pub controllers: ControllerCluster,
    pub workloads: Vec<String>,
    /// The lab's CA when it runs mutual TLS ([`Lab::start_secure`]).
    pub pki: Option<Pki>,
    /// overlayctl's identity in a TLS lab (an admin certificate).
    admin: Option<CertFiles>,
    resync_secs: u64,
    /// The underlay is IPv6 only ([`Lab::start_ipv6`]).
    ipv6: bool,
    namespaces: Namespaces,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab on plaintext: every process it starts runs with `OVERLAY_INSECURE=true`
    /// ([`crate::plaintext`]); [`Lab::start_secure`] for mutual TLS.
    pub fn start(cfg: LabConfig) -> Result<Self> {
        Self::launch(cfg, false, false)
    }

    /// [`Lab::start`] on an IPv6-only underlay: no IPv4 address on any underlay interface, the
    /// controllers listening on their IPv6 addresses (plaintext).
    pub fn start_ipv6(cfg: LabConfig) -> Result<Self> {
        Self::launch(cfg, false, true)
    }

    /// [`Lab::start`] with mutual TLS everywhere: a CA made with `overlayctl certs`, one
    /// controller certificate per replica, one agent certificate per host (issued when its
    /// agent first starts) and an admin certificate for [`Lab::ctl`].
    pub fn start_secure(cfg: LabConfig) -> Result<Self> {
        Self::launch(cfg, true, false)
    }

    fn launch(cfg: LabConfig, tls: bool, ipv6: bool) -> Result<Self> {
        let prefix = netns::unique_prefix(cfg.tag);
        let dir = tempfile::Builder::new()
            .prefix(&format!("overlay-lab-{prefix}-"))
            .tempdir()
            .map_err(crate::io("tempdir"))?;
        let mut namespaces = Namespaces::default();
        let ul = format!("{prefix}-ul");
        namespaces.add(&ul)?;
        exec(&ul, "ip", &["link", "add", "br0", "type", "bridge"])?;
        exec(&ul, "ip", &["link", "set", "br0", "up"])?;
        add_underlay_address(&ul, "br0", 254, ipv6)?;

        let mut controller_addrs = Vec::new();
        for j in 1..=cfg.controllers {
            let ns = format!("{prefix}-c{j}");
            namespaces.add(&ns)?;
            netns::wire(&ns, "eth0", &ul, &format!("c{j}"), "br0")?;
            let ip = add_underlay_address(&ns, "eth0", 100 + j as u16, ipv6)?;
            let addr = match ip {
                std::net::IpAddr::V4(ip) => format!("{ip}:{CONTROLLER_PORT}"),
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{CONTROLLER_PORT}"),
            };
            controller_addrs.push((addr, Some(ns)));
        }
        let mut hosts = Vec::new();
        for i in 1..=cfg.hosts {
            hosts.push(Self::make_host(
                &mut namespaces,
                &prefix,
                &ul,
                dir.path(),
                i,
                ipv6,
            )?);
        }
        let mut controllers = ControllerCluster::new(controller_addrs.clone(), dir.path())?;
        let (mut pki, mut admin) = (None, None);
        if tls {
            let ca = Pki::create(&dir.path().join("pki"))?;
            for (j, (addr, _)) in controller_addrs.iter().enumerate() {
                let ip = addr.split(':').next().unwrap_or_default();
                let files = ca.issue("controller", &format!("c{}", j + 1), &[ip])?;
                controllers.set_replica_tls(j as u64 + 1, &files)?;
            }
            let files = ca.issue("admin", "lab-admin", &[])?;
            controllers.set_client_tls(Some(files.load()?.client_config()));
            admin = Some(files);
            pki = Some(ca);
        }
        controllers.start_all()?;
        let lab = Self {
            prefix,
            ul,
            hosts,
            controllers,
            workloads: Vec::new(),
            pki,
            admin,
            resync_secs: cfg.resync_secs,
            ipv6,
            namespaces,
            dir,
        };
        lab.wait_leader(Duration::from_secs(30))?;
        Ok(lab)
    }

    fn make_host(
        namespaces: &mut Namespaces,
        prefix: &str,
        ul: &str,
        dir: &std::path::Path,
        i: usize,
        ipv6: bool,
    ) -> Result<SimHost> {
        let name = format!("h{i}");
        let ns = format!("{prefix}-{name}");
        namespaces.add(&ns)?;
        netns::wire(&ns, "eth0", ul, &name, "br0")?;
        let mut host = SimHost::new(dir, name, ns, Ipv4Addr::UNSPECIFIED);
        match add_underlay_address(&host.ns, "eth0", 10 + i as u16, ipv6)? {
            std::net::IpAddr::V4(ip) => host.ip = ip,
            std::net::IpAddr::V6(ip) => host.ip6 = Some(ip),
        }
        Ok(host)
    }

    /// [`Lab::start`], then every host's agent, and waits until all hosts are registered and up.
    pub fn start_with_agents(cfg: LabConfig) -> Result<Self> {
        let mut lab = Self::start(cfg)?;
        lab.start_agents()?;
        lab.wait_hosts_up(Duration::from_secs(30))?;
        Ok(lab)
    }

    /// Waits until every simulated host is registered and `up` (its agent heartbeats).
    pub fn wait_hosts_up(&self, within: Duration) -> Result<Duration> {
        let hosts = self.hosts.len();
        Self::wait_until(within, || {
            self.ctl_json(&["host", "ls"])
                .map(|v| {
                    v.as_array()
                        .is_some_and(|a| a.len() == hosts && a.iter().all(|h| h["state"] == "up"))
                })
                .unwrap_or(false)
        })
        .ok_or_else(|| {
            LabError::Timeout(format!(
                "agents did not register within {within:?}\n{}",
                self.logs()
            ))
        })
    }

    /// Adds one more simulated host (not yet running an agent); returns its index.
    pub fn add_host(&mut self) -> Result<usize> {
        let i = self.hosts.len() + 1;
        let host = Self::make_host(
            &mut self.namespaces,
            &self.prefix,
            &self.ul,
            self.dir.path(),
            i,
            self.ipv6,
        )?;
        self.hosts.push(host);
        Ok(i - 1)
    }

    /// Adds a simulated host behind a router instead of on the underlay segment; returns its
    /// index. The router `<prefix>-rtr` (192.0.2.253 on the underlay, 198.51.100.1 on the far
    /// side, made with the first such host) forwards between the two; the new host has
    /// 198.51.100.<10+i>/24 on its eth0 and a default route via the router, and every host and
    /// controller on the underlay gets a route to 198.51.100.0/24 through it. Its agent is
    /// not started.
    pub fn add_routed_host(&mut self) -> Result<usize> {
        let rtr = format!("{}-rtr", self.prefix);
        if !self.namespaces.contains(&rtr) {
            self.namespaces.add(&rtr)?;
            netns::wire(&rtr, "eth0", &self.ul, "rtr", "br0")?;
            exec(
                &rtr,
                "ip",
                &["addr", "add", &format!("{UNDERLAY_NET}.253/24"), "dev", "eth0"],
            )?;
            exec(&rtr, "ip", &["link", "add", "far", "type", "bridge"])?;
            exec(
                &rtr,
                "ip",
                &["addr", "add", &format!("{FAR_NET}.1/24"), "dev", "far"],
            )?;
            exec(&rtr, "ip", &["link", "set", "far", "up"])?;
            exec(&rtr, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            let on_segment = self
                .hosts
                .iter()
                .map(|h| h.ns.clone())
                .chain((1..=self.controllers.addrs().len()).map(|j| format!("{}-c{j}", self.prefix)));
            let via = format!("{UNDERLAY_NET}.253");
            for ns in on_segment {
                exec(
                    &ns,
                    "ip",
                    &["route", "replace", &format!("{FAR_NET}.0/24"), "via", &via],
                )?;
            }
        }
        let i = self.hosts.len() + 1;
        let name = format!("h{i}");
        let ns = format!("{}-{name}", self.prefix);
        self.namespaces.add(&ns)?;
        netns::wire(&ns, "eth0", &rtr, &name, "far")?;
        let ip: Ipv4Addr = format!("{FAR_NET}.{}", 10 + i)
            .parse()
            .map_err(|_| LabError::Setup("bad ip".into()))?;
        exec(&ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        exec(
            &ns,
            "ip",
            &["route", "add", "default", "via", &format!("{FAR_NET}.1")],
        )?;
        self.hosts.push(SimHost::new(self.dir.path(), name, ns, ip));
        Ok(i - 1)
    }

    /// Adds a simulated host whose underlay interface `eth0` holds only an IPv6 address
    /// (2001:db8::<10+i>/64), in a lab whose other hosts are on IPv4: it reaches the
    /// controllers through a second interface, `mgmt0` (192.0.2.<10+i>/24, same bridge), as a
    /// host with a separate management network would. Its agent is not started.
    pub fn add_ipv6_underlay_host(&mut self) -> Result<usize> {
        let i = self.hosts.len() + 1;
        let mut host = Self::make_host(
            &mut self.namespaces,
            &self.prefix,
            &self.ul,
            self.dir.path(),
            i,
            true,
        )?;
        netns::wire(&host.ns, "mgmt0", &self.ul, &format!("{}m", host.name), "br0")?;
        let ip = add_underlay_address(&host.ns, "mgmt0", 10 + i as u16, false)?;
        if let std::net::IpAddr::V4(ip) = ip {
            host.ip = ip;
        }
        self.hosts.push(host);
        Ok(i - 1)
    }

    pub fn controller_list(&self) -> String {
        self.controllers.addrs().join(",")
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    // ------------------------------------------------------------------ agents

    pub fn start_agent(&mut self, host: usize) -> Result<()> {
        self.start_agent_with_env(host, &[])
    }

    /// Starts the agent of `host` with extra environment variables.
    pub fn start_agent_with_env(&mut self, host: usize, env: &[(&str, &str)]) -> Result<()> {
        let bin = bins::bin("overlay-agent")?;
        let controllers = self.controller_list();
        let resync = self.resync_secs.to_string();
        let tls_env = match &self.pki {
            Some(pki) => pki.issue("agent", &self.hosts[host].name, &[])?.env(),
            None => Vec::new(),
        };
        let h = &mut self.hosts[host];
        if h.agent_running() {
            return Ok(());
        }
        let mut cmd = match &h.mount_ns {
            Some(m) => m.command(&bin.display().to_string(), &[]),
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &h.ns]).arg(&bin);
                cmd
            }
        };
        cmd.args([
            "--controller",
            &controllers,
            "--host-name",
            &h.name,
            "--underlay-iface",
            "eth0",
        ])
        .arg("--state-dir")
        .arg(&h.state_dir)
        // Every simulated host shares the root mount namespace: each agent gets a socket
        // of its own (DESIGN's default, /run/overlay/agent.sock, is for one per machine).
        .arg("--local-socket")
        .arg(h.state_dir.join("agent.sock"))
        .args(["--resync-secs", &resync])
        .env(
            "RUST_LOG",
            std::env::var("OVERLAY_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(tls_env)
        .envs(env.iter().copied());
        h.agent = Some(Daemon::spawn(&format!("agent-{}", h.name), cmd, &h.log)?);
        Ok(())
    }

    /// Starts a second agent on simulated machine `machine` that calls itself `host_name`
    /// (another host's name, say), with its own state dir and, in a TLS lab, the certificate
    /// `certs` (a copy of that host's, say). The caller owns the process.
    pub fn spawn_agent_as(
        &self,
        machine: usize,
        host_name: &str,
        certs: Option<&CertFiles>,
    ) -> Result<Daemon> {
        let bin = bins::bin("overlay-agent")?;
        let h = &self.hosts[machine];
        let tag = format!("agent-{host_name}-on-{}", h.name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns])
            .arg(&bin)
            .args(["--controller", &self.controller_list(), "--host-name", host_name])
            .args(["--underlay-iface", "eth0"])
            .arg("--state-dir")
            .arg(self.dir.path().join(&tag))
            .arg("--local-socket")
            .arg(self.dir.path().join(&tag).join("agent.sock"))
            .args(["--resync-secs", &self.resync_secs.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("OVERLAY_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(certs.map(CertFiles::env).unwrap_or_default());
        Daemon::spawn(&tag, cmd, &self.dir.path().join(format!("{tag}.log")))
    }

    pub fn start_agents(&mut self) -> Result<()> {
        for i in 0..self.hosts.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// SIGKILL the agent of `host` (its datapath stays in the kernel).
    pub fn kill_agent(&mut self, host: usize) {
        if let Some(a) = self.hosts[host].agent.take() {
            a.kill();
        }
    }

    /// SIGTERM the agent of `host`.
    pub fn stop_agent(&mut self, host: usize) {
        if let Some(a) = self.hosts[host].agent.take() {
            a.stop(Duration::from_secs(5));
        }
    }

    /// SIGTERM the agent of `host` and wait up to `within`: its exit status and how long the
    /// exit took, or `None` if it had to be SIGKILLed.
    pub fn terminate_agent(
        &mut self,
        host: usize,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        self.hosts[host].agent.take().and_then(|a| a.terminate(within))
    }

    /// Process id of the agent of `host`, while one runs (`ip netns exec` execs it in place).
    pub fn agent_pid(&self, host: usize) -> Option<u32> {
        self.hosts[host].agent.as_ref().map(Daemon::pid)
    }

    /// Gives `host` a mount namespace of its own (DESIGN.md's recipe for container engines):
    /// its agent, started afterwards, runs inside it, and so must the engine.
    pub fn give_mount_namespace(&mut self, host: usize) -> Result<&crate::mountns::MountNs> {
        let log = self
            .dir
            .path()
            .join(format!("mountns-{}.log", self.hosts[host].name));
        let m = crate::mountns::MountNs::new(&self.hosts[host].ns, &log)?;
        Ok(self.hosts[host].mount_ns.insert(m))
    }

    /// Where the agent of `host` serves its local endpoint API.
    pub fn local_socket(&self, host: usize) -> PathBuf {
        self.hosts[host].state_dir.join("agent.sock")
    }

    pub fn agent_log_path(&self, host: usize) -> &std::path::Path {
        &self.hosts[host].log
    }

    pub fn agent_log(&self, host: usize) -> String {
        crate::process::tail(&self.hosts[host].log, 200)
    }

    // ------------------------------------------------------------------ overlayctl

    /// Runs overlayctl from the underlay namespace; returns the output whatever the status.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        let bin = bins::bin("overlayctl")?;
        let controllers = self.controller_list();
        let tls_args = self.admin.as_ref().map(CertFiles::args).unwrap_or_default();
        let mut all: Vec<&str> = vec!["--controller", &controllers];
        all.extend(tls_args.iter().map(String::as_str));
        all.extend_from_slice(args);
        exec_any(&self.ul, bin.to_str().unwrap_or("overlayctl"), &all)
    }

    /// Runs overlayctl from the underlay namespace with `--insecure` and no certificate, as a
    /// plaintext client would; returns the output whatever the status.
    pub fn ctl_insecure(&self, args: &[&str]) -> Result<Output> {
        let bin = bins::bin("overlayctl")?;
        let controllers = self.controller_list();
        let mut all: Vec<&str> = vec!["--controller", &controllers, "--insecure"];
        all.extend_from_slice(args);
        exec_any(&self.ul, bin.to_str().unwrap_or("overlayctl"), &all)
    }

    /// overlayctl that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("overlayctl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(stdout(&out))
    }

    pub fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let text = self.ctl_ok(&all)?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Setup(format!("overlayctl {args:?}: bad JSON: {e}")))
    }

    pub fn wait_leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(v) = self.ctl_json(&["cluster", "status"])
                && let Some(id) = v["leader"].as_u64()
            {
                return Ok(id);
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "no controller leader within {within:?}\n{}",
                    self.controllers.logs(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // ------------------------------------------------------------------ workloads

    /// Creates a workload namespace `<prefix>-<name>`; returns its name.
    pub fn add_workload(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.namespaces.add(&ns)?;
        self.workloads.push(ns.clone());
        Ok(ns)
    }

    /// Names the namespace of process `pid` `<prefix>-<name>` under /run/netns (`ip netns
    /// attach`); removed with the lab. Returns the name.
    pub fn name_namespace_of(&mut self, name: &str, pid: u32) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.namespaces.attach(&ns, pid)?;
        Ok(ns)
    }

    pub fn remove_workload(&mut self, ns: &str) -> Result<()> {
        self.workloads.retain(|w| w != ns);
        self.namespaces.remove(ns)
    }

    /// `overlayctl endpoint attach`; returns the address the workload got.
    /// Host `host`'s lease in `network` as `network inspect` shows it: (subnet, gateway).
    pub fn lease(&self, network: &str, host: &str) -> Result<(ipnetwork::Ipv4Network, Ipv4Addr)> {
        let leases = self.ctl_json(&["network", "inspect", network])?["host_leases"].clone();
        let lease = leases
            .as_array()
            .and_then(|l| l.iter().find(|l| l["host"] == host));
        let field = |name: &str| lease.and_then(|l| l[name].as_str());
        let subnet = field("subnet").and_then(|s| s.parse().ok());
        let gateway = field("gateway").and_then(|s| s.parse().ok());
        match (subnet, gateway) {
            (Some(subnet), Some(gateway)) => Ok((subnet, gateway)),
            _ => Err(LabError::Setup(format!(
                "no lease of {host} in {network}: {leases}"
            ))),
        }
    }

    pub fn attach(&self, network: &str, host: usize, ns: &str) -> Result<Ipv4Addr> {
        let out = self.ctl_ok(&[
            "endpoint",
            "attach",
            network,
            "--host",
            &self.hosts[host].name,
            "--netns",
            ns,
        ])?;
        // "IP" or, on a dual-stack network, "IP IP6": the IPv4 address comes first.
        out.split_whitespace()
            .next()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| LabError::Setup(format!("attach printed {out:?}")))
    }

    /// One ICMP echo from namespace `ns` to `ip` (1 s timeout), sent by the agent's own prober
    /// (see [`netns::echo`]), so the lab needs no `ping` binary.
    pub fn ping(&self, ns: &str, ip: Ipv4Addr) -> bool {
        netns::echo(ns, ip, 1, Duration::from_secs(1)).is_ok_and(|s| s.received == 1)
    }

    /// Polls `cond` every 100 ms until it holds or `within` passes; returns how long it took.
    pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if cond() {
                return Some(start.elapsed());
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command in host `host`'s namespace and returns stdout (fails on error).
    pub fn on_host(&self, host: usize, program: &str, args: &[&str]) -> Result<String> {
        exec(&self.hosts[host].ns, program, args).map(|o| stdout(&o))
    }

    /// Gives host `host` another NIC `name` on the underlay bridge (no address): a parent for
    /// macvlan modes that want a NIC of their own (passthru takes the whole device).
    pub fn add_nic(&mut self, host: usize, name: &str) -> Result<()> {
        let outer = format!("{}{name}", self.hosts[host].name);
        netns::wire(&self.hosts[host].ns, name, &self.ul, &outer, "br0")
    }

    /// A plain machine on the underlay LAN: namespace `<prefix>-<name>` with `eth0` on the
    /// underlay bridge and a static `address` (CIDR), optionally on an 802.1Q VLAN
    /// (`eth0.<vid>`). Returns the namespace.
    pub fn add_lan_host(&mut self, name: &str, address: &str, vlan: Option<u16>) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.namespaces.add(&ns)?;
        netns::wire(&ns, "eth0", &self.ul, name, "br0")?;
        match vlan {
            None => {
                exec(&ns, "ip", &["addr", "add", address, "dev", "eth0"])?;
            }
            Some(vid) => {
                let dev = format!("eth0.{vid}");
                exec(
                    &ns,
                    "ip",
                    &[
                        "link",
                        "add",
                        "link",
                        "eth0",
                        "name",
                        &dev,
                        "type",
                        "vlan",
                        "id",
                        &vid.to_string(),
                    ],
                )?;
                exec(&ns, "ip", &["addr", "add", address, "dev", &dev])?;
                exec(&ns, "ip", &["link", "set", &dev, "up"])?;
            }
        }
        Ok(ns)
    }

    /// An "internet" behind a router: `<prefix>-rt` (192.0.2.1 on the underlay, 203.0.113.1)
    /// and `<prefix>-inet` (203.0.113.10, default route via the router). The router knows only
    /// the underlay and the internet prefix, so traffic from overlay addresses can only come
    /// back if a host masqueraded it. Every host gets a default route via 192.0.2.1.
    /// Returns (router namespace, internet namespace).
    pub fn add_internet(&mut self) -> Result<(String, String)> {
        let rt = format!("{}-rt", self.prefix);
        let inet = format!("{}-inet", self.prefix);
        self.namespaces.add(&rt)?;
        self.namespaces.add(&inet)?;
        netns::wire(&rt, "eth0", &self.ul, "rt", "br0")?;
        exec(
            &rt,
            "ip",
            &["addr", "add", &format!("{UNDERLAY_NET}.1/24"), "dev", "eth0"],
        )?;
        exec(
            &rt,
            "ip",
            &[
                "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &inet,
            ],
        )?;
        exec(&rt, "ip", &["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
        exec(&rt, "ip", &["link", "set", "wan0", "up"])?;
        exec(&rt, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        exec(&inet, "ip", &["addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
        exec(&inet, "ip", &["link", "set", "eth0", "up"])?;
        exec(&inet, "ip", &["route", "add", "default", "via", "203.0.113.1"])?;
        for h in &self.hosts {
            exec(
                &h.ns,
                "ip",
                &["route", "replace", "default", "via", &format!("{UNDERLAY_NET}.1")],
            )?;
        }
        Ok((rt, inet))
    }

    /// A tcpdump in `ns` on `iface` for `filter` (line-buffered, numeric, with link-level
    /// headers), returned once it says it is listening so no packet sent after is missed.
    pub fn tcpdump(&self, ns: &str, iface: &str, filter: &str, name: &str) -> Result<Daemon> {
        let mut args = vec!["-l", "-nn", "-e", "-i", iface];
        args.extend(filter.split_whitespace());
        let d = self.spawn_in(ns, "tcpdump", &args, name)?;
        let ready = Self::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(d.log_path()).is_ok_and(|t| t.contains("listening on"))
        });
        match ready {
            Some(_) => Ok(d),
            None => Err(LabError::Timeout(format!(
                "tcpdump {name} did not start: {}",
                d.log_tail(5)
            ))),
        }
    }

    /// Starts `program args` in namespace `ns` as a background process owned by the caller.
    pub fn spawn_in(&self, ns: &str, program: &str, args: &[&str], name: &str) -> Result<Daemon> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        Daemon::spawn(name, cmd, &self.dir.path().join(format!("{name}.log")))
    }

    /// Interface index of `ifname` on host `host` (from `ip -j link`).
    /// `GET http://ADDR/metrics` from the underlay namespace; the body.
    pub fn scrape(&self, addr: &str) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = addr.to_string();
        netns::block_on_in(&self.ul, move || async move {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(crate::io(format!("connect {addr}")))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: overlay\r\n\r\n")
                .await
                .map_err(crate::io("metrics request"))?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .map_err(crate::io("metrics response"))?;
            if !(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")) {
                return Err(LabError::Setup(format!("GET {addr}/metrics: {out}")));
            }
            Ok(out
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default())
        })?
    }

    pub fn ifindex(&self, host: usize, ifname: &str) -> Result<u64> {
        let text = self.on_host(host, "ip", &["-j", "link", "show", ifname])?;
        let v: Value = serde_json::from_str(&text).map_err(|e| LabError::Setup(e.to_string()))?;
        v[0]["ifindex"]
            .as_u64()
            .ok_or_else(|| LabError::Setup(format!("no ifindex for {ifname}")))
    }

    /// Agent log tails, for a failure report (the controller cluster reports its own).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            out.push_str(&format!(
                "\n--- agent {} ({})\n{}",
                h.name,
                h.log.display(),
                crate::process::tail(&h.log, 60)
            ));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for h in &mut self.hosts {
            if let Some(a) = h.agent.take() {
                a.kill();
            }
        }
    }
}

/// A ping running in the background from a workload, for "no loss while X happens" checks.
/// The value of the first Prometheus sample whose name and labels start with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub struct PingFlow {
    child: std::process::Child,
}

/// Result of a finished [`PingFlow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }
}

impl PingFlow {
    /// Pings `ip` from `ns` every `interval_ms` for `duration`.
    pub fn start(ns: &str, ip: Ipv4Addr, interval_ms: u32, duration: Duration) -> Result<Self> {
        let interval = format!("{:.3}", interval_ms as f64 / 1000.0);
        let count = (duration.as_millis() as u32 / interval_ms.max(1))
            .max(1)
            .to_string();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ping",
                "-n",
                "-q",
                "-i",
                &interval,
                "-c",
                &count,
                "-W",
                "1",
                &ip.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(crate::io("spawn ping"))?;
        Ok(Self { child })
    }

    /// Ends the flow now (SIGINT: ping prints its summary) and parses it.
    pub fn stop(self) -> Result<PingStats> {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        self.wait()
    }

    /// Waits for the flow to end and parses `N packets transmitted, M received`.
    pub fn wait(self) -> Result<PingStats> {
        let out = self
            .child
            .wait_with_output()
            .map_err(crate::io("wait for ping"))?;
        let text = stdout(&out);
        parse_ping(&text).ok_or_else(|| LabError::Setup(format!("unexpected ping output: {text}")))
    }
}

fn parse_ping(text: &str) -> Option<PingStats> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(',')
        .map(|part| part.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()));
    Some(PingStats {
        sent: nums.next()??,
        received: nums.next()??,
    })
}

/// Gives `dev` in `ns` the underlay address numbered `n`: `192.0.2.<n>/24`, or on an IPv6
/// underlay `2001:db8::<n>/64` (decimal digits, as the IPv4 one reads) without duplicate
/// address detection, so it is usable at once.
fn add_underlay_address(ns: &str, dev: &str, n: u16, ipv6: bool) -> Result<std::net::IpAddr> {
    let bad = |_| LabError::Setup(format!("bad underlay address number {n}"));
    if ipv6 {
        let ip: Ipv6Addr = format!("{UNDERLAY_NET6}{n}").parse().map_err(bad)?;
        exec(
            ns,
            "ip",
            &["-6", "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"],
        )?;
        Ok(ip.into())
    } else {
        let ip: Ipv4Addr = format!("{UNDERLAY_NET}.{n}").parse().map_err(bad)?;
        exec(ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", dev])?;
        Ok(ip.into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ping_summary() {
        let text = "--- 10.1.1.2 ping statistics ---\n100 packets transmitted, 98 received, 2% packet loss, time 5012ms\n";
        let s = super::parse_ping(text).unwrap();
        assert_eq!((s.sent, s.received, s.lost()), (100, 98, 2));
    }
}
