//! Real podman (Debian's 4.3, CNI backend) on a simulated host, as DESIGN.md's recipe says:
//! inside the host's own mount namespace ([`MountNs`]), with its own root, runroot, CNI
//! configuration directory and plugin directory, cgroupfs, file events, and rlimits this
//! machine can grant (it lacks CAP_SYS_RESOURCE, so podman's defaults make runc fail).
//! Images come from a busybox-static rootfs, imported (no registry).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::mountns::MountNs;
use crate::{LabError, Result};

/// The image every container runs: busybox-static as /bin/busybox, with its applets linked.
pub const IMAGE: &str = "localhost/overlay-busybox:latest";

pub struct Podman {
    conf: PathBuf,
    pub net_dir: PathBuf,
}

/// Makes `dir/busybox.tar`: a rootfs with a static busybox and the applets the tests use.
pub fn busybox_tar(dir: &Path) -> Result<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Setup("busybox not found: apt-get install busybox-static".into()))?;
    let root = dir.join("busybox-rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(crate::io("mkdir rootfs"))?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(crate::io("copy busybox"))?;
    for applet in [
        "sh", "sleep", "ip", "ping", "nslookup", "cat", "ls", "httpd", "nc", "ifconfig", "route", "hostname",
        "wget",
    ] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(crate::io("link applet"))?;
        }
    }
    let tar = dir.join("busybox.tar");
    crate::netns::run(
        "tar",
        &[
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
    )?;
    Ok(tar)
}

impl Podman {
    /// A podman for the host behind `mount_ns`, keeping its state under `dir`; CNI plugins are
    /// looked up in `plugin_dir`.
    pub fn new(mount_ns: &MountNs, dir: &Path, plugin_dir: &Path) -> Result<Self> {
        let net_dir = dir.join("cni-net.d");
        std::fs::create_dir_all(&net_dir).map_err(crate::io("mkdir cni-net.d"))?;
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
                plugin_dir.display(),
                net_dir.display()
            ),
        )
        .map_err(crate::io("write containers.conf"))?;
        let podman = Self { conf, net_dir };
        let tar = busybox_tar(dir)?;
        let out = podman.run(mount_ns, &["import", &tar.display().to_string(), IMAGE])?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "podman import: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(podman)
    }

    /// Writes `<name>.conflist` into podman's CNI configuration directory.
    pub fn add_network(&self, name: &str, conflist: &serde_json::Value) -> Result<()> {
        std::fs::write(
            self.net_dir.join(format!("{name}.conflist")),
            conflist.to_string(),
        )
        .map_err(crate::io("write conflist"))
    }

    /// `podman <args>` on this host; the output whatever the status.
    pub fn run(&self, mount_ns: &MountNs, args: &[&str]) -> Result<Output> {
        // Podman's own places, each a tmpfs private to this host's mount namespace (podman
        // refuses a runroot longer than 50 characters, so not under the lab's directory).
        let mut all: Vec<&str> = vec![
            "--root",
            "/var/lib/containers/storage",
            "--runroot",
            "/run/containers/storage",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ];
        if crun_refuses_this_cgroup_layout() {
            all.extend(["--runtime", "runc"]);
        }
        all.extend_from_slice(args);
        let mut cmd = mount_ns.command("podman", &all);
        cmd.env("CONTAINERS_CONF", &self.conf);
        cmd.output().map_err(crate::io("podman"))
    }

    /// `podman run -d --network NET ... IMAGE CMD...` with the rlimits this machine allows.
    pub fn run_container(
        &self,
        mount_ns: &MountNs,
        name: &str,
        extra: &[&str],
        command: &[&str],
    ) -> Result<Output> {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.run(mount_ns, &args)
    }

    /// Removes every container (at once, no grace), so nothing outlives the lab.
    pub fn remove_all(&self, mount_ns: &MountNs) {
        let _ = self.run(mount_ns, &["rm", "-a", "-f", "-t", "0"]);
    }
}

/// Whether this machine mounts cgroups in hybrid mode (v1 controllers, plus a cgroup2
/// hierarchy at /sys/fs/cgroup/unified that holds a controller): crun, podman's default
/// runtime on Debian, refuses to start containers there ("cgroups in hybrid mode not
/// supported"), runc runs them. Seen on some of the VMs this project's CI runs on.
fn crun_refuses_this_cgroup_layout() -> bool {
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers");
    controllers.is_ok_and(|c| !c.trim().is_empty()) && std::path::Path::new("/usr/sbin/runc").exists()
}
