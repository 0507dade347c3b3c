//! Messages that name the real cause (issue 13, item 9): an IPv6 subnet is said to be not
//! supported yet (by overlayctl and by the controller itself); `network ls/inspect` show the
//! effective MTU and whether it is derived or fixed; the controller accepts the MTU it derives
//! itself on a jumbo underlay; a configuration error is one line even with RUST_BACKTRACE=1.

use std::process::{Command, Output};
use std::time::Duration;

use overlay_lab::controllers::ControllerCluster;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;
use serde_json::Value;

fn run(bin: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("RUST_BACKTRACE", "1");
    // Plaintext against the test's loopback controller, unless the case carries TLS files.
    overlay_lab::plaintext::insecure_unless_tls(&mut cmd);
    cmd.output().expect("run")
}

fn ctl(addr: &str, args: &[&str]) -> Output {
    let mut all = vec!["--controller", addr];
    all.extend_from_slice(args);
    run(env!("CARGO_BIN_EXE_overlayctl"), &all)
}

fn ok(addr: &str, args: &[&str]) -> String {
    let out = ctl(addr, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Exit 1 and exactly one stderr line, which is returned.
fn one_line_failure(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: one line expected: {stderr}"
    );
    stderr.trim_end().to_string()
}

async fn register(c: &Controllers, name: &str, ip: &str, underlay_mtu: u32) {
    let req = pb::RegisterRequest {
        host_name: name.into(),
        underlay_ip: ip.into(),
        underlay_iface: "eth0".into(),
        underlay_mtu,
        // A client without an agent identity, as tests register hosts.
        instance_id: String::new(),
    };
    c.call(|ch| {
        let req = req.clone();
        async move { AgentClient::new(ch).register(req).await }
    })
    .await
    .expect("register");
}

/// The MTU cell of network `name` in the `network ls` table.
fn mtu_cell(table: &str, name: &str) -> String {
    let header = table.lines().next().unwrap_or_default();
    let (start, end) = (
        header.find("MTU").expect("MTU column"),
        header.find("NAT").expect("NAT column"),
    );
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in\n{table}"));
    line.get(start..end).unwrap_or_default().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_effective_mtu_and_one_line_errors() {
    let cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster
        .wait_leader(1, Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr(1);
    let c = cluster.client().expect("client");
    register(&c, "h1", "192.0.2.21", 9216).await;
    register(&c, "h2", "192.0.2.22", 9216).await;

    // IPv6: overlayctl says so before sending anything...
    let out = ctl(
        &addr,
        &[
            "network",
            "create",
            "v6",
            "--mode",
            "vxlan",
            "--subnet",
            "fd00::/64",
        ],
    );
    let line = one_line_failure(&out, "IPv6 subnet");
    assert!(
        line.starts_with(
            "overlayctl: an IPv4 --subnet is required (IPv6-only networks are not supported yet)"
        ),
        "{line}"
    );
    // ...and so does the controller to any other client.
    for (subnet, what) in [("fd00::/64", "subnet"), ("2001:db8::/48", "subnet")] {
        let req = pb::CreateNetworkRequest {
            name: "v6".into(),
            mode: pb::NetworkMode::Vxlan as i32,
            subnet: subnet.into(),
            ..Default::default()
        };
        let err = c
            .call(|ch| {
                let req = req.clone();
                async move { OverlayClient::new(ch).create_network(req).await }
            })
            .await
            .expect_err("IPv6 accepted");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("IPv6-only networks are not supported yet")
                && err.message().contains(what),
            "{}",
            err.message()
        );
    }
    let out = ctl(&addr, &["network", "ls", "-o", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json"),
        Value::Array(vec![]),
        "nothing was created"
    );

    // The MTU the controller derives on a 9216 underlay is one it accepts as --mtu, and both
    // show as what they are.
    ok(
        &addr,
        &[
            "network",
            "create",
            "auto",
            "--mode",
            "vxlan",
            "--subnet",
            "10.1.0.0/16",
        ],
    );
    ok(
        &addr,
        &[
            "network",
            "create",
            "jumbo",
            "--mode",
            "vxlan",
            "--subnet",
            "10.2.0.0/16",
            "--mtu",
            "9166",
        ],
    );
    ok(
        &addr,
        &[
            "network",
            "create",
            "local",
            "--mode",
            "nat",
            "--subnet",
            "10.3.0.0/16",
        ],
    );
    let table = ok(&addr, &["network", "ls"]);
    assert_eq!(mtu_cell(&table, "auto"), "9166 (auto)", "{table}");
    assert_eq!(mtu_cell(&table, "jumbo"), "9166 (fixed)", "{table}");
    assert_eq!(mtu_cell(&table, "local"), "9216 (auto)", "{table}");
    let json: Value =
        serde_json::from_str(&ok(&addr, &["-o", "json", "network", "inspect", "auto"])).expect("json");
    assert_eq!(
        (&json["effective_mtu"], &json["mtu_mode"], &json["mtu"]),
        (&Value::from(9166), &Value::from("auto"), &Value::Null)
    );
    assert!(ok(&addr, &["network", "inspect", "jumbo"]).contains("mtu:         9166 (fixed)"));

    // A host with a standard underlay joins: the derived MTU follows, the fixed one stays.
    register(&c, "h3", "192.0.2.23", 1500).await;
    let table = ok(&addr, &["network", "ls"]);
    assert_eq!(mtu_cell(&table, "auto"), "1450 (auto)", "{table}");
    assert_eq!(mtu_cell(&table, "jumbo"), "9166 (fixed)", "{table}");
    assert_eq!(
        ok(&addr, &["network", "update", "auto", "--mtu", "1400"]).trim(),
        "updated network auto (nat egress off, mtu 1400 (fixed))"
    );
    let out = ctl(&addr, &["network", "update", "auto", "--mtu", "65536"]);
    let line = one_line_failure(&out, "MTU 65536");
    assert!(line.contains("must be between 576 and 65535"), "{line}");

    // Configuration errors: one line each, no backtrace, although RUST_BACKTRACE=1.
    let controller = overlay_lab::bins::bin("overlay-controller").expect("bin");
    let agent = overlay_lab::bins::bin("overlay-agent").expect("bin");
    let missing = [
        "--tls-ca",
        "/nonexistent/ca.pem",
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ];
    let data = tempfile::tempdir().expect("tempdir");
    let data = data.path().display().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            controller.to_str().expect("path"),
            vec!["--node-id", "0", "--listen", "127.0.0.1:0", "--data-dir", &data],
            "overlay-controller: ",
        ),
        (
            controller.to_str().expect("path"),
            [
                &["--node-id", "1", "--listen", "127.0.0.1:0", "--data-dir", &data][..],
                &missing[..],
            ]
            .concat(),
            "overlay-controller: cannot read /nonexistent/",
        ),
        (
            agent.to_str().expect("path"),
            [
                &[
                    "--controller",
                    &addr,
                    "--host-name",
                    "h9",
                    "--underlay-iface",
                    "eth0",
                ][..],
                &missing[..],
            ]
            .concat(),
            "overlay-agent: cannot read /nonexistent/",
        ),
        (
            env!("CARGO_BIN_EXE_overlayctl"),
            [&["--controller", &addr][..], &missing[..], &["network", "ls"][..]].concat(),
            "overlayctl: cannot read /nonexistent/",
        ),
    ];
    for (bin, args, starts) in cases {
        let out = run(bin, &args);
        let line = one_line_failure(&out, &format!("{bin} {args:?}"));
        assert!(line.starts_with(starts), "{line}");
        assert!(!line.contains("backtrace"), "{line}");
    }
}
