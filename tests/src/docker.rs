//! Real dockerd (Debian's docker.io) on a simulated host, as DESIGN.md's recipe says: inside
//! the host's own mount namespace ([`MountNs`], whose /run and /var/lib/docker are private
//! tmpfs), with no bridge, no iptables and no forwarding of its own, the vfs storage driver,
//! and the agent's plugin socket under that namespace's /run/docker/plugins. Images come from
//! a busybox-static rootfs, imported (no registry).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::mountns::MountNs;
use crate::process::Daemon;
use crate::{LabError, Result};

/// The image every container runs: busybox-static with its applets linked.
pub const IMAGE: &str = "overlay-busybox:latest";

/// Gives each of the lab's hosts its own mount namespace and starts its agent there serving
/// the Docker plugin socket (DESIGN.md's recipe), then waits until every host is up.
pub fn start_plugin_hosts(lab: &mut crate::lab::Lab) -> Result<()> {
    for h in 0..lab.hosts.len() {
        lab.give_mount_namespace(h)?;
        lab.start_agent_with_env(h, &[("OVERLAY_DOCKER_PLUGIN", "true")])?;
    }
    lab.wait_hosts_up(Duration::from_secs(30)).map(|_| ())
}
/// dockerd's API socket inside the host's mount namespace.
const SOCKET: &str = "unix:///run/docker.sock";

pub struct Dockerd {
    daemon: Option<Daemon>,
    name: String,
    log: std::path::PathBuf,
    /// Whether dockerd runs with `--live-restore` (the default here).
    live_restore: bool,
}

impl Dockerd {
    /// Starts dockerd inside `mount_ns` (logging to `dir/<name>.log`), waits until it answers,
    /// and imports the busybox image.
    pub fn start(mount_ns: &MountNs, dir: &Path, name: &str) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let mut d = Self {
            daemon: None,
            name: name.to_string(),
            log,
            live_restore: true,
        };
        d.launch(mount_ns)?;
        let tar = crate::podman::busybox_tar(dir)?;
        let out = d.docker(mount_ns, &["import", &tar.display().to_string(), IMAGE])?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "docker import: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(d)
    }

    fn launch(&mut self, mount_ns: &MountNs) -> Result<()> {
        let mut args = vec![
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
            "--data-root",
            "/var/lib/docker",
            "--exec-root",
            "/run/docker",
            "-H",
            SOCKET,
            "--pidfile",
            "/run/docker.pid",
            "--storage-driver",
            "vfs",
        ];
        if self.live_restore {
            // Containers keep running while dockerd restarts (what an operator upgrading
            // dockerd sets), so a restart shows whether the plugin's state survives it.
            args.push("--live-restore");
        }
        let cmd = mount_ns.command("dockerd", &args);
        self.daemon = Some(Daemon::spawn(&self.name, cmd, &self.log)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .docker(mount_ns, &["info", "--format", "{{.ServerVersion}}"])
                .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "dockerd {} did not answer within 60s: {}",
                    self.name,
                    self.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd (SIGTERM; with `--live-restore` its containers keep running) and starts
    /// it again.
    pub fn restart(&mut self, mount_ns: &MountNs) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(30));
        }
        self.launch(mount_ns)
    }

    /// Restarts dockerd without `--live-restore` from now on: on the way down it stops its
    /// containers, and on the way up it starts those with a restart policy anew.
    pub fn restart_without_live_restore(&mut self, mount_ns: &MountNs) -> Result<()> {
        self.live_restore = false;
        self.restart(mount_ns)
    }

    /// `docker <args>` against this dockerd; the output whatever the status.
    pub fn docker(&self, mount_ns: &MountNs, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-H", SOCKET];
        all.extend_from_slice(args);
        mount_ns
            .command("docker", &all)
            .output()
            .map_err(crate::io("docker"))
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Removes every container and network (so nothing outlives the lab), then stops dockerd.
    pub fn shut_down(&mut self, mount_ns: &MountNs) {
        if let Ok(out) = self.docker(mount_ns, &["ps", "-aq"]) {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(mount_ns, &args);
            }
        }
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(30));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
    }
}
