//! overlay-cni as a runtime calls it (CNI_* environment, configuration on stdin), for what needs
//! no agent: VERSION, malformed environments and configurations, and an agent that is not
//! running. Each answer must be the spec's JSON (a result, or an error object with its code).
//! The calls that reach a real agent are in the lab tests (tests/tests/cni.rs).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

struct Answer {
    ok: bool,
    json: Value,
    stdout: String,
}

fn cni(env: &[(&str, &str)], stdin: &str) -> Answer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_overlay-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn overlay-cni");
    // The plugin stops reading an oversized configuration early: a broken pipe is expected then.
    let _ = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Answer {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
    }
}

fn conf(socket: &str) -> String {
    format!(r#"{{"cniVersion":"1.0.0","name":"blue","type":"overlay-cni","agentSocket":"{socket}"}}"#)
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c0ffee"),
    ("CNI_NETNS", "/run/netns/nothing-here"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn error_code(a: &Answer) -> u64 {
    assert!(!a.ok, "expected an error, got success: {}", a.stdout);
    assert_eq!(
        a.json["cniVersion"].as_str().map(|_| ()),
        Some(()),
        "{}",
        a.stdout
    );
    assert!(
        a.json["msg"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && !m.contains('\n')),
        "one-line msg expected: {}",
        a.stdout
    );
    a.json["code"].as_u64().unwrap_or(0)
}

#[test]
fn version_lists_the_supported_versions() {
    let a = cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(a.ok, "{}", a.stdout);
    let versions: Vec<&str> = a.json["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&v), "{versions:?}");
    }
}

#[test]
fn malformed_environment_is_code_4() {
    assert_eq!(error_code(&cni(&[], &conf("/nonexistent"))), 4, "no CNI_COMMAND");
    assert_eq!(error_code(&cni(&[("CNI_COMMAND", "FROB")], &conf("/x"))), 4);
    let mut env = ADD.to_vec();
    env[1] = ("CNI_CONTAINERID", "../etc");
    assert_eq!(error_code(&cni(&env, &conf("/x"))), 4, "bad container id");
    let mut env = ADD.to_vec();
    env[3] = ("CNI_IFNAME", "a/b");
    assert_eq!(error_code(&cni(&env, &conf("/x"))), 4, "bad ifname");
    let mut env = ADD.to_vec();
    env[2] = ("CNI_NETNS", "relative/path");
    assert_eq!(error_code(&cni(&env, &conf("/x"))), 4, "relative netns");
}

#[test]
fn malformed_configuration_is_refused_with_its_code() {
    assert_eq!(error_code(&cni(ADD, "{not json")), 6);
    assert_eq!(
        error_code(&cni(ADD, r#"{"name":"blue","type":"overlay-cni"}"#)),
        7,
        "no cniVersion"
    );
    assert_eq!(
        error_code(&cni(
            ADD,
            r#"{"cniVersion":"9.9.9","name":"blue","type":"overlay-cni"}"#
        )),
        1,
        "unsupported version"
    );
    let bad_port = r#"{"cniVersion":"1.0.0","name":"blue","type":"overlay-cni",
        "runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80,"protocol":"tcp"}]}}"#;
    assert_eq!(error_code(&cni(ADD, bad_port)), 7, "port out of range");
    let huge = format!(
        r#"{{"cniVersion":"1.0.0","name":"blue","type":"overlay-cni","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    assert_eq!(error_code(&cni(ADD, &huge)), 6, "oversized configuration");
}

#[test]
fn agent_not_running_is_try_again_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let socket = socket.to_str().expect("utf-8 path");
    let a = cni(ADD, &conf(socket));
    assert_eq!(error_code(&a), 11, "{}", a.stdout);
    let msg = a.json["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("overlay-agent") && msg.contains(socket), "{msg}");
    let mut del = ADD.to_vec();
    del[0] = ("CNI_COMMAND", "DEL");
    assert_eq!(error_code(&cni(&del, &conf(socket))), 11);
    // STATUS says "not available" (spec 1.1.0 code 50).
    let status = cni(
        &[("CNI_COMMAND", "STATUS")],
        &conf(socket).replace("1.0.0", "1.1.0"),
    );
    assert_eq!(error_code(&status), 50);
}
