//! overlayctl end to end against a live 3-replica cluster: every command, both output formats,
//! and a one-line error with exit code 1 for each kind of bad input.

use std::process::{Command, Output};
use std::time::Duration;

use overlay_lab::controllers::ControllerCluster;
use serde_json::Value;

struct Ctl {
    controllers: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_overlayctl"));
        cmd.arg("--controller").arg(&self.controllers).args(args);
        overlay_lab::plaintext::insecure_unless_tls(&mut cmd);
        cmd.output().expect("run overlayctl")
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "overlayctl {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }

    /// Runs a command that must fail with exit 1 and one stderr line containing `needle`.
    fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "overlayctl {args:?} should exit 1; stderr: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line expected, got: {stderr}"
        );
        assert!(stderr.starts_with("overlayctl: "), "{stderr}");
        assert!(
            stderr.contains(needle),
            "overlayctl {args:?}: expected {needle:?} in {stderr:?}"
        );
        stderr
    }
}

async fn register(addrs: &[String], name: &str, ip: &str) {
    let c = overlay_lab::controllers::client(addrs).unwrap();
    overlay_lab::api::register(&c, name, ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_both_formats_and_every_error() {
    let cluster = ControllerCluster::start_loopback(3).expect("cluster");
    cluster
        .wait_leader(1, Duration::from_secs(20))
        .await
        .expect("leader");
    register(&cluster.addrs(), "h1", "192.0.2.21").await;
    register(&cluster.addrs(), "h2", "192.0.2.22").await;
    let ctl = Ctl {
        controllers: cluster.addrs().join(","),
    };

    // cluster status
    let table = ctl.ok(&["cluster", "status"]);
    assert!(
        table.contains("health: ok") && table.contains("leader"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        3,
        "{table}"
    );
    let status = ctl.json(&["cluster", "status"]);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_eq!(status["health"], "ok");
    assert!(status["leader"].as_u64().is_some());

    // network create, both formats
    let out = ctl.ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ]);
    assert_eq!(out.trim(), "created network blue (vxlan, 10.1.0.0/16, VNI 4096)");
    let red = ctl.json(&[
        "network",
        "create",
        "red",
        "--mode",
        "vxlan",
        "--subnet",
        "10.2.0.0/16",
        "--host-prefix",
        "26",
        "--mtu",
        "1400",
        "--nat-egress",
    ]);
    assert_eq!(
        (
            red["vni"].as_u64(),
            red["host_prefix"].as_u64(),
            red["mtu"].as_u64()
        ),
        (Some(4097), Some(26), Some(1400))
    );
    assert_eq!(red["nat_egress"], true);

    // network create: every refusal is one line, exit 1
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0/16",
        ],
        "malformed CIDR",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.1/16",
        ],
        "host bits are set",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.1.128.0/17",
        ],
        "overlaps network \"blue\"",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "blue",
            "--mode",
            "vxlan",
            "--subnet",
            "10.9.0.0/16",
        ],
        "already exists",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.0/16",
            "--vni",
            "4096",
        ],
        "VNI 4096 is already used",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.0/16",
            "--vni",
            "0",
        ],
        "invalid VNI",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.0/16",
            "--vni",
            "16777216",
        ],
        "invalid VNI",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.0/16",
            "--host-prefix",
            "16",
        ],
        "host prefix",
    );
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "vxlan",
            "--subnet",
            "10.3.0.0/16",
            "--parent",
            "eth0",
        ],
        "macvlan only",
    );
    ctl.fails(&["network", "create", "x", "--mode", "vxlan"], "--subnet");
    ctl.fails(
        &[
            "network",
            "create",
            "x",
            "--mode",
            "bogus",
            "--subnet",
            "10.3.0.0/16",
        ],
        "bogus",
    );

    // network update
    let out = ctl.ok(&[
        "network",
        "update",
        "red",
        "--nat-egress",
        "false",
        "--mtu",
        "1300",
    ]);
    assert_eq!(
        out.trim(),
        "updated network red (nat egress off, mtu 1300 (fixed))"
    );
    let red = ctl.json(&["network", "update", "red", "--mtu", "0"]);
    assert_eq!(
        (red["nat_egress"].as_bool(), red["mtu"].as_u64()),
        (Some(false), None)
    );
    ctl.fails(&["network", "update", "red"], "nothing to change");
    ctl.fails(&["network", "update", "nope", "--mtu", "1400"], "unknown network");
    ctl.fails(&["network", "update", "red", "--mtu", "100"], "invalid MTU");

    // network ls / inspect
    let table = ctl.ok(&["network", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("blue") && l.contains("4096")),
        "{table}"
    );
    assert_eq!(ctl.json(&["network", "ls"]).as_array().unwrap().len(), 2);
    let table = ctl.ok(&["network", "inspect", "blue"]);
    assert!(
        table.contains("10.1.0.0/24") && table.contains("10.1.1.0/24"),
        "leases shown: {table}"
    );
    let blue = ctl.json(&["network", "inspect", "blue"]);
    assert_eq!(blue["host_leases"].as_array().unwrap().len(), 2);
    ctl.fails(&["network", "inspect", "nope"], "unknown network \"nope\"");

    // hosts
    let table = ctl.ok(&["host", "ls"]);
    assert!(
        table.lines().any(|l| l.starts_with("h1") && l.contains(" up ")),
        "{table}"
    );
    let hosts = ctl.json(&["host", "ls"]);
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    let h1 = ctl.json(&["host", "inspect", "h1"]);
    assert_eq!(h1["underlay_ip"], "192.0.2.21");
    assert_eq!(h1["leases"].as_array().unwrap().len(), 2);
    assert!(ctl.ok(&["host", "inspect", "h1"]).contains("vtep mac:"));
    ctl.fails(&["host", "inspect", "h9"], "unknown host \"h9\"");

    // endpoints: no agent runs in this test, so an attach stays a request for the host's
    // agent (it picks the address from its lease); the agents' reports are sent by hand.
    let out = ctl.ok(&[
        "endpoint",
        "attach",
        "blue",
        "--host",
        "h1",
        "--netns",
        "w1",
        "--no-wait",
    ]);
    assert!(
        out.contains("requested: host h1's agent attaches w1 to blue"),
        "{out}"
    );
    let ep = ctl.json(&[
        "endpoint",
        "attach",
        "blue",
        "--host",
        "h2",
        "--netns",
        "w2",
        "--no-wait",
    ]);
    assert_eq!(
        (ep["ip"].as_str(), ep["state"].as_str(), ep["owner"].as_str()),
        (Some(""), Some("requested"), Some("overlayctl"))
    );
    let c = overlay_lab::controllers::client(&cluster.addrs()).unwrap();
    overlay_lab::api::report(&c, "h1", "c3/eth0", "blue", "10.1.0.77").await;
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "w4",
            "--ip",
            "10.1.0.77",
            "--no-wait",
        ],
        "already used",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "w4",
            "--ip",
            "10.1.1.5",
            "--no-wait",
        ],
        "is not available",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "w1",
            "--no-wait",
        ],
        "already attached",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "nope",
            "--host",
            "h1",
            "--netns",
            "w5",
            "--no-wait",
        ],
        "unknown network",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h9",
            "--netns",
            "w5",
            "--no-wait",
        ],
        "unknown host",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "../etc",
            "--no-wait",
        ],
        "invalid namespace",
    );
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "w6",
            "--ip",
            "10.1.0",
            "--no-wait",
        ],
        "malformed IPv4",
    );
    let table = ctl.ok(&["endpoint", "ls"]);
    assert_eq!(
        table.lines().count(),
        4,
        "header + 2 requests + 1 endpoint: {table}"
    );
    assert!(
        table.contains("10.1.0.77/24") && table.contains("requested"),
        "{table}"
    );
    assert_eq!(
        ctl.json(&["endpoint", "ls", "--network", "blue", "--host", "h1"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ctl.fails(&["endpoint", "ls", "--network", "nope"], "unknown network");

    // A host left without a lease (the pool is exhausted) cannot be asked for an endpoint.
    ctl.ok(&[
        "network",
        "create",
        "tiny",
        "--mode",
        "vxlan",
        "--subnet",
        "10.4.0.0/29",
        "--host-prefix",
        "30",
    ]);
    register(&cluster.addrs(), "h3", "192.0.2.23").await;
    ctl.fails(
        &[
            "endpoint",
            "attach",
            "tiny",
            "--host",
            "h3",
            "--netns",
            "t3",
            "--no-wait",
        ],
        "no free /30 subnet",
    );

    // detach and removal
    let out = ctl.ok(&[
        "endpoint",
        "detach",
        "blue",
        "--host",
        "h1",
        "--netns",
        "/run/netns/c3-eth0",
    ]);
    assert!(out.contains("released 10.1.0.77/24"), "{out}");
    ctl.fails(
        &[
            "endpoint",
            "detach",
            "blue",
            "--host",
            "h1",
            "--netns",
            "/run/netns/c3-eth0",
        ],
        "no endpoint",
    );
    let out = ctl.ok(&["endpoint", "detach", "blue", "--host", "h1", "--netns", "w1"]);
    assert!(out.contains("withdrew the request for w1"), "{out}");
    ctl.ok(&[
        "endpoint",
        "attach",
        "blue",
        "--host",
        "h1",
        "--netns",
        "w7",
        "--no-wait",
    ]);
    ctl.fails(&["network", "rm", "blue"], "still has 2 endpoint(s)");
    let out = ctl.json(&["network", "rm", "blue", "--force"]);
    assert_eq!(out["removed_endpoints"], 2);
    ctl.fails(&["network", "rm", "blue"], "unknown network");
    // h2 registered a moment ago: its "agent" counts as connected and would register again.
    ctl.fails(&["host", "rm", "h2"], "is connected");
    let out = ctl.ok(&["host", "rm", "h2", "--force"]);
    assert!(out.contains("removed host h2"), "{out}");
    assert!(
        out.contains("will register h2 again unless it is stopped"),
        "{out}"
    );
    ctl.fails(&["host", "rm", "h2"], "unknown host");

    // fail-over: a dead address first, then a live one
    let dead = format!("127.0.0.1:{}", overlay_lab::controllers::free_port().unwrap());
    let failover = Ctl {
        controllers: format!("{dead},{}", cluster.addr(2)),
    };
    assert!(failover.ok(&["network", "ls"]).contains("red"));
    // nothing reachable
    let down = Ctl { controllers: dead };
    down.fails(&["network", "ls"], "no controller reachable");
    // usage errors are one line too
    ctl.fails(&["network", "frobnicate"], "unrecognized subcommand");
    ctl.fails(&["endpoint", "attach", "red"], "--host");
}
