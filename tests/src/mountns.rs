//! A mount namespace of its own for a simulated host (DESIGN.md, "Real clients in the lab"):
//! container engines keep sockets, locks and state under /run, /var/lib/cni,
//! /var/lib/containers and /dev/shm, so each host gets fresh tmpfs mounts there and its
//! engine, its agent and their plugins all run inside it. Propagation is slave, so other labs'
//! `ip netns del` (a mount event in the root namespace) still reaches it.
//!
//! A holder process (`sleep`) keeps the namespace alive; commands enter it with `nsenter -t
//! <holder> -m` together with the host's network namespace. Dropping the holder kills it, and
//! with the last process inside gone, the namespace and its mounts go too.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::process::Daemon;
use crate::{LabError, Result};

/// Directories that get a fresh tmpfs inside.
pub const PRIVATE_DIRS: &[&str] = &[
    "/run",
    "/dev/shm",
    "/var/lib/cni",
    "/var/lib/containers",
    "/var/lib/docker",
];

pub struct MountNs {
    holder: Daemon,
    /// The host's network namespace (a name under /run/netns of the root mount namespace).
    netns: String,
}

impl MountNs {
    pub fn new(netns: &str, log: &Path) -> Result<Self> {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "slave", "sleep", "infinity"]);
        let holder = Daemon::spawn(&format!("mountns-{netns}"), cmd, log)?;
        let ns = Self {
            holder,
            netns: netns.to_string(),
        };
        // `unshare` execs `sleep` once the namespace exists: wait until the pid's mount
        // namespace differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{}/ns/mnt", ns.holder.pid())).ok() == ours {
            if Instant::now() > deadline {
                return Err(LabError::Timeout("mount namespace holder did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mounts: Vec<String> = PRIVATE_DIRS
            .iter()
            .map(|d| format!("mkdir -p {d} && mount -t tmpfs -o mode=755 tmpfs {d}"))
            .collect();
        let script = format!("set -e; {}; mkdir -p /run/netns", mounts.join("; "));
        let out = ns
            .command("sh", &["-c", &script])
            .output()
            .map_err(crate::io("mount tmpfs"))?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "mount namespace setup: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(ns)
    }

    /// A command that runs in this mount namespace and the host's network namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.pid().to_string())
            .arg("-m")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program)
            .args(args);
        crate::plaintext::insecure_unless_tls(&mut cmd);
        cmd
    }

    /// Runs `program args` inside; the output whatever the status.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program, args)
            .output()
            .map_err(crate::io(format!("nsenter {program}")))
    }

    pub fn holder_pid(&self) -> u32 {
        self.holder.pid()
    }
}
