//! overlayctl and its standard output (issue 13, item 2): a reader that goes away early
//! (`| head -1`, `| true`) ends the output quietly, like any Unix filter, with the command's
//! own exit code; any other write error (`> /dev/full`) is one line and exit 1. Never a panic
//! (exit 101). The real binary against a real controller.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use overlay_lab::controllers::ControllerCluster;

fn ctl() -> &'static str {
    env!("CARGO_BIN_EXE_overlayctl")
}

/// overlayctl against the test's plaintext loopback controller.
fn ctl_command() -> Command {
    let mut cmd = Command::new(ctl());
    overlay_lab::plaintext::insecure_unless_tls(&mut cmd);
    cmd
}

/// Runs overlayctl with its stdout a pipe whose reading end is already closed: the first
/// write meets EPIPE.
fn into_closed_pipe(controller: &str, args: &[&str]) -> Output {
    let mut child = ctl_command()
        .arg("--controller")
        .arg(controller)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn overlayctl");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait")
}

/// Runs a shell pipeline with `$CTL` set; `pipefail`, so the status is overlayctl's when it
/// fails. Returns (status, stdout, overlayctl's stderr).
fn pipeline(controller: &str, script: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr");
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .env("CTL", ctl())
        .env(overlay_lab::plaintext::INSECURE_ENV, "true")
        .env("OVERLAY_CONTROLLER", controller)
        .env("ERR", &err)
        .output()
        .expect("bash");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pipes_end_quietly_and_full_disks_fail_in_one_line() {
    let cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster
        .wait_leader(1, Duration::from_secs(20))
        .await
        .expect("leader");
    let c = cluster.client().expect("client");
    overlay_lab::api::register(&c, "h1", "192.0.2.21").await;
    // More JSON than a pipe buffers (64 KiB), so `| head -1` really closes on a writer.
    for i in 0..200 {
        overlay_lab::api::create_network(
            &c,
            &format!("n{i}"),
            &format!("10.{}.{}.0/24", i / 200, i % 200),
            26,
        )
        .await;
    }
    let addr = cluster.addr(1);

    let commands: &[&[&str]] = &[
        &["network", "ls"],
        &["--output", "json", "network", "ls"],
        &["network", "inspect", "n7"],
        &["host", "ls"],
        &["--output", "json", "host", "inspect", "h1"],
        &["cluster", "status"],
        &["endpoint", "ls"],
    ];
    for args in commands {
        let out = into_closed_pipe(&addr, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} into a closed pipe: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?} into a closed pipe said: {stderr}");

        let out = ctl_command()
            .arg("--controller")
            .arg(&addr)
            .args(*args)
            .stdout(
                std::fs::File::options()
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full"),
            )
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} > /dev/full: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            "overlayctl: cannot write output: No space left on device (os error 28)",
            "{args:?} > /dev/full"
        );
    }

    // The shell pipelines of the issue.
    let (status, stdout, stderr) = pipeline(&addr, "$CTL -o json network ls 2>$ERR | head -1");
    assert_eq!((status, stdout.as_str(), stderr.as_str()), (Some(0), "[\n", ""));
    let (status, stdout, stderr) = pipeline(&addr, "$CTL network ls 2>$ERR | head -1");
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("NAME") && stderr.is_empty(),
        "{stdout:?} {stderr:?}"
    );
    let (status, _, stderr) = pipeline(&addr, "$CTL -o json network ls 2>$ERR | true");
    assert_eq!((status, stderr.as_str()), (Some(0), ""));

    // A closed pipe does not hide the command's own outcome: doctor still finds h1's agent
    // missing and says so on stderr, exit 1.
    let out = into_closed_pipe(&addr, &["doctor"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("overlayctl: doctor found") && stderr.lines().count() == 1,
        "{stderr}"
    );

    // Nor does an unwritable stderr make a panic of an error.
    let out = ctl_command()
        .args(["--controller", &addr, "network", "inspect", "nope"])
        .stderr(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}
