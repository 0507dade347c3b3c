//! Plaintext only when asked for (issue 14, item 2; DESIGN.md "Security defaults"): each of
//! overlay-controller, overlay-agent and overlayctl refuses to start (or to connect) without
//! TLS options and without `--insecure`, in one line naming both ways out, exit 1, having
//! written, bound and programmed nothing; `--insecure` together with TLS options is refused as
//! contradictory; `--insecure` (or `OVERLAY_INSECURE=true`) runs; a plaintext client of a TLS
//! server is told what it lacks. Each test prints what it tried and what came back.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::controllers::{ControllerCluster, client, free_port};
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::pki::Pki;
use overlay_lab::plaintext::without_transport_choice;
use overlay_lab::process::Daemon;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;

const REFUSAL: &str = "refusing to run without TLS: pass --tls-ca, --tls-cert and --tls-key (make \
                       them with `overlayctl certs`), or --insecure on a trusted lab network";

/// `bin` with no TLS or plaintext setting from the environment.
fn bare(bin: &str) -> Command {
    let mut cmd = Command::new(bins::bin(bin).expect("binary built"));
    without_transport_choice(&mut cmd);
    cmd
}

/// Runs `cmd` and returns its output; a process still running after 20 s did not refuse to
/// start: it is killed and the test fails.
fn exits(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} still runs after 20 s instead of refusing:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Exit 1 and exactly one stderr line, `<component>: ...` containing `needle`; returns it.
fn refused(out: &Output, component: &str, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(out.status.code(), Some(1), "{component}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{component}: not one line: {stderr}");
    assert!(stderr.starts_with(&format!("{component}: ")), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{component}: {needle:?} not in {stderr:?}"
    );
    stderr
}

fn nonexistent_tls() -> Vec<String> {
    ["--tls-ca", "--tls-cert", "--tls-key"]
        .into_iter()
        .flat_map(|o| [o.to_string(), format!("/nonexistent/{}.pem", &o[6..])])
        .collect()
}

