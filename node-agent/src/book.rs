//! The endpoints this host holds and how their addresses are chosen.
//!
//! [`Book`] keeps every endpoint record in memory, backed by the durable [`Store`]: a change is
//! committed to disk before it is visible (and before any caller is answered), so what the
//! book says was handed out is never handed out again, whatever happens to the agent.
//!
//! Addresses of vxlan and nat networks come from this host's lease of the network, which the
//! controller granted: every address in it is this host's to give. The next free one after the
//! last one given (round robin, so a freed address is the last to be reused while peers may
//! still have it in their ARP caches), skipping the gateway, every address the book holds and
//! every address the controller has recorded for this host (a store rebuilt from the
//! controller must never clash with what it knew). macvlan addresses come from the controller
//! (one range for all hosts) and are only recorded here.
//!
//! One default route per namespace: the first endpoint of a namespace has it, unless a later
//! one asks for it (`--default-route`); when the holder goes, the oldest remaining endpoint of
//! the namespace takes it over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use overlay_proto::ipam;

use overlay_proto::ports::PublishedPort;

use crate::store::{Record, RuntimeLink, Sealer, Store, StoreError};

/// A network's lease on this host, as the desired state gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
}

/// What a caller asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEndpoint {
    pub key: String,
    pub network: String,
    pub netns: String,
    pub ifname: String,
    pub ip: Option<Ipv4Addr>,
    pub names: Vec<String>,
    pub ports: Vec<PublishedPort>,
    pub owner: String,
    pub default_route: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("{0}")]
    InUse(String),
    #[error("network {network:?} has no free address in this host's lease {subnet} (all {capacity} in use)")]
    PoolExhausted {
        network: String,
        subnet: Ipv4Network,
        capacity: u64,
    },
    #[error("{0}")]
    AddressRefused(String),
    #[error("{0}")]
    PortInUse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Book {
    store: Store,
    records: BTreeMap<String, Record>,
    /// The store was created this run: it must be filled from the controller's records of this
    /// host before any address is handed out (the state dir may have been lost while
    /// workloads kept their addresses).
    needs_import: bool,
    /// Per network, the last address handed out.
    cursors: BTreeMap<String, Ipv4Addr>,
    /// Bumped on every change, so readers can tell a new book from the one they have seen.
    generation: u64,
    /// Keys of new records staged ([`Commit::Staged`]) and not yet known durable: not
    /// reported to the controller before their seal.
    staged: BTreeSet<String>,
}

/// How a new record reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Fsync'd before the call returns.
    Durable,
    /// Written, durable with the next seal ([`Book::sealer`]): the fsync overlaps the wiring.
    Staged,
}

/// The key of an address held for `owner` before its endpoint exists.
pub fn reservation_key(owner: &str, network: &str, ip: Ipv4Addr) -> String {
    format!("{owner}/{network}/{ip}")
}

impl Book {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let store = Store::open(state_dir)?;
        let needs_import = store.created();
        let records: BTreeMap<String, Record> =
            store.records()?.into_iter().map(|r| (r.key.clone(), r)).collect();
        let cursors = store.cursors()?.into_iter().collect();
        Ok(Self {
            store,
            records,
            needs_import,
            cursors,
            generation: 1,
            staged: BTreeSet::new(),
        })
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn get(&self, key: &str) -> Option<&Record> {
        self.records.get(key)
    }

