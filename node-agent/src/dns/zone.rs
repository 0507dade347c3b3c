//! The names the server answers for: each network's [`Zone`] as fed by the agent, checked and
//! compiled into a [`Table`] that decides what to do with a query. Pure (no sockets), so the
//! whole answering policy is unit-tested here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// At most this many records of one type in one answer (a name shared by many endpoints still
/// rotates through all of them, this many at a time; `ANY` carries this many of each family),
/// so that no query costs more than a small packet.
pub const MAX_ANSWERS: usize = 32;

/// One network's names, as the agent learns them from the Watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// The network's name (logs and errors only).
    pub network: String,
    /// The zone, e.g. `blue.overlay.` (see [`network_domain`]); the trailing dot is optional.
    pub domain: String,
    /// This host's gateway address in the network: where the server listens for it.
    pub gateway: Ipv4Addr,
    /// The network's whole CIDR (every host's subnet): queries are accepted only from it, and
    /// PTR queries for its addresses are answered here.
    pub cidr: Ipv4Network,
    /// The network's whole IPv6 CIDR, for a dual-stack network: PTR queries (`ip6.arpa.`) for
    /// its addresses are answered here, and [`Zone::names6`] must be inside it. Queries are
    /// still accepted only from [`Zone::cidr`] (the server listens on the IPv4 gateway).
    pub cidr6: Option<Ipv6Network>,
    /// Relative names (`db`, `web-1`, `db.svc`), case-insensitive, each to the IPv4 addresses
    /// of every endpoint that carries it (answered in rotating order, as Docker does).
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The same for IPv6 (`AAAA`): the IPv6 addresses of the endpoints that have one. A name
    /// may be in either map or in both; one without IPv6 addresses answers `AAAA` with NODATA.
    pub names6: BTreeMap<String, Vec<Ipv6Addr>>,
}

/// The zone of network `network` by convention, `<network>.overlay.`: for the CNI result's
/// search domain and the Docker plugin, so that every feeder agrees.
pub fn network_domain(network: &str) -> String {
    format!("{}.overlay.", network.to_ascii_lowercase())
}

/// A zone or a name of an update that could not be used; the rest of the update still is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("network {network}: zone skipped: domain {domain:?} {reason}")]
    Domain {
        network: String,
        domain: String,
        reason: &'static str,
    },
    #[error("network {network}: zone skipped: gateway {gateway} is outside {cidr}")]
    GatewayOutside {
        network: String,
        gateway: Ipv4Addr,
        cidr: Ipv4Network,
    },
    #[error("network {network}: zone skipped: its {what} is network {other}'s already")]
    Taken {
        network: String,
        what: String,
        other: String,
    },
    #[error("network {network}: name {name:?} skipped: {reason}")]
    Name {
        network: String,
        name: String,
        reason: &'static str,
    },
    #[error("network {network}: name {name}: address {addr} skipped: outside {cidr}")]
    AddressOutside {
        network: String,
        name: String,
        addr: IpAddr,
        cidr: IpNetwork,
    },
    #[error("network {network}: name {name}: address {addr} skipped: the network has no IPv6 CIDR")]
    NoCidr6 {
        network: String,
        name: String,
        addr: Ipv6Addr,
    },
}

/// TTLs of what the server answers itself: short, since names follow endpoints that come and
/// go, and a client's cache must not outlive a detach by much.
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    pub positive: u32,
    pub negative: u32,
}

/// What to do with one query that arrived on one gateway.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered here, authoritatively.
    Local {
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
    },
    /// Not ours: ask the host's resolvers.
    Forward,
    /// Not answered for this client: the gateway has no zone (any more), the source is not in
    /// the network, or the class is not IN.
    Refused,
}

/// Every network's compiled zone, keyed by gateway. Built whole and swapped whole on each
/// update, so a query sees one update or the next, never half of one.
#[derive(Debug, Default)]
pub struct Table {
    zones: HashMap<Ipv4Addr, Compiled>,
    /// Round-robin position shared by every answer with several records.
    rotation: AtomicUsize,
}

#[derive(Debug)]
struct Compiled {
    domain: LowerName,
    domain_name: Name,
    cidr: Ipv4Network,
    cidr6: Option<Ipv6Network>,
    ttl: u32,
    /// Full names (`db.blue.overlay.`) to addresses.
    forward: HashMap<LowerName, Addresses>,
    /// Names that exist only as parents of others (`svc.blue.overlay.` for `db.svc`): NODATA,
    /// not NXDOMAIN.
    interior: HashSet<LowerName>,
    /// Both families' addresses to their names.
    reverse: HashMap<IpAddr, Vec<Name>>,
    soa: Record,
    /// The SOA of `cidr`'s reverse zone, and of `cidr6`'s when there is one.
    reverse_soa: Record,
    reverse_soa6: Option<Record>,
}

