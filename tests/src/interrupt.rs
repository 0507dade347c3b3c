//! Ctrl-C for the lab binary: a SIGINT or SIGTERM removes the lab's namespaces and the
//! processes inside them before exiting. (Tests need none of this: a panic unwinds and the
//! guards clean up.)

use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// Call first thing in `main`, before any thread exists: blocks SIGINT/SIGTERM in every
/// thread and handles them on a dedicated one. Namespaces whose names start with one of the
/// prefixes `tags` yields at signal time are torn down.
pub fn clean_up_on_signal(prefixes: impl Fn() -> Vec<String> + Send + 'static) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        eprintln!("\n{sig:?}: cleaning up the lab");
        for prefix in prefixes() {
            remove_namespaces(&prefix);
        }
        std::process::exit(130);
    });
}

/// Kills every process inside, then deletes, each namespace named `<prefix>-*`.
pub fn remove_namespaces(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    let marker = format!("{prefix}-");
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&marker))
    {
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}