    pub fn by_id(&self, id: u64) -> Option<&Record> {
        self.records.values().find(|r| r.id == id)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn needs_import(&self) -> bool {
        self.needs_import
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Refuses what clashes with a record: the key, or the interface in the namespace.
    fn check_new(&self, req: &NewEndpoint) -> Result<(), BookError> {
        if let Some(r) = self.records.get(&req.key) {
            return Err(BookError::InUse(format!(
                "key {:?} is already attached to network {:?} (namespace {}, {})",
                req.key, r.network, r.netns, r.ifname
            )));
        }
        if let Some(r) = self
            .records
            .values()
            .find(|r| r.netns == req.netns && r.ifname == req.ifname)
        {
            return Err(BookError::InUse(format!(
                "interface {} in namespace {} is already used by network {:?}",
                req.ifname, req.netns, r.network
            )));
        }
        overlay_proto::ports::check_list(&req.ports).map_err(BookError::AddressRefused)?;
        for r in self.records.values() {
            if let Some((wanted, _)) = overlay_proto::ports::first_clash(&req.ports, &r.ports) {
                return Err(BookError::PortInUse(format!(
                    "port {wanted} is already published on this host (by {} in {})",
                    r.key, r.netns
                )));
            }
        }
        Ok(())
    }

    /// A new endpoint of lease-based network `req.network`, its address from `lease`.
    /// `controller_used`: the addresses the controller has recorded for this host there.
    ///
    /// A [`Commit::Staged`] record (see [`crate::store`]) is sealed by the caller
    /// ([`Book::sealer`]) while the endpoint is wired, who then says so ([`Book::sealed`]) or,
    /// when the seal failed, removes it. Until then its address is this book's like any other
    /// (never given twice in this process), but not reported.
    pub fn add_from_lease(
        &mut self,
        req: NewEndpoint,
        lease: Lease,
        controller_used: &BTreeSet<Ipv4Addr>,
        now_ms: i64,
        commit: Commit,
    ) -> Result<Record, BookError> {
        self.check_new(&req)?;
        let ip = self.pick(&req.network, req.ip, lease, controller_used)?;
        let record = self.add(req, ip, lease.subnet.prefix(), lease.gateway, now_ms, commit)?;
        if commit == Commit::Staged {
            self.staged.insert(record.key.clone());
        }
        Ok(record)
    }

    /// What makes staged records durable, to run apart from the book.
    pub fn sealer(&self) -> Sealer {
        self.store.sealer()
    }

    /// Record `key` is durable (its seal returned).
    pub fn sealed(&mut self, key: &str) {
        self.staged.remove(key);
    }

    /// Forgets staged record `key` whose seal failed, in memory whatever the store says; the
    /// store's own removal may fail too (the disk that refused the seal), and is then only
    /// reported: the record, if a later commit writes it after all, is one whose namespace is
    /// gone, released after the grace period.
    pub fn discard_staged(&mut self, key: &str) -> Result<(), StoreError> {
        if !self.staged.remove(key) {
            return Ok(());
        }
        self.records.remove(key);
        self.generation += 1;
        self.store.remove(key).map(|_| ())
    }

    /// Whether record `key` is staged and not yet sealed.
    pub fn is_staged(&self, key: &str) -> bool {
        self.staged.contains(key)
    }

    /// The address to give in `network`: `wanted` if it is this host's and free, else the
    /// next free one after the network's cursor.
    fn pick(
        &self,
        network: &str,
        wanted: Option<Ipv4Addr>,
        lease: Lease,
        controller_used: &BTreeSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, BookError> {
        let (first, last) = ipam::endpoint_range(lease.subnet).ok_or_else(|| BookError::PoolExhausted {
            network: network.to_string(),
            subnet: lease.subnet,
            capacity: 0,
        })?;
        let used: BTreeMap<Ipv4Addr, ()> = self
            .records
            .values()
            .filter(|r| r.network == network)
            .map(|r| r.ip)
            .chain(controller_used.iter().copied())
            .map(|ip| (ip, ()))
            .collect();
        match wanted {
            Some(ip) => {
                if !(first..=last).contains(&ip) || ip == lease.gateway {
                    return Err(BookError::AddressRefused(format!(
                        "address {ip} is not this host's to give in network {network:?}: its lease {} allows {first} to {last}, except the gateway {}",
                        lease.subnet, lease.gateway
                    )));
                }
                if used.contains_key(&ip) {
                    return Err(BookError::AddressRefused(format!(
                        "address {ip} is already used in network {network:?}"
                    )));
                }
                Ok(ip)
            }
            None => {
                let cursor = self.cursors.get(network).copied();
                ipam::next_free_ip(first, last, cursor, &used, &[lease.gateway]).ok_or_else(|| {
                    BookError::PoolExhausted {
                        network: network.to_string(),
                        subnet: lease.subnet,
                        capacity: ipam::range_len(first, last),
                    }
                })
            }
        }
    }

    /// Holds an address of `network` for a runtime that names its endpoint later (Docker's
    /// IPAM asks before the endpoint exists): a record without a namespace, keyed by the
    /// address, committed like any other so the address is never given twice.
    pub fn reserve(
        &mut self,
        network: &str,
        wanted: Option<Ipv4Addr>,
        lease: Lease,
        controller_used: &BTreeSet<Ipv4Addr>,
        owner: &str,
        now_ms: i64,
    ) -> Result<Record, BookError> {
        let ip = self.pick(network, wanted, lease, controller_used)?;
        let floor = self.records.values().map(|r| r.id + 1).max().unwrap_or(1);
        let id = self.store.next_id(floor)?;
        let record = Record {
            key: reservation_key(owner, network, ip),
            id,
            network: network.to_string(),
            netns: String::new(),
            ifname: String::new(),
            ip,
            prefix_len: lease.subnet.prefix(),
            gateway: lease.gateway,
            mac: ipam::mac_from_ip(ip),
            names: Vec::new(),
            ports: Vec::new(),
            owner: owner.to_string(),
            default_route: false,
            created_ms: now_ms,
            reported: false,
            runtime: Some(RuntimeLink::default()),
        };
        self.store.put_new(&record)?;
        self.cursors.insert(record.network.clone(), ip);
        self.records.insert(record.key.clone(), record.clone());
        self.generation += 1;
        Ok(record)
    }

    /// The record of a runtime's endpoint (`endpoint_id`), if any.
    pub fn by_runtime_id(&self, endpoint_id: &str) -> Option<&Record> {
        self.records.values().find(|r| {
            r.runtime
                .as_ref()
                .is_some_and(|l| !l.endpoint_id.is_empty() && l.endpoint_id == endpoint_id)
        })
    }

    /// Changes a runtime-held record (its link, namespace, interface name or ports); the new
    /// ports are checked against every other record's first.
    pub fn update_runtime(
        &mut self,
        key: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, BookError> {
        let Some(old) = self.records.get(key) else {
            return Err(BookError::InUse(format!("no endpoint {key:?} on this host")));
        };
        let mut r = old.clone();
        change(&mut r);
        if r.runtime.is_none() || r.key != key || r.ip != old.ip || r.network != old.network {
            return Err(BookError::InUse(format!(
                "endpoint {key:?} is not a runtime's to change"
            )));
        }
        if r.ports != old.ports {
            overlay_proto::ports::check_list(&r.ports).map_err(BookError::AddressRefused)?;
            for other in self.records.values().filter(|o| o.key != key) {
                if let Some((wanted, _)) = overlay_proto::ports::first_clash(&r.ports, &other.ports) {
                    return Err(BookError::PortInUse(format!(
                        "port {wanted} is already published on this host (by {} in {})",
                        other.key, other.netns
                    )));
                }
            }
        }
        if r != *old {
            self.store.put(&r)?;
            self.records.insert(r.key.clone(), r.clone());
            self.generation += 1;
        }
        Ok(r)
    }

    /// A new endpoint whose address the controller allocated (macvlan).
    pub fn add_allocated(
        &mut self,
        req: NewEndpoint,
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        now_ms: i64,
    ) -> Result<Record, BookError> {
        self.check_new(&req)?;
        if !req.ports.is_empty() {
            return Err(BookError::AddressRefused(
                "a macvlan endpoint is a machine on the LAN: reach it at its own address, nothing is published".into(),
            ));
        }
        self.add(req, ip, prefix_len, gateway, now_ms, Commit::Durable)
    }

    fn add(
        &mut self,
        req: NewEndpoint,
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        now_ms: i64,
        commit: Commit,
    ) -> Result<Record, BookError> {
        let floor = self.records.values().map(|r| r.id + 1).max().unwrap_or(1);
        let id = self.store.next_id(floor)?;
        let holder = self.default_holder(&req.netns).map(|r| r.key.clone());
        let default_route = req.default_route || holder.is_none();
        if req.default_route
            && let Some(key) = holder
        {
            self.set_default(&key, false)?;
        }
        let record = Record {
            key: req.key,
            id,
            network: req.network,
            netns: req.netns,
            ifname: req.ifname,
            ip,
            prefix_len,
            gateway,
            mac: ipam::mac_from_ip(ip),
            names: req.names,
            ports: req.ports,
            owner: req.owner,
            default_route,
            created_ms: now_ms,
            reported: false,
            runtime: None,
        };
        match commit {
            Commit::Durable => self.store.put_new(&record)?,
            Commit::Staged => self.store.stage_new(&record)?,
        }
        self.cursors.insert(record.network.clone(), ip);
        self.records.insert(record.key.clone(), record.clone());
        self.generation += 1;
        Ok(record)
    }

    fn default_holder(&self, netns: &str) -> Option<&Record> {
        self.records
            .values()
            .find(|r| r.netns == netns && r.default_route)
    }

    fn set_default(&mut self, key: &str, on: bool) -> Result<(), StoreError> {
        if let Some(r) = self.records.get(key)
            && r.default_route != on
        {
            let mut r = r.clone();
            r.default_route = on;
            self.store.put(&r)?;
            self.records.insert(r.key.clone(), r);
            self.generation += 1;
        }
        Ok(())
    }

    /// Removes the record of `key` (durably); the namespace's default route moves to its oldest
    /// remaining endpoint if this one held it.
    pub fn remove(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        let Some(r) = self.records.get(key).cloned() else {
            return Ok(None);
        };
        self.store.remove(key)?;
        self.records.remove(key);
        self.staged.remove(key);
        self.generation += 1;
        if r.default_route
            && let Some(next) = self
                .records
                .values()
                .filter(|o| o.netns == r.netns)
                .min_by_key(|o| (o.created_ms, o.id))
                .map(|o| o.key.clone())
        {
            self.set_default(&next, true)?;
        }
        Ok(Some(r))
    }

    /// Notes whether the controller has recorded `key`.
    pub fn set_reported(&mut self, key: &str, reported: bool) -> Result<(), StoreError> {
        if let Some(r) = self.records.get(key)
            && r.reported != reported
        {
            let mut r = r.clone();
            r.reported = reported;
            self.store.put(&r)?;
            self.records.insert(r.key.clone(), r);
        }
        Ok(())
    }

    /// Docker networks and the overlay network each joins (the Docker plugin's one piece of
    /// state of its own).
    pub fn docker_networks(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.store.docker_networks()
    }

    pub fn put_docker_network(&self, id: &str, network: &str) -> Result<(), StoreError> {
        self.store.put_docker_network(id, network)
    }

    pub fn remove_docker_network(&self, id: &str) -> Result<(), StoreError> {
        self.store.remove_docker_network(id)
    }

    /// Fills a new store from the controller's records of this host (see `needs_import`).
    pub fn import(&mut self, records: Vec<Record>) -> Result<usize, StoreError> {
        let mut added = 0;
        for r in records {
            if self.records.contains_key(&r.key) {
                continue;
            }
            let r = Record { reported: true, ..r };
            self.store.put(&r)?;
            self.cursors.insert(r.network.clone(), r.ip);
            self.records.insert(r.key.clone(), r);
            added += 1;
        }
        self.needs_import = false;
        self.generation += 1;
        Ok(added)
    }
}

#[cfg(test)]
mod tests;