/// One name's addresses, each family in the order answered (before rotation), no duplicates.
#[derive(Debug, Default)]
struct Addresses {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Addresses {
    fn add(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) if !self.v4.contains(&a) => self.v4.push(a),
            IpAddr::V6(a) if !self.v6.contains(&a) => self.v6.push(a),
            _ => {}
        }
    }
}

impl Table {
    /// Compiles `zones`; what cannot be used is left out and reported. `serial` numbers the
    /// zones' SOA records (one per update). The first zone to claim a gateway or a domain
    /// keeps it.
    pub fn build(zones: Vec<Zone>, ttls: Ttls, serial: u32) -> (Table, Vec<ZoneError>) {
        let mut problems = Vec::new();
        let mut table = Table::default();
        let mut owners: HashMap<String, String> = HashMap::new();
        for zone in zones {
            let network = zone.network.clone();
            let gateway = zone.gateway;
            let compiled = match compile(zone, ttls, serial, &mut problems) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let keys = [
                format!("gateway {gateway}"),
                format!("domain {}", compiled.domain_name),
            ];
            if let Some((what, other)) = keys
                .iter()
                .find_map(|k| owners.get(k).map(|o| (k.clone(), o.clone())))
            {
                problems.push(ZoneError::Taken { network, what, other });
                continue;
            }
            for k in keys {
                owners.insert(k, network.clone());
            }
            table.zones.insert(gateway, compiled);
        }
        (table, problems)
    }

    /// The gateway addresses that have a zone.
    pub fn gateways(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.zones.keys().copied()
    }

    pub fn is_gateway(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if self.zones.contains_key(&v4))
    }

    /// Names over all zones.
    pub fn names(&self) -> usize {
        self.zones.values().map(|z| z.forward.len()).sum()
    }

    /// The answering policy: `query` arrived on `gateway` from `source`.
    pub fn decide(&self, gateway: Ipv4Addr, source: IpAddr, query: &Query) -> Decision {
        let Some(zone) = self.zones.get(&gateway) else {
            return Decision::Refused;
        };
        let from_network = match source {
            IpAddr::V4(v4) => zone.cidr.contains(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| zone.cidr.contains(v4)),
        };
        if !from_network || query.query_class() != DNSClass::IN {
            return Decision::Refused;
        }
        let qname = query.name();
        let lower = LowerName::new(qname);
        let qtype = query.query_type();
        if let Some(addr) = reverse_addr(qname) {
            if zone.holds(addr) {
                return zone.pointers(qname, addr, qtype, self.next());
            }
            if self.zones.values().any(|z| z.holds(addr)) {
                // Another network's address: its names are not this network's to learn.
                return nxdomain(None);
            }
            return Decision::Forward;
        }
        if zone.domain.zone_of(&lower) {
            return zone.lookup(qname, &lower, qtype, self.next());
        }
        if self.zones.values().any(|z| z.domain.zone_of(&lower)) {
            // Another network's zone: not resolvable from here, and not the upstream's business.
            return nxdomain(None);
        }
        // A bare `db`: this network's `db` if it has one, else whatever the host resolves.
        if qname.num_labels() == 1
            && let Ok(full) = qname.clone().append_domain(&zone.domain_name)
            && let Some(addrs) = zone.forward.get(&LowerName::new(&full))
        {
            return zone.addresses(qname, addrs, qtype, self.next());
        }
        Decision::Forward
    }

    fn next(&self) -> usize {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }
}

