//! Kernel change notifications: how the agent hears about drift as it happens instead of at
//! the next periodic pass.
//!
//! Two multicast netlink sockets, opened in the agent's own (host) namespace:
//! - rtnetlink, groups link, neighbour (ARP, NDP and bridge FDB), IPv4 and IPv6 address,
//!   IPv4 and IPv6 route;
//! - nfnetlink, group nftables.
//!
//! Each message is filtered on the spot ([`rtnl::RouteFilter`], [`nft::concerns_table`]): only
//! what touches overlay's devices, its route protocol, its networks' prefixes or its nftables
//! table counts, so a host with unrelated churn (another daemon's routes, container veths,
//! workloads' ARP and MAC learning) costs a decode per message and no reconcile pass. What is
//! left only raises bits in a shared word ([`Changes`]): a burst of any length is one wake-up,
//! read after a short debounce, and memory never grows with the event rate.
//!
//! A full socket buffer (ENOBUFS) loses notifications; it is reported as [`Changes::OVERFLOW`]
//! ("something may have changed"), which costs one audit, at most once per
//! [`EventsOptions::overflow_gap`].

pub mod nft;
pub mod rtnl;

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::metrics::AgentMetrics;
use crate::netlink::Netlink;
use crate::spec::HostSpec;

/// What kinds of overlay objects changed since the last [`KernelEvents::next`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Changes(u32);

impl Changes {
    pub const LINK: Changes = Changes(1);
    pub const ADDRESS: Changes = Changes(1 << 1);
    pub const ROUTE: Changes = Changes(1 << 2);
    pub const NEIGHBOUR: Changes = Changes(1 << 3);
    pub const FDB: Changes = Changes(1 << 4);
    /// Overlay's nftables table (any family) changed, or nftables notifications were lost.
    pub const NFT: Changes = Changes(1 << 5);
    /// rtnetlink notifications were lost (ENOBUFS): anything may have changed.
    pub const OVERFLOW: Changes = Changes(1 << 6);

