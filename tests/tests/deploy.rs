//! Issue #5: the systemd units pass `systemd-analyze verify`, and both daemons send READY at
//! the moment the units promise (controller: joined a cluster with a leader; agent: registered
//! and converged once), over a real notify socket.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::controllers::free_port;
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::process::Daemon;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A notify socket like systemd's: a datagram socket the daemon finds in $NOTIFY_SOCKET.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message within `within`, if any.
    fn recv(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        self.socket
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, bin, env) in [
        (
            "overlay-controller.service",
            "overlay-controller",
            "controller.env",
        ),
        ("overlay-agent.service", "overlay-agent", "agent.env"),
    ] {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(unit)).unwrap();
        // Same unit, pointed at this build's binary and this checkout's env file.
        let built = bins::bin(bin).unwrap();
        let text = text
            .replace(&format!("/usr/local/bin/{bin}"), built.to_str().unwrap())
            .replace(
                &format!("/etc/overlay/{env}"),
                repo_root().join("deploy/systemd").join(env).to_str().unwrap(),
            );
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("overlay-controller.service"))
        .arg(dir.path().join("overlay-agent.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("overlay-")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn controller_is_ready_only_once_it_has_joined_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = [
        format!("127.0.0.1:{}", free_port().unwrap()),
        format!("127.0.0.1:{}", free_port().unwrap()),
    ];
    let peers = format!("1={},2={}", addrs[0], addrs[1]);
    let notify = NotifySocket::new();
    let start = |id: usize, notify: Option<&Path>| {
        let mut cmd = Command::new(bins::bin("overlay-controller").unwrap());
        cmd.env("OVERLAY_NODE_ID", id.to_string())
            .env("OVERLAY_LISTEN", &addrs[id - 1])
            .env("OVERLAY_PEERS", &peers)
            .env("OVERLAY_DATA_DIR", dir.path().join(format!("c{id}")));
        if let Some(p) = notify {
            cmd.env("NOTIFY_SOCKET", p);
        }
        Daemon::spawn(
            &format!("controller-{id}"),
            cmd,
            &dir.path().join(format!("c{id}.log")),
        )
        .unwrap()
    };
    let _first = start(1, Some(&notify.path));
    // Alone, replica 1 of 2 has no quorum and no leader: not ready.
    assert_eq!(
        notify.recv(Duration::from_secs(4)),
        None,
        "READY before any leader existed"
    );
    let t = Instant::now();
    let _second = start(2, None);
    let msg = notify
        .recv(Duration::from_secs(20))
        .expect("READY once the cluster formed");
    println!(
        "controller READY {:?} after its peer started: {msg:?}",
        t.elapsed()
    );
    assert!(msg.starts_with("READY=1"), "{msg}");
    assert!(msg.contains("leader: node"), "{msg}");
}

#[test]
fn agent_is_ready_after_registering_and_converging() {
    let mut lab = Lab::start(LabConfig {
        hosts: 1,
        controllers: 1,
        tag: "sd",
        resync_secs: 30,
    })
    .unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    let notify = NotifySocket::new();
    lab.start_agent_with_env(0, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())])
        .unwrap();
    let msg = notify.recv(Duration::from_secs(20)).expect("agent READY");
    assert!(msg.starts_with("READY=1"), "{msg}");
    // At READY the host is registered and its datapath is in place.
    let host = lab.ctl_json(&["host", "inspect", "h1"]).unwrap();
    assert_eq!(host["state"], "up");
    let bridge = lab.on_host(0, "ip", &["-4", "addr", "show", "ovb-1"]).unwrap();
    assert!(
        bridge.contains("inet 10.1.0.1/24"),
        "READY before the bridge was programmed: {bridge}"
    );
    let vxlan = lab.on_host(0, "ip", &["-d", "link", "show", "ovx-1"]).unwrap();
    assert!(vxlan.contains("vxlan id 4096"), "{vxlan}");
    println!("agent READY message: {msg:?}");
}