impl Compiled {
    /// `addr` is one of this network's (either family).
    fn holds(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.cidr.contains(a),
            IpAddr::V6(a) => self.cidr6.is_some_and(|c| c.contains(a)),
        }
    }

    /// `qname` is inside this zone.
    fn lookup(&self, qname: &Name, lower: &LowerName, qtype: RecordType, turn: usize) -> Decision {
        if *lower == self.domain {
            return match qtype {
                RecordType::SOA => Decision::Local {
                    rcode: ResponseCode::NoError,
                    answers: vec![self.soa.clone()],
                    authorities: Vec::new(),
                },
                _ => nodata(&self.soa),
            };
        }
        match self.forward.get(lower) {
            Some(addrs) => self.addresses(qname, addrs, qtype, turn),
            None if self.interior.contains(lower) => nodata(&self.soa),
            None => nxdomain(Some(&self.soa)),
        }
    }

    fn addresses(&self, qname: &Name, addrs: &Addresses, qtype: RecordType, turn: usize) -> Decision {
        let record = |data| Record::from_rdata(qname.clone(), self.ttl, data);
        let a = || rotated(&addrs.v4, turn).map(|a| record(RData::A(A(*a))));
        let aaaa = || rotated(&addrs.v6, turn).map(|a| record(RData::AAAA(AAAA(*a))));
        let answers: Vec<Record> = match qtype {
            RecordType::A => a().collect(),
            RecordType::AAAA => aaaa().collect(),
            RecordType::ANY => a().chain(aaaa()).collect(),
            _ => Vec::new(),
        };
        if answers.is_empty() {
            // AAAA of a name without IPv6 addresses (busybox asks it with every A), MX, TXT...:
            // the name exists, with no such data.
            return nodata(&self.soa);
        }
        Decision::Local {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
        }
    }

    /// `qname` is the reverse name of `addr`, an address of this network.
    fn pointers(&self, qname: &Name, addr: IpAddr, qtype: RecordType, turn: usize) -> Decision {
        let soa = match addr {
            IpAddr::V6(_) => self.reverse_soa6.as_ref().unwrap_or(&self.reverse_soa),
            IpAddr::V4(_) => &self.reverse_soa,
        };
        let Some(names) = self.reverse.get(&addr) else {
            return nxdomain(Some(soa));
        };
        match qtype {
            RecordType::PTR | RecordType::ANY => Decision::Local {
                rcode: ResponseCode::NoError,
                answers: rotated(names, turn)
                    .map(|n| Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(n.clone()))))
                    .collect(),
                authorities: Vec::new(),
            },
            _ => nodata(soa),
        }
    }
}

/// `items` starting at `turn` (modulo), wrapping, at most [`MAX_ANSWERS`].
fn rotated<T>(items: &[T], turn: usize) -> impl Iterator<Item = &T> {
    let start = if items.is_empty() { 0 } else { turn % items.len() };
    items[start..]
        .iter()
        .chain(items[..start].iter())
        .take(MAX_ANSWERS)
}

fn nodata(soa: &Record) -> Decision {
    Decision::Local {
        rcode: ResponseCode::NoError,
        answers: Vec::new(),
        authorities: vec![soa.clone()],
    }
}

fn nxdomain(soa: Option<&Record>) -> Decision {
    Decision::Local {
        rcode: ResponseCode::NXDomain,
        answers: Vec::new(),
        authorities: soa.into_iter().cloned().collect(),
    }
}

/// The address of `d.c.b.a.in-addr.arpa.` or of the 32 nibbles of `<...>.ip6.arpa.`, when
/// `name` is exactly that (not a shorter prefix).
fn reverse_addr(name: &Name) -> Option<IpAddr> {
    if !matches!(name.num_labels(), 6 | 34) {
        return None;
    }
    let net = name.parse_arpa_name().ok()?;
    match net.addr() {
        IpAddr::V4(addr) if net.prefix_len() == 32 => Some(IpAddr::V4(addr)),
        IpAddr::V6(addr) if net.prefix_len() == 128 => Some(IpAddr::V6(addr)),
        _ => None,
    }
}

/// The reverse zone that holds `cidr`'s addresses, on an octet boundary:
/// `1.10.in-addr.arpa.` for 10.1.0.0/16, `10.in-addr.arpa.` for 10.0.0.0/12.
fn reverse_zone(cidr: Ipv4Network) -> Name {
    let octets = usize::from(cidr.prefix() / 8);
    let labels: Vec<String> = cidr.network().octets()[..octets]
        .iter()
        .rev()
        .map(|o| o.to_string())
        .chain(["in-addr".to_string(), "arpa".to_string()])
        .collect();
    arpa_name(&labels)
}

/// The reverse zone that holds `cidr`'s addresses, on a nibble boundary:
/// `0.1.0.0.0.0.d.f.ip6.arpa.` for fd00:10::/32.
fn reverse_zone6(cidr: Ipv6Network) -> Name {
    let nibbles: Vec<u8> = cidr
        .network()
        .octets()
        .iter()
        .flat_map(|o| [o >> 4, o & 0xf])
        .take(usize::from(cidr.prefix() / 4))
        .collect();
    let labels: Vec<String> = nibbles
        .iter()
        .rev()
        .map(|n| format!("{n:x}"))
        .chain(["ip6".to_string(), "arpa".to_string()])
        .collect();
    arpa_name(&labels)
}

fn arpa_name(labels: &[String]) -> Name {
    let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    name
}

fn soa_record(owner: Name, domain: &Name, negative_ttl: u32, serial: u32) -> Record {
    let host = |label: &str| {
        Name::from_labels([label.as_bytes()])
            .and_then(|n| n.append_domain(domain))
            .unwrap_or_else(|_| domain.clone())
    };
    let soa = SOA::new(
        host("ns"),
        host("hostmaster"),
        serial,
        3600,
        600,
        86_400,
        negative_ttl,
    );
    Record::from_rdata(owner, negative_ttl, RData::SOA(soa))
}

