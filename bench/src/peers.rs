//! The peers the benchmarks compare against, installed from Debian's packages when missing.

use std::path::Path;
use std::process::Command;

/// (a file the package provides, the package)
const NEEDED: &[(&str, &str)] = &[
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/bin/ping", "iputils-ping"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/podman/netavark", "netavark"),
];

/// Installs every missing peer with apt-get (one update, one install).
pub fn ensure() -> anyhow::Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing the peers: {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        anyhow::ensure!(status.success(), "apt-get {} failed", args.join(" "));
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt(&install)
}
