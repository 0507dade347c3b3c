//! Which namespace each endpoint belongs to.
//!
//! A namespace reference (a pid, a name, a path) only says where to look; what is found there
//! can change: a pid is reused by a stranger's process, a name is deleted and created again,
//! a bind mount is swapped. So the first time the agent works on an endpoint it pins the
//! namespace it found (device and inode of the nsfs file, the namespace cookie once it has
//! been inside, and the boot it saw them in) and keeps the pins in its state directory. From
//! then on a reference that leads elsewhere means the endpoint's namespace is gone: the agent
//! never wires an endpoint into a namespace other than its first.
//!
//! Pins from another boot never match: namespaces do not survive a reboot, and their inode
//! numbers and cookies start over. A lost state directory loses the pins with it; the
//! endpoints are then pinned again to whatever their references lead to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::netns::NsId;

const PINS_FILE: &str = "endpoint-namespaces.json";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub id: u64,
    /// The reference as the controller gave it: an endpoint's never changes, so a different
    /// one means the id now names another endpoint (a controller cluster started over).
    pub netns: String,
    pub ns: NsId,
    /// `SO_NETNS_COOKIE`, once the agent has been inside (`None` on kernels without it).
    pub cookie: Option<u64>,
    pub boot_id: String,
}

/// What a namespace found for an endpoint is, next to its pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not pinned yet: this is the namespace it gets pinned to.
    New,
    /// The pinned namespace; inside, its cookie must be this one (if known).
    Same { cookie: Option<u64> },
    /// Another namespace; why it is told apart.
    Replaced(&'static str),
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    boot_id: String,
    pins: Vec<Pin>,
}

#[derive(Debug, Default)]
pub struct Pins {
    pins: BTreeMap<u64, Pin>,
    path: Option<PathBuf>,
    boot_id: String,
    dirty: bool,
}

impl Pins {
    /// The pins kept in `state_dir` (`None`: memory only). An unreadable file is reported in
    /// the log and counts as empty.
    pub fn load(state_dir: Option<&Path>) -> Self {
        let boot_id = std::fs::read_to_string(BOOT_ID)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let path = state_dir.map(|d| d.join(PINS_FILE));
        let pins = match path.as_ref().map(std::fs::read) {
            Some(Ok(bytes)) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(disk) => disk.pins.into_iter().map(|p| (p.id, p)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "endpoint namespace pins unreadable; starting without");
                    BTreeMap::new()
                }
            },
            _ => BTreeMap::new(),
        };
        Self {
            pins,
            path,
            boot_id,
            dirty: false,
        }
    }

    /// Compares the namespace `found` for endpoint `id` (reference `netns`) with its pin.
    pub fn check(&self, id: u64, netns: &str, found: NsId) -> Verdict {
        match self.pins.get(&id) {
            Some(p) if p.netns == netns => {
                if p.boot_id != self.boot_id {
                    Verdict::Replaced("the host restarted since it was wired")
                } else if p.ns != found {
                    Verdict::Replaced("another namespace file")
                } else {
                    Verdict::Same { cookie: p.cookie }
                }
            }
            _ => Verdict::New,
        }
    }

    /// Whether endpoint `id` (reference `netns`) has a pin.
    pub fn is_pinned(&self, id: u64, netns: &str) -> bool {
        self.pins.get(&id).is_some_and(|p| p.netns == netns)
    }

    /// Pins endpoint `id` to `found`.
    pub fn pin(&mut self, id: u64, netns: &str, found: NsId) {
        self.pins.insert(
            id,
            Pin {
                id,
                netns: netns.to_string(),
                ns: found,
                cookie: None,
                boot_id: self.boot_id.clone(),
            },
        );
        self.dirty = true;
    }

    /// Records the cookie seen inside endpoint `id`'s namespace, if its pin has none yet.
    pub fn saw_cookie(&mut self, id: u64, cookie: Option<u64>) {
        if let Some(p) = self.pins.get_mut(&id)
            && p.cookie.is_none()
            && cookie.is_some()
        {
            p.cookie = cookie;
            self.dirty = true;
        }
    }

    /// Forgets the pins of endpoints `keep` says no to.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let before = self.pins.len();
        self.pins.retain(|id, _| keep(*id));
        self.dirty |= self.pins.len() != before;
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Writes the pins if they changed since the last save (atomically: a crash leaves the old
    /// file or the new one).
    pub fn save(&mut self) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        let Some(path) = &self.path else {
            self.dirty = false;
            return Ok(());
        };
        let disk = OnDisk {
            boot_id: self.boot_id.clone(),
            pins: self.pins.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("save {}: {e}", path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NsId = NsId {
        dev: 4,
        ino: 4026532100,
    };
    const B: NsId = NsId {
        dev: 4,
        ino: 4026532200,
    };

    #[test]
    fn a_pinned_endpoint_follows_its_namespace_only() {
        let dir = std::env::temp_dir().join(format!("overlay-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pins = Pins::load(Some(&dir));
        assert_eq!(pins.check(7, "4242", A), Verdict::New);
        pins.pin(7, "4242", A);
        pins.saw_cookie(7, Some(99));
        pins.saw_cookie(7, Some(100));
        assert_eq!(pins.check(7, "4242", A), Verdict::Same { cookie: Some(99) });
        assert!(
            matches!(pins.check(7, "4242", B), Verdict::Replaced(_)),
            "a reused pid"
        );
        // The id naming another endpoint (a controller that started over) is a new endpoint.
        assert_eq!(pins.check(7, "w9", B), Verdict::New);
        pins.save().unwrap();

        // Across an agent restart, the pins hold.
        let mut again = Pins::load(Some(&dir));
        assert_eq!(again.check(7, "4242", A), Verdict::Same { cookie: Some(99) });
        // Across a reboot nothing matches.
        again.boot_id = "another boot".into();
        assert_eq!(
            again.check(7, "4242", A),
            Verdict::Replaced("the host restarted since it was wired")
        );
        again.retain(|id| id != 7);
        assert!(again.is_empty());
        again.save().unwrap();
        assert!(Pins::load(Some(&dir)).is_empty());

        // A damaged file is no pins, not a crash.
        std::fs::write(dir.join(PINS_FILE), b"{not json").unwrap();
        assert!(Pins::load(Some(&dir)).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
