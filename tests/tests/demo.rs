//! `overlay-lab demo`, as the README tells a newcomer to run it (defaults: 3 hosts, 3 replicas,
//! 2 workloads per host), on a machine as fresh as Debian comes: without `ping`, `tcpdump` or
//! `iperf3` it still reaches every pair, on mutual TLS with certificates made by `overlayctl
//! certs`, refuses a plaintext client and leaves nothing behind; without `nft` it says what to
//! install before building anything.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use overlay_lab::bins;

/// A `PATH` directory holding links to every program on the current `PATH` except those whose
/// names start with one of `hidden`.
fn path_without(hidden: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(text) = name.to_str() else { continue };
            if hidden.iter().any(|h| text.starts_with(h)) {
                continue;
            }
            let link = dir.path().join(&name);
            let executable = std::fs::metadata(entry.path())
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable && !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), &link);
            }
        }
    }
    dir
}

fn demo(path: &Path) -> std::process::Output {
    let mut cmd = Command::new(bins::bin("overlay-lab").expect("overlay-lab built"));
    cmd.arg("demo").env("PATH", path);
    // As on a fresh machine: no TLS or plaintext setting inherited from the test run.
    overlay_lab::plaintext::without_transport_choice(&mut cmd);
    cmd.output().expect("run the demo")
}

#[test]
fn demo_on_a_fresh_machine_runs_on_mutual_tls_and_cleans_up() {
    let bin = path_without(&["ping", "tcpdump", "iperf3"]);
    assert!(!bin.path().join("ping").exists());
    let out = demo(bin.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "demo failed ({}): {stderr}", out.status);
    for want in [
        "mutual TLS: a CA and 7 certificates made with `overlayctl certs`",
        "controller c1",
        "agent h3",
        "30/30 ordered pairs reachable",
        "plaintext overlayctl (--insecure, no certificate) refused: ",
        "give --tls-ca, --tls-cert and --tls-key",
        "cleaned up: namespaces and processes removed",
    ] {
        assert!(stdout.contains(want), "demo output lacks {want:?}");
    }
    // Its namespaces (named in the endpoint table) are gone.
    let prefix = stdout
        .split_whitespace()
        .find_map(|w| w.strip_suffix("-h1w1"))
        .expect("a workload namespace in the endpoint table")
        .to_string();
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&format!("{prefix}-"))),
        "the demo left namespaces {prefix}-*:\n{left}"
    );
}

#[test]
fn demo_without_nft_names_the_package_and_builds_nothing() {
    let bin = path_without(&["nft"]);
    let out = demo(bin.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(
        lines[0].contains("nft") && lines[0].contains("apt-get install nftables"),
        "{stderr}"
    );
    // The first thing the demo does once it builds is to say so.
    assert!(
        out.stdout.is_empty(),
        "the demo started building: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