fn compile(
    zone: Zone,
    ttls: Ttls,
    serial: u32,
    problems: &mut Vec<ZoneError>,
) -> Result<Compiled, ZoneError> {
    let Zone {
        network,
        domain,
        gateway,
        cidr,
        cidr6,
        names,
        names6,
    } = zone;
    let domain_name = parse_domain(&domain).map_err(|reason| ZoneError::Domain {
        network: network.clone(),
        domain: domain.clone(),
        reason,
    })?;
    if !cidr.contains(gateway) {
        return Err(ZoneError::GatewayOutside {
            network,
            gateway,
            cidr,
        });
    }
    // Both families under each spelling of a name, so that a bad name is reported once.
    let mut both: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for (name, addrs) in names {
        both.entry(name)
            .or_default()
            .extend(addrs.into_iter().map(IpAddr::V4));
    }
    for (name, addrs) in names6 {
        both.entry(name)
            .or_default()
            .extend(addrs.into_iter().map(IpAddr::V6));
    }
    let mut forward: HashMap<LowerName, Addresses> = HashMap::new();
    let mut interior = HashSet::new();
    let mut reverse: HashMap<IpAddr, Vec<Name>> = HashMap::new();
    for (name, addrs) in both {
        let full = match parse_relative(&name).and_then(|relative| {
            relative
                .append_domain(&domain_name)
                .map_err(|_| "is too long with the domain")
        }) {
            Ok(full) => full,
            Err(reason) => {
                problems.push(ZoneError::Name {
                    network: network.clone(),
                    name,
                    reason,
                });
                continue;
            }
        };
        let mut kept: Vec<IpAddr> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let outside = match (addr, cidr6) {
                (IpAddr::V4(a), _) if !cidr.contains(a) => Some(IpNetwork::V4(cidr)),
                (IpAddr::V6(a), Some(c)) if !c.contains(a) => Some(IpNetwork::V6(c)),
                (IpAddr::V6(a), None) => {
                    problems.push(ZoneError::NoCidr6 {
                        network: network.clone(),
                        name: name.clone(),
                        addr: a,
                    });
                    continue;
                }
                _ => None,
            };
            if let Some(cidr) = outside {
                problems.push(ZoneError::AddressOutside {
                    network: network.clone(),
                    name: name.clone(),
                    addr,
                    cidr,
                });
            } else if !kept.contains(&addr) {
                kept.push(addr);
            }
        }
        if kept.is_empty() {
            continue;
        }
        for addr in &kept {
            let names = reverse.entry(*addr).or_default();
            if !names.contains(&full) {
                names.push(full.clone());
            }
        }
        let mut parent = full.base_name();
        while parent.num_labels() > domain_name.num_labels() {
            interior.insert(LowerName::new(&parent));
            parent = parent.base_name();
        }
        // Two spellings of one name (`DB` and `db`) share it.
        let entry = forward.entry(LowerName::new(&full)).or_default();
        for addr in kept {
            entry.add(addr);
        }
    }
    Ok(Compiled {
        domain: LowerName::new(&domain_name),
        soa: soa_record(domain_name.clone(), &domain_name, ttls.negative, serial),
        reverse_soa: soa_record(reverse_zone(cidr), &domain_name, ttls.negative, serial),
        reverse_soa6: cidr6.map(|c| soa_record(reverse_zone6(c), &domain_name, ttls.negative, serial)),
        domain_name,
        cidr,
        cidr6,
        ttl: ttls.positive,
        forward,
        interior,
        reverse,
    })
}

/// Hostname labels only (letters, digits, `-`, `_`; 1..63 bytes): what the feeders' names
/// are, and nothing a DNS name could smuggle (spaces, dots inside labels, control bytes).
fn check_labels(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("is empty");
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("has a character other than letters, digits, '-' and '_'");
        }
    }
    Ok(())
}

fn parse_domain(domain: &str) -> Result<Name, &'static str> {
    let text = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    check_labels(&text)?;
    if text == "arpa" || text.ends_with(".arpa") {
        return Err("is inside arpa.");
    }
    let mut name = Name::from_ascii(&text).map_err(|_| "is not a DNS name")?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_relative(name: &str) -> Result<Name, &'static str> {
    let text = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    check_labels(&text)?;
    let mut name = Name::from_ascii(&text).map_err(|_| "is not a DNS name")?;
    name.set_fqdn(false);
    Ok(name)
}

#[cfg(test)]
mod tests;
