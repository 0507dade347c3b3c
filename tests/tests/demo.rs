//! `overlay-lab demo`, as the README tells a newcomer to run it (defaults: 3 hosts, 3 replicas,
//! 2 workloads per host): it runs on mutual TLS with certificates made by `overlayctl certs`,
//! every pair pings, a plaintext client is refused, and nothing is left behind.

use std::process::Command;

use overlay_lab::bins;

#[test]
fn demo_runs_on_mutual_tls_and_cleans_up() {
    let mut cmd = Command::new(bins::bin("overlay-lab").expect("overlay-lab built"));
    cmd.arg("demo");
    // As on a fresh machine: no TLS or plaintext setting inherited from the test run.
    overlay_lab::plaintext::without_transport_choice(&mut cmd);
    let out = cmd.output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "demo failed: {stderr}");
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
