//! Network namespaces for the lab, built with iproute2 (test tooling only; the product speaks
//! netlink itself). Every namespace made here is owned by a [`Namespaces`] guard that deletes
//! it on drop, also when a test panics.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{LabError, Result};

/// Runs a command and fails with its stderr unless it succeeds (plaintext unless it carries
/// TLS settings, [`crate::plaintext`]).
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    crate::plaintext::insecure_unless_tls(&mut cmd);
    let out = cmd
        .output()
        .map_err(crate::io(format!("{program} {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// `ip <args>` in the root namespace (only ever used to manage namespaces and veth pairs
/// whose both ends go into lab namespaces).
pub fn ip(args: &[&str]) -> Result<Output> {
    run("ip", args)
}

/// Runs `program args` inside namespace `ns`, failing on a non-zero exit.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `program args` inside `ns` and returns the output whatever the exit status.
pub fn exec_any(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    crate::plaintext::insecure_unless_tls(&mut cmd);
    cmd.output()
        .map_err(crate::io(format!("ip netns exec {ns} {program}")))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A prefix unique to this process and call, short enough for names like `<prefix>-h1w2`.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

/// The namespaces one lab owns; deleted, in reverse order, on drop.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn add(&mut self, name: &str) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::Setup(
                "the lab needs root: it creates network namespaces".into(),
            ));
        }
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        exec(name, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Whether the lab made namespace `name` (and still owns it).
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Deletes one namespace now (a workload that goes away).
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.names.retain(|n| n != name);
        ip(&["netns", "del", name]).map(|_| ())
    }

    /// `ip netns attach name pid`: a name under /run/netns for the namespace of `pid` (a bind
    /// mount of it, deleted on drop like the others).
    pub fn attach(&mut self, name: &str, pid: u32) -> Result<()> {
        ip(&["netns", "attach", name, &pid.to_string()])?;
        self.names.push(name.to_string());
        Ok(())
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Connects namespace `ns` to the bridge `bridge` of namespace `hub` with a veth pair:
/// `inner` inside `ns`, `outer` inside `hub`. Both ends are created directly in their target
/// namespaces, so nothing ever exists in the root namespace.
pub fn wire(ns: &str, inner: &str, hub: &str, outer: &str, bridge: &str) -> Result<()> {
    exec(
        hub,
        "ip",
        &[
            "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ],
    )?;
    exec(hub, "ip", &["link", "set", outer, "master", bridge, "up"])?;
    exec(ns, "ip", &["link", "set", inner, "up"])?;
    Ok(())
}

/// Runs `work` on a fresh thread that entered namespace `ns`, with its own tokio runtime: every
/// socket it opens (gRPC clients included) lives in that namespace. For test and benchmark
/// drivers that must talk to processes on a lab's underlay.
pub fn block_on_in<F, Fut, T>(ns: &str, work: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(crate::io(format!("open {path}")))?;
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::Setup(format!("setns {path}: {e}")))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(crate::io("runtime"))?;
            Ok(rt.block_on(work()))
        })
        .map_err(crate::io("spawn"))?
        .join()
        .map_err(|_| LabError::Setup("namespace worker panicked".into()))?
}

/// Runs the blocking `work` on a fresh thread that entered namespace `ns` (no runtime): for
/// raw-socket checks such as [`echo`].
pub fn blocking_in<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(crate::io(format!("open {path}")))?;
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::Setup(format!("setns {path}: {e}")))?;
            Ok(work())
        })
        .map_err(crate::io("spawn"))?
        .join()
        .map_err(|_| LabError::Setup("namespace worker panicked".into()))?
}

/// `count` ICMP echoes (56 bytes, as `ping` sends) from namespace `ns` to `ip`, each waiting up
/// to `timeout`, with the agent's own raw-socket prober: no `ping` binary needed.
pub fn echo(
    ns: &str,
    ip: std::net::Ipv4Addr,
    count: u32,
    timeout: std::time::Duration,
) -> Result<overlay_agent::probe::EchoStats> {
    blocking_in(ns, move || {
        overlay_agent::probe::echo(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            ip.into(),
            56,
            count,
            timeout,
        )
    })?
    .map_err(crate::io(format!("ICMP echo from {ns} to {ip}")))
}

/// Runs `cmd` to completion from a thread that entered namespace `ns`, so the child starts in
/// that namespace without `ip netns exec` (whose mount-namespace setup costs milliseconds):
/// for benchmarks that time the command itself. `stdin` is written to the child's stdin.
pub fn run_in(ns: &str, mut cmd: std::process::Command, stdin: Vec<u8>) -> Result<Output> {
    use std::io::Write;
    crate::plaintext::insecure_unless_tls(&mut cmd);
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(crate::io(format!("open {path}")))?;
    let what = format!("{cmd:?}");
    std::thread::Builder::new()
        .name(format!("run-{ns}"))
        .spawn(move || -> Result<Output> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::Setup(format!("setns {path}: {e}")))?;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(crate::io(format!("spawn {what}")))?;
            if let Some(mut input) = child.stdin.take() {
                input
                    .write_all(&stdin)
                    .map_err(crate::io(format!("stdin of {what}")))?;
            }
            child
                .wait_with_output()
                .map_err(crate::io(format!("wait for {what}")))
        })
        .map_err(crate::io("spawn"))?
        .join()
        .map_err(|_| LabError::Setup("namespace worker panicked".into()))?
}