fn controller(dir: &Path, port: u16) -> Command {
    let mut cmd = bare("overlay-controller");
    cmd.args(["--node-id", "1", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir);
    cmd
}

/// Nobody has connected to `listener` (it is non-blocking).
fn never_dialled(listener: &TcpListener) -> bool {
    matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn controller_refuses_plaintext_unless_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port().expect("port");

    let line = refused(&exits(controller(&data, port)), "overlay-controller", REFUSAL);
    assert_eq!(line, format!("overlay-controller: {REFUSAL}"));
    println!("refused  no TLS, no --insecure: {line}");
    let mut off = controller(&data, port);
    off.env("OVERLAY_INSECURE", "false");
    let line = refused(&exits(off), "overlay-controller", REFUSAL);
    println!("refused  OVERLAY_INSECURE=false: {line}");

    // --insecure with TLS options, from the command line or the environment: contradictory.
    let mut both = controller(&data, port);
    both.arg("--insecure").args(nonexistent_tls());
    let line = refused(&exits(both), "overlay-controller", "contradicts --tls-ca");
    println!("refused  --insecure with --tls-*: {line}");
    let mut both_env = controller(&data, port);
    both_env
        .env("OVERLAY_INSECURE", "true")
        .env("OVERLAY_TLS_CERT", "/nonexistent/cert.pem");
    let line = refused(&exits(both_env), "overlay-controller", "contradicts --tls-cert");
    println!("refused  OVERLAY_INSECURE=true with OVERLAY_TLS_CERT: {line}");

    // A value that is not a yes or a no is not taken for either.
    for value in ["maybe", ""] {
        let mut odd = controller(&data, port);
        odd.env("OVERLAY_INSECURE", value);
        let out = exits(odd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "OVERLAY_INSECURE={value:?} ran");
        assert!(stderr.contains("--insecure"), "{stderr}");
        println!(
            "refused  OVERLAY_INSECURE={value:?}: {}",
            stderr.lines().next().unwrap_or_default()
        );
    }

    // Nothing written, nothing bound: the data dir was never made, the port is free.
    assert!(!data.exists(), "a refused controller created {}", data.display());
    TcpListener::bind(("127.0.0.1", port)).expect("the refused controller's port is free");
    println!("refused controllers left no data dir and no listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_runs_insecure_when_asked_by_flag_or_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    for way in ["--insecure", "OVERLAY_INSECURE=true"] {
        let data = dir.path().join(way.replace(['-', '='], ""));
        let port = free_port().expect("port");
        let mut cmd = controller(&data, port);
        match way {
            "--insecure" => cmd.arg("--insecure"),
            _ => cmd.env("OVERLAY_INSECURE", "true"),
        };
        let log = dir.path().join(format!("{}.log", way.replace(['-', '='], "")));
        let daemon = Daemon::spawn("controller", cmd, &log).expect("spawn");
        let c = client(&[format!("127.0.0.1:{port}")]).expect("client");
        let started = Instant::now();
        let leader = loop {
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
                break s.get_ref().leader_id;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{way}: no leader\n{}",
                daemon.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(data.exists());
        let text = std::fs::read_to_string(&log).expect("log");
        let warning = text
            .lines()
            .find(|l| l.contains("WARN") && l.contains("running insecure"))
            .unwrap_or_else(|| panic!("{way}: no warning at start:\n{text}"));
        println!(
            "{way}: leader {leader} after {:?}; logged: {}",
            started.elapsed(),
            warning.split("WARN").nth(1).unwrap_or(warning).trim()
        );
        daemon.stop(Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlayctl_refuses_to_connect_without_tls_or_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = |args: &[&str]| {
        let mut cmd = bare("overlayctl");
        cmd.args(args);
        exits(cmd)
    };

    // Local commands need neither: making certificates must not need the certificates.
    let pki_dir = dir.path().join("pki").display().to_string();
    for args in [
        vec!["certs", "ca", "--dir", &pki_dir],
        vec![
            "certs", "issue", "--dir", &pki_dir, "--role", "admin", "--name", "alice",
        ],
    ] {
        let out = ctl(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    let admin = pki.issue("admin", "alice", &[]).expect("admin files");
    let show = ctl(&["certs", "show", &admin.cert.display().to_string()]);
    assert!(show.status.success());
    println!("overlayctl certs ca/issue/show ran without TLS options and without --insecure");

    // Without either, overlayctl does not even dial: the listener sees no connection.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let out = ctl(&["--controller", &addr, "network", "ls"]);
    let line = refused(
        &out,
        "overlayctl",
        "refusing to connect without TLS: pass --tls-ca, --tls-cert and --tls-key",
    );
    assert!(line.contains("or --insecure"), "{line}");
    let mut off = bare("overlayctl");
    off.args(["--controller", &addr, "network", "ls"])
        .env("OVERLAY_INSECURE", "no");
    refused(&exits(off), "overlayctl", "refusing to connect without TLS");
    let mut contradictory = vec!["--controller", &addr, "--insecure"];
    let admin_args = admin.args();
    contradictory.extend(admin_args.iter().map(String::as_str));
    contradictory.extend(["network", "ls"]);
    let both = refused(&ctl(&contradictory), "overlayctl", "contradicts --tls-ca");
    assert!(never_dialled(&listener), "a refused overlayctl connected");
    println!("refused  overlayctl without TLS or --insecure: {line}");
    println!("refused  overlayctl --insecure with --tls-*: {both}");
    drop(listener);

    // A plaintext controller serves --insecure (flag or environment).
    let cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster
        .wait_leader(1, Duration::from_secs(30))
        .await
        .expect("leader");
    let plain_addr = cluster.addr(1);
    let out = ctl(&["--controller", &plain_addr, "--insecure", "network", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut by_env = bare("overlayctl");
    by_env
        .args(["--controller", &plain_addr, "network", "ls"])
        .env("OVERLAY_INSECURE", "true");
    let out = exits(by_env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A TLS overlayctl does not fall back to plaintext against it.
    let mut tls_to_plain = vec!["--controller", plain_addr.as_str()];
    tls_to_plain.extend(admin_args.iter().map(String::as_str));
    tls_to_plain.extend(["network", "ls"]);
    let line = refused(&ctl(&tls_to_plain), "overlayctl", "no controller reachable");
    println!("refused  overlayctl with certificates against a plaintext controller: {line}");

    // A TLS controller (the default) tells an --insecure overlayctl what it lacks.
    let addrs = vec![(format!("127.0.0.1:{}", free_port().expect("port")), None)];
    std::fs::create_dir_all(dir.path().join("secure")).expect("dir");
    let mut secure = ControllerCluster::new(addrs, &dir.path().join("secure")).expect("cluster");
    let files = pki
        .issue("controller", "c1", &["127.0.0.1"])
        .expect("controller cert");
    secure.set_replica_tls(1, &files).expect("tls");
    secure.set_client_tls(Some(admin.load().expect("admin").client_config()));
    secure.start_all().expect("start");
    secure
        .wait_leader(1, Duration::from_secs(30))
        .await
        .expect("TLS leader");
    let tls_addr = secure.addr(1);
    let line = refused(
        &ctl(&["--controller", &tls_addr, "--insecure", "network", "ls"]),
        "overlayctl",
        "give --tls-ca, --tls-cert and --tls-key",
    );
    println!("refused  overlayctl --insecure against a TLS controller: {line}");
    let mut ok = vec!["--controller", tls_addr.as_str()];
    ok.extend(admin_args.iter().map(String::as_str));
    ok.extend(["network", "ls"]);
    assert!(ctl(&ok).status.success(), "the admin certificate was refused");
}

fn agent_in(lab: &Lab, host: usize, state: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.hosts[host].ns])
        .arg(bins::bin("overlay-agent").expect("agent"))
        .args(["--controller", &lab.controller_list()])
        .args(["--host-name", &lab.hosts[host].name])
        .args(["--underlay-iface", "eth0"])
        .arg("--state-dir")
        .arg(state)
        // Its own socket: the default /run/overlay/agent.sock is shared by every test at once.
        .arg("--local-socket")
        .arg(state.with_extension("sock"));
    without_transport_choice(&mut cmd);
    cmd
}

/// What an agent may have left in its host's kernel: links beyond lo and eth0, nft tables.
fn kernel_footprint(lab: &Lab, host: usize) -> (Vec<String>, String) {
    let links = lab.on_host(host, "ip", &["-o", "link", "show"]).expect("ip link");
    let links = links
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| n != "lo" && !n.starts_with("eth0"))
        .collect();
    let tables = lab.on_host(host, "nft", &["list", "tables"]).expect("nft");
    (links, tables.trim().to_string())
}

#[test]
fn agent_refuses_plaintext_unless_asked() {
    // A TLS lab: the controller runs the default, so a plaintext agent also meets a TLS server.
    let mut lab = Lab::start_secure(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "plt",
        resync_secs: 10,
    })
    .expect("lab");
    let state = lab.dir().join("refused-agent");
    let line = refused(&exits(agent_in(&lab, 0, &state)), "overlay-agent", REFUSAL);
    println!("refused  agent without TLS or --insecure: {line}");
    let mut both = agent_in(&lab, 0, &state);
    both.arg("--insecure").args(nonexistent_tls());
    let line = refused(&exits(both), "overlay-agent", "contradicts --tls-ca");
    println!("refused  agent --insecure with --tls-*: {line}");
    assert!(!state.exists(), "a refused agent created {}", state.display());
    let (links, tables) = kernel_footprint(&lab, 0);
    assert!(
        links.is_empty() && tables.is_empty(),
        "refused agents left {links:?} {tables:?}"
    );
    println!("refused agents left no state dir, no links and no nft table on h1");

    // An --insecure agent against the TLS controller: it runs, is told what it lacks and is
    // not registered.
    let mut cmd = agent_in(&lab, 0, &state);
    cmd.arg("--insecure");
    let log = lab.dir().join("insecure-agent.log");
    let agent = Daemon::spawn("insecure-agent", cmd, &log).expect("spawn");
    let told = Lab::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("give --tls-ca"))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(told.is_some(), "the agent was not told what it lacks:\n{text}");
    let hosts = lab.ctl_json(&["host", "ls"]).expect("host ls");
    assert_eq!(hosts.as_array().map(Vec::len), Some(0), "{hosts}");
    let hint = text
        .lines()
        .find(|l| l.contains("give --tls-ca"))
        .unwrap_or_default();
    println!(
        "refused  --insecure agent against the TLS controller, logged: {}",
        hint.split("WARN").nth(1).unwrap_or(hint).trim()
    );
    agent.stop(Duration::from_secs(5));

    // With its certificate the same host joins (the lab's own start).
    lab.start_agent(1).expect("agent h2");
    let up = Lab::wait_until(Duration::from_secs(30), || {
        lab.ctl_json(&["host", "ls"])
            .is_ok_and(|v| v.as_array().is_some_and(|a| a.iter().any(|h| h["state"] == "up")))
    });
    assert!(
        up.is_some(),
        "h2 with its certificate did not register\n{}",
        lab.logs()
    );
}

#[test]
fn agent_runs_insecure_when_asked() {
    let lab = Lab::start(LabConfig {
        hosts: 1,
        controllers: 1,
        tag: "pli",
        resync_secs: 10,
    })
    .expect("lab");
    let state = lab.dir().join("agent-flag");
    let mut cmd = agent_in(&lab, 0, &state);
    cmd.arg("--insecure");
    let log = lab.dir().join("agent-flag.log");
    let agent = Daemon::spawn("agent-flag", cmd, &log).expect("spawn");
    let took = lab
        .wait_hosts_up(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(20)));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("running insecure"), "no warning at start:\n{text}");
    println!("agent --insecure registered and up after {took:?}, with a warning at start");
}
