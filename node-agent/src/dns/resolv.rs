//! The host's resolvers, from `/etc/resolv.conf`: read at start, and again whenever the file
//! changes (polled: a resolv.conf is often replaced by rename or re-pointed as a symlink,
//! which a watch on the old inode would miss).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// glibc reads at most three nameservers; so do we.
pub const MAX_UPSTREAMS: usize = 3;

/// The `nameserver` addresses of a resolv.conf, port 53, in order, at most [`MAX_UPSTREAMS`].
/// Lines that are not an IP address (a scoped IPv6 `fe80::1%eth0`, garbage) are skipped, and
/// so is the unspecified address.
pub fn parse(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|w| w.parse::<IpAddr>().ok())
        })
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

/// The current upstream list, shared by every query.
#[derive(Debug, Default)]
pub struct Upstreams {
    list: RwLock<Arc<Vec<SocketAddr>>>,
}

impl Upstreams {
    pub fn get(&self) -> Arc<Vec<SocketAddr>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the list; true if it changed.
    pub fn set(&self, list: Vec<SocketAddr>) -> bool {
        let mut cur = self.list.write().unwrap_or_else(|e| e.into_inner());
        if **cur == list {
            return false;
        }
        *cur = Arc::new(list);
        true
    }
}

/// What identifies one version of the file: a rewrite, a rename over it or a symlink
/// re-pointed all change one of these.
type Stamp = Option<(SystemTime, u64, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino(), m.dev()))
}

/// Reads `path` into `upstreams` (a missing file means no upstream).
pub fn load(path: &Path, upstreams: &Upstreams) -> bool {
    let list = match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read resolv.conf: no upstream resolver");
            Vec::new()
        }
    };
    let changed = upstreams.set(list.clone());
    if changed {
        let list: Vec<String> = list.iter().map(|a| a.ip().to_string()).collect();
        tracing::info!(path = %path.display(), upstreams = ?list, "DNS upstream resolvers");
    }
    changed
}

/// Re-reads `path` whenever it changes, polling every `every`; `on_change` runs after a
/// change of the list. Runs until aborted.
pub async fn watch(path: PathBuf, upstreams: Arc<Upstreams>, every: Duration, on_change: impl Fn()) {
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now != last {
            last = now;
            if load(&path, &upstreams) {
                on_change();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_in_order_at_most_three() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.53\n  nameserver\t2001:db8::53 \n\
                    nameserver fe80::1%eth0\nnameserver not-an-ip\nnameserver 0.0.0.0\noptions ndots:2\n\
                    nameserver 198.51.100.53\nnameserver 203.0.113.53\n";
        let got: Vec<String> = parse(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["192.0.2.53:53", "[2001:db8::53]:53", "198.51.100.53:53"]);
        assert!(parse("").is_empty());
        assert!(parse("nameserver").is_empty());
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let ups = Upstreams::default();
        assert!(!load(&path, &ups), "missing: still none");
        assert!(ups.get().is_empty());
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        let before = stamp(&path);
        assert!(load(&path, &ups));
        assert!(!load(&path, &ups), "unchanged");
        // Replaced by rename, as resolvconf and NetworkManager do.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "nameserver 192.0.2.2\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(stamp(&path), before);
        assert!(load(&path, &ups));
        assert_eq!(
            ups.get().as_slice(),
            &["192.0.2.2:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
