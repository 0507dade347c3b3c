//! Running the `nft` binary (Debian package `nftables`): a child process each time, fork and
//! exec together (the agent is multithreaded; nothing forks without exec).

use std::io::Write;
use std::process::{Command, Stdio};

use super::FirewallError;

const PROGRAM: &str = "nft";

/// Runs `nft args`, feeding `input` on stdin; stdout on success.
fn run(what: &'static str, args: &[&str], input: Option<&str>) -> Result<String, FirewallError> {
    let mut child = Command::new(PROGRAM)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FirewallError::Missing,
            _ => FirewallError::Spawn(e.to_string()),
        })?;
    let mut write_error = None;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // nft reads all of its input before it says anything, so writing first cannot
        // deadlock; a write that fails means nft stopped early, and its stderr says why.
        write_error = stdin.write_all(text.as_bytes()).err();
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Spawn(e.to_string()))?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            what,
            detail: first_lines(&String::from_utf8_lossy(&out.stderr), out.status),
        });
    }
    if let Some(e) = write_error {
        return Err(FirewallError::Spawn(format!("writing to nft: {e}")));
    }
    String::from_utf8(out.stdout).map_err(|e| FirewallError::Listing(e.to_string()))
}

/// nft's own message, on one line: the error and the offending input line, no caret line.
fn first_lines(stderr: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~'))
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l))
        .take(2)
        .collect();
    if lines.is_empty() {
        format!("exited with {status} and said nothing")
    } else {
        lines.join(" | ")
    }
}

/// Commits `transaction` (all of it or nothing).
pub fn apply(transaction: &str) -> Result<(), FirewallError> {
    run("apply", &["-f", "-"], Some(transaction)).map(|_| ())
}

/// Has the kernel validate `transaction` without committing it (`nft --check`).
pub fn check(transaction: &str) -> Result<(), FirewallError> {
    run("check", &["--check", "-f", "-"], Some(transaction)).map(|_| ())
}

/// The whole ruleset as JSON (`nft -j list ruleset`).
pub fn list_ruleset() -> Result<String, FirewallError> {
    run("list", &["-j", "list", "ruleset"], None)
}