    const NAMES: [(Changes, &'static str); 7] = [
        (Self::LINK, "link"),
        (Self::ADDRESS, "address"),
        (Self::ROUTE, "route"),
        (Self::NEIGHBOUR, "neighbour"),
        (Self::FDB, "fdb"),
        (Self::NFT, "nftables"),
        (Self::OVERFLOW, "overflow"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Changes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: Changes) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for Changes {
    type Output = Changes;
    fn bitor(self, rhs: Changes) -> Changes {
        Changes(self.0 | rhs.0)
    }
}

impl BitOrAssign for Changes {
    fn bitor_assign(&mut self, rhs: Changes) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

#[derive(Clone, Debug)]
pub struct EventsOptions {
    /// Receive buffer asked for on each socket (the kernel caps it at `net.core.rmem_max`).
    pub rx_buffer: usize,
    /// How long to let a burst gather after its first event before reporting it.
    pub debounce: Duration,
    /// Minimum time between two reports that carry nothing but [`Changes::OVERFLOW`]: a host
    /// whose churn overflows the socket all the time must not keep the agent auditing.
    pub overflow_gap: Duration,
}

impl Default for EventsOptions {
    fn default() -> Self {
        Self {
            rx_buffer: 4 << 20,
            debounce: Duration::from_millis(30),
            overflow_gap: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot subscribe to {what} notifications: {source}")]
    Subscribe {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot list links to start from: {0}")]
    Seed(#[from] crate::netlink::NetlinkError),
}

/// The word the reader tasks raise bits in, and the wake-up for [`KernelEvents::next`].
#[derive(Default)]
struct Shared {
    pending: AtomicU32,
    notify: Notify,
    /// rtnetlink changes concerning overlay (or lost notifications) seen so far: a dump taken
    /// while it stays the same is still what the kernel holds of overlay's objects.
    rtnl_seen: Arc<AtomicU64>,
}

impl Shared {
    fn raise(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        if changes.0 & !Changes::NFT.0 != 0 {
            self.rtnl_seen.fetch_add(1, Ordering::AcqRel);
        }
        self.pending.fetch_or(changes.0, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// Subscribed notification sockets; [`KernelEvents::next`] yields what concerned overlay.
/// Dropping it stops the reader tasks and closes the sockets.
pub struct KernelEvents {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    options: EventsOptions,
    last_overflow: Option<Instant>,
}

impl Drop for KernelEvents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Largest datagram read at once; kernel notifications are far smaller (about a page).
const DATAGRAM: usize = 64 << 10;

fn enobufs(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32)
}

fn subscribe(
    protocol: isize,
    groups: &[u32],
    rx_buffer: usize,
    what: &'static str,
) -> Result<TokioSocket, EventsError> {
    let err = |source| EventsError::Subscribe { what, source };
    let mut socket = TokioSocket::new(protocol).map_err(err)?;
    let s = socket.socket_mut();
    s.bind(&SocketAddr::new(0, 0)).map_err(err)?;
    s.set_rx_buf_sz(rx_buffer).map_err(err)?;
    for g in groups {
        s.add_membership(*g).map_err(err)?;
    }
    Ok(socket)
}

impl KernelEvents {
    /// Subscribes in the calling thread's network namespace (the agent's own), then lists the
    /// links once so overlay's devices are known before the first event. `spec` gives the
    /// networks' prefixes (routes into them matter whoever owns them).
    pub async fn start(
        nl: &Netlink,
        spec: watch::Receiver<Option<Arc<HostSpec>>>,
        metrics: Option<Arc<AgentMetrics>>,
        options: EventsOptions,
    ) -> Result<Self, EventsError> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv6Route,
        ]
        .map(|g| g as u32);
        let route = subscribe(NETLINK_ROUTE, &groups, options.rx_buffer, "rtnetlink")?;
        // Subscribed first, listed second: a device made in between is in one or the other.
        let filter = rtnl::RouteFilter::new(&nl.links().await?);
        let shared = Arc::new(Shared::default());
        let mut tasks = vec![tokio::spawn(read_route(
            route,
            filter,
            spec,
            shared.clone(),
            metrics.clone(),
        ))];
        match subscribe(
            NETLINK_NETFILTER,
            &[nft::NFNLGRP_NFTABLES],
            options.rx_buffer,
            "nftables",
        ) {
            Ok(socket) => tasks.push(tokio::spawn(read_nft(socket, shared.clone(), metrics))),
            // Without it the firewall is still rebuilt by the periodic pass and the audit.
            Err(e) => {
                tracing::warn!(error = %e, "nftables changes will be noticed by the periodic pass only")
            }
        }
        Ok(Self {
            shared,
            tasks,
            options,
            last_overflow: None,
        })
    }

    /// A count of the rtnetlink notifications concerning overlay (and of lost ones), raised
    /// as the reader classifies them: see [`crate::reconcile::Reconciler::with_kernel_changes`].
    pub fn rtnl_changes(&self) -> Arc<AtomicU64> {
        self.shared.rtnl_seen.clone()
    }

    /// What was raised so far, without waiting (for a pass about to run anyway).
    pub fn take(&mut self) -> Changes {
        let changes = Changes(self.shared.pending.swap(0, Ordering::AcqRel));
        if changes.contains(Changes::OVERFLOW) {
            self.last_overflow = Some(Instant::now());
        }
        changes
    }

    /// Waits for the next change that concerns overlay, lets the burst gather for the debounce
    /// time and returns everything raised meanwhile. Cancel-safe: what is not returned stays
    /// pending for the next call.
    pub async fn next(&mut self) -> Changes {
        loop {
            while self.shared.pending.load(Ordering::Acquire) == 0 {
                self.shared.notify.notified().await;
            }
            tokio::time::sleep(self.options.debounce).await;
            let pending = Changes(self.shared.pending.load(Ordering::Acquire));
            if pending == Changes::OVERFLOW
                && let Some(last) = self.last_overflow
                && let Some(wait) = self.options.overflow_gap.checked_sub(last.elapsed())
            {
                tokio::time::sleep(wait).await;
            }
            let changes = self.take();
            if !changes.is_empty() {
                return changes;
            }
        }
    }
}

/// The netlink messages of one datagram; stops at the first malformed header.
fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<&[u8], ()>> {
    let mut offset = 0usize;
    std::iter::from_fn(move || {
        let rest = datagram.get(offset..).filter(|r| !r.is_empty())?;
        let Ok(buffer) = NetlinkBuffer::new_checked(rest) else {
            offset = datagram.len();
            return Some(Err(()));
        };
        let len = buffer.length() as usize;
        offset = offset.saturating_add(len.div_ceil(4) * 4).max(offset + 1);
        Some(Ok(&rest[..len]))
    })
}

/// Reads one socket for as long as the agent runs; `on_datagram` gets every datagram the
/// kernel sent (anything else on the socket is dropped), `on_overflow` every lost batch.
async fn read_loop(
    socket: TokioSocket,
    what: &'static str,
    mut on_datagram: impl FnMut(&[u8]),
    on_overflow: impl Fn(),
) {
    let mut buf: Vec<u8> = Vec::with_capacity(DATAGRAM);
    let mut failures = 0u32;
    loop {
        buf.clear();
        match socket.recv_from(&mut buf).await {
            // Only the kernel (port 0) is heard: any process of the namespace can unicast to
            // this port, and what it says about routes or tables is worth nothing.
            Ok(from) if from.port_number() == 0 => {
                failures = 0;
                on_datagram(&buf);
            }
            Ok(_) => {}
            Err(e) if enobufs(&e) => on_overflow(),
            Err(e) => {
                failures += 1;
                tracing::warn!(socket = what, error = %e, failures, "reading kernel notifications failed");
                // Unexpected: back off, and count it as an overflow so whatever happened
                // meanwhile gets one look.
                on_overflow();
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))).await;
            }
        }
    }
}

async fn read_route(
    socket: TokioSocket,
    mut filter: rtnl::RouteFilter,
    mut spec: watch::Receiver<Option<Arc<HostSpec>>>,
    shared: Arc<Shared>,
    metrics: Option<Arc<AgentMetrics>>,
) {
    let overflow = {
        let (shared, metrics) = (shared.clone(), metrics.clone());
        move || {
            tracing::debug!("rtnetlink notifications lost (socket buffer full)");
            if let Some(m) = &metrics {
                m.observe_event_overflow();
            }
            shared.raise(Changes::OVERFLOW);
        }
    };
    let networks = |s: &Option<Arc<HostSpec>>| {
        s.as_ref()
            .map(|s| s.networks.iter().map(|n| n.cidr).collect())
            .unwrap_or_default()
    };
    let networks6 = |s: &Option<Arc<HostSpec>>| {
        s.as_ref()
            .map(|s| s.networks.iter().filter_map(|n| n.cidr6).collect())
            .unwrap_or_default()
    };
    let current = spec.borrow_and_update().clone();
    filter.set_networks(networks(&current));
    filter.set_networks6(networks6(&current));
    let on_datagram = |datagram: &[u8]| {
        if spec.has_changed().unwrap_or(false) {
            let current = spec.borrow_and_update().clone();
            filter.set_networks(networks(&current));
            filter.set_networks6(networks6(&current));
        }
        let mut changes = Changes::default();
        let (mut relevant, mut ignored) = (0u64, 0u64);
        for msg in messages(datagram).flatten() {
            let header_only = NetlinkBuffer::new_checked(msg)
                .ok()
                .and_then(|b| filter.classify_header(b.message_type(), b.payload()));
            let found = match header_only {
                Some(found) => found,
                None => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
                    Ok(NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(m),
                        ..
                    }) => filter.classify(&m),
                    // Not decodable: the periodic pass is the net for whatever it was.
                    _ => Changes::default(),
                },
            };
            if found.is_empty() {
                ignored += 1;
            } else {
                relevant += 1;
            }
            changes |= found;
        }
        if let Some(m) = &metrics {
            m.observe_kernel_events(relevant, ignored);
        }
        if !changes.is_empty() {
            tracing::debug!(%changes, "kernel change concerning overlay");
        }
        shared.raise(changes);
    };
    read_loop(socket, "rtnetlink", on_datagram, overflow).await;
}

async fn read_nft(socket: TokioSocket, shared: Arc<Shared>, metrics: Option<Arc<AgentMetrics>>) {
    let overflow = {
        let (shared, metrics) = (shared.clone(), metrics.clone());
        move || {
            if let Some(m) = &metrics {
                m.observe_event_overflow();
            }
            // Lost nftables notifications are treated as a change of the table: one look.
            shared.raise(Changes::NFT);
        }
    };
    let on_datagram = |datagram: &[u8]| {
        let (mut relevant, mut ignored) = (0u64, 0u64);
        for msg in messages(datagram) {
            match msg.map(|m| nft::concerns_table(m, crate::firewall::TABLE)) {
                Ok(nft::Verdict::Ignored) => ignored += 1,
                // Relevant, or malformed (then it may have been about the table: look).
                _ => relevant += 1,
            }
        }
        if let Some(m) = &metrics {
            m.observe_kernel_events(relevant, ignored);
        }
        if relevant > 0 {
            tracing::debug!("nftables change concerning overlay's table");
            shared.raise(Changes::NFT);
        }
    };
    read_loop(socket, "nftables", on_datagram, overflow).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_combine_and_print() {
        let mut c = Changes::default();
        assert!(c.is_empty());
        assert_eq!(c.to_string(), "none");
        c |= Changes::ROUTE;
        c |= Changes::FDB | Changes::NFT;
        assert!(c.contains(Changes::ROUTE) && c.intersects(Changes::NFT | Changes::LINK));
        assert!(!c.contains(Changes::LINK));
        assert_eq!(c.to_string(), "route+fdb+nftables");
    }

    fn header(len: u32, kind: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v
    }

    #[test]
    fn datagrams_split_into_messages_and_stop_at_garbage() {
        let mut d = header(20, 100);
        d.extend_from_slice(&[1, 2, 3, 4]);
        d.extend(header(18, 101));
        d.extend_from_slice(&[9, 9, 0, 0]); // 2 bytes of payload + 2 of padding
        let got: Vec<_> = messages(&d).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].unwrap().len(), 20);
        assert_eq!(got[1].unwrap().len(), 18);

        // A length that runs past the end, or one shorter than a header, ends the datagram.
        let mut bad = header(400, 100);
        bad.extend_from_slice(&[0; 8]);
        assert_eq!(messages(&bad).collect::<Vec<_>>(), vec![Err(())]);
        assert_eq!(messages(&header(3, 100)).collect::<Vec<_>>(), vec![Err(())]);
        assert_eq!(messages(&[]).count(), 0);
        assert_eq!(messages(&[1, 2, 3]).collect::<Vec<_>>(), vec![Err(())]);
    }

    #[test]
    fn random_datagrams_never_panic_the_splitter_or_filters() {
        use overlay_lab::fuzz::run_for;
        use proptest::prelude::*;
        let mut filter = rtnl::RouteFilter::new(&[]);
        filter.set_networks(vec!["10.1.0.0/16".parse().unwrap()]);
        let filter = std::cell::RefCell::new(filter);
        run_for(
            "kernel notification datagrams",
            prop::collection::vec(any::<u8>(), 0..600),
            |bytes| {
                for m in messages(&bytes).flatten() {
                    let _ = nft::concerns_table(m, "overlay");
                    if let Ok(NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(msg),
                        ..
                    }) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m)
                    {
                        filter.borrow_mut().classify(&msg);
                    }
                }
                Ok(())
            },
        );
    }
}
