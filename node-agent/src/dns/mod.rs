//! The agent's DNS server: each network's names answered on the network's gateway address,
//! port 53, UDP and TCP, in the host namespace; everything else forwarded to the host's own
//! resolvers through a bounded cache.
//!
//! The agent feeds it every network's [`Zone`] (from the Watch stream, so names resolve while
//! the controllers are down) with [`DnsServer::update`], which swaps the whole table at once.
//! A query that arrives on network N's gateway is answered for N's names only:
//! - `A` for `name` and `name.<domain>` (any case; every endpoint sharing a name, in rotating
//!   order), `AAAA` likewise with the IPv6 addresses of a dual-stack network's endpoints, `ANY`
//!   with both families, `PTR` for N's addresses (`in-addr.arpa.`, and `ip6.arpa.` for a
//!   dual-stack N's IPv6 CIDR); `NODATA` for other types of a known name, `AAAA` included for
//!   a name without IPv6 addresses (busybox asks it with every `A`, so it must be answered at
//!   once); `NXDOMAIN` for unknown names in N's zone, for N's addresses without a name, and
//!   for any other network's zone or addresses (either family);
//! - only from N's own IPv4 addresses (`REFUSED` otherwise: another network's workloads that
//!   reach this address through the host learn nothing); the server listens on the IPv4
//!   gateway only, so a dual-stack workload asks over IPv4 for its `AAAA` too;
//! - anything else goes to the resolvers of `/etc/resolv.conf` (re-read when it changes; our
//!   own gateways left out), with at most [`DnsConfig::max_in_flight`] queries upstream at
//!   once and a cache bounded in entries and bytes; `SERVFAIL` at once without an upstream.
//!
//! To point a bare namespace (`overlayctl endpoint attach` writes nothing into a namespace it
//! does not own) at it: `nameserver <gateway>` and `search <network>.overlay` in the
//! namespace's resolv.conf, e.g. `/etc/netns/<name>/resolv.conf` for `ip netns exec`.
//!
//! Modules: [`feed`] (zones from the desired state), [`zone`] (the answering policy, pure), [`reply`] (wire in and out, by
//! hickory-proto), [`cache`] and [`forward`] (upstreams), [`resolv`] (resolv.conf),
//! [`listener`] (sockets and bounds), [`server`] (the table and the listeners' lifecycle).
//! Counters: [`crate::metrics::DnsMetrics`].

pub mod cache;
pub mod feed;
pub mod forward;
pub mod listener;
pub mod reply;
pub mod resolv;
pub mod server;
pub mod zone;

pub use cache::Limits as CacheLimits;
pub use server::{DnsConfig, DnsError, DnsServer, ListenerStatus, UpdateReport};
pub use zone::{Ttls, Zone, ZoneError, network_domain};
