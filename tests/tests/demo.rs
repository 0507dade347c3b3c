//! The README's quick start as a newcomer runs it: `overlay-lab demo` on a machine without
//! `ping`, `tcpdump` or `iperf3` (a fresh Debian has none of them) must still reach every pair,
//! and on a machine without `nft` it must say what to install before building anything.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A `PATH` directory holding links to every program on the current `PATH` except `hidden`.
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
    Command::new(env!("CARGO_BIN_EXE_overlay-lab"))
        .arg("demo")
        .env("PATH", path)
        .output()
        .expect("run overlay-lab demo")
}

#[test]
fn demo_needs_no_ping_tcpdump_or_iperf3() {
    let bin = path_without(&["ping", "tcpdump", "iperf3"]);
    assert!(!bin.path().join("ping").exists());
    let out = demo(bin.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("30/30 ordered pairs reachable"),
        "not every pair reached:\n{stdout}"
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
