//! The forwarding cache: upstream answers by question, bounded in entries and in bytes (the
//! oldest entry goes first), each kept no longer than its TTL; negative answers only briefly.
//! A workload asking a million different names costs at most the bounds.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};

/// The part of an upstream response worth keeping: everything but the header and OPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Longest a positive answer is kept, whatever its TTL says.
    pub max_ttl: u32,
    /// Longest a negative answer (NXDOMAIN, NODATA) is kept.
    pub max_negative_ttl: u32,
    /// How long a negative answer without an SOA is kept.
    pub default_negative_ttl: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    name: LowerName,
    qtype: RecordType,
    qclass: DNSClass,
}

impl Key {
    pub fn of(q: &Query) -> Self {
        Self {
            name: LowerName::new(q.name()),
            qtype: q.query_type(),
            qclass: q.query_class(),
        }
    }
}

struct Entry {
    records: Records,
    stored: Instant,
    ttl: u32,
    size: usize,
    seq: u64,
}

pub struct Cache {
    limits: Limits,
    map: HashMap<Key, Entry>,
    /// Insertion order, for eviction; stale positions (replaced entries) are skipped.
    order: VecDeque<(u64, Key)>,
    seq: u64,
    bytes: usize,
}

/// Bookkeeping per entry beyond its wire size (key, vectors, map slot).
const ENTRY_OVERHEAD: usize = 128;

impl Cache {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cached answer to `key`, its TTLs lowered by the time it spent here.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Records> {
        let entry = self.map.get(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            self.remove(key);
            return None;
        }
        let left = entry.ttl - age;
        let mut records = entry.records.clone();
        for r in records
            .answers
            .iter_mut()
            .chain(records.authorities.iter_mut())
            .chain(records.additionals.iter_mut())
        {
            r.ttl = r.ttl.min(entry.ttl).saturating_sub(age).clamp(1, left);
        }
        Some(records)
    }

    /// Keeps `records` for the TTL they deserve (if any); `wire_size` is the response's size.
    pub fn insert(&mut self, key: Key, records: Records, wire_size: usize, now: Instant) {
        let Some(ttl) = cache_ttl(&records, &self.limits) else {
            return;
        };
        let size = wire_size + key.name.len() + ENTRY_OVERHEAD;
        if size > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        self.remove(&key);
        self.seq += 1;
        self.order.push_back((self.seq, key.clone()));
        self.bytes += size;
        self.map.insert(
            key,
            Entry {
                records,
                stored: now,
                ttl,
                size,
                seq: self.seq,
            },
        );
        while self.map.len() > self.limits.max_entries || self.bytes > self.limits.max_bytes {
            let Some((seq, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.remove(&oldest);
            }
        }
        // Positions of replaced entries pile up only until this.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(seq, k)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.size;
        }
    }

    /// Drops every entry (the upstreams changed: their answers may differ).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// How long `records` may be kept: the smallest answer TTL for a positive answer; for a
/// negative one the SOA's (RFC 2308: the smaller of its TTL and minimum), or a default without
/// an SOA, capped low. Errors (SERVFAIL, REFUSED...) and truncated answers are not kept.
pub fn cache_ttl(records: &Records, limits: &Limits) -> Option<u32> {
    let ttl = match records.rcode {
        ResponseCode::NoError if !records.answers.is_empty() => records
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(limits.max_ttl)),
        ResponseCode::NoError | ResponseCode::NXDomain => Some(
            records
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(limits.default_negative_ttl)
                .min(limits.max_negative_ttl),
        ),
        _ => None,
    }?;
    (ttl > 0).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn secs(s: u64) -> std::time::Duration {
        std::time::Duration::from_secs(s)
    }

    const LIMITS: Limits = Limits {
        max_entries: 3,
        max_bytes: 1 << 20,
        max_ttl: 3600,
        max_negative_ttl: 10,
        default_negative_ttl: 2,
    };

    fn a(name: &str, ttl: u32) -> Records {
        Records {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                Name::from_str(name).unwrap(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            authorities: vec![],
            additionals: vec![],
        }
    }

    fn key(name: &str) -> Key {
        Key::of(&Query::query(Name::from_str(name).unwrap(), RecordType::A))
    }

    fn negative(soa_ttl: u32, minimum: u32) -> Records {
        let n = Name::from_str("example.").unwrap();
        Records {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![Record::from_rdata(
                n.clone(),
                soa_ttl,
                RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
            )],
            additionals: vec![],
        }
    }

    #[test]
    fn ttls_are_respected_and_counted_down() {
        let mut c = Cache::new(LIMITS);
        let t0 = Instant::now();
        c.insert(key("a.example."), a("a.example.", 30), 50, t0);
        let got = c.get(&key("A.EXAMPLE."), t0 + secs(10)).unwrap();
        assert_eq!(got.answers[0].ttl, 20);
        assert!(c.get(&key("a.example."), t0 + secs(30)).is_none());
        assert!(c.is_empty(), "an expired entry is dropped when met");
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn negative_answers_are_kept_briefly_and_errors_not_at_all() {
        assert_eq!(cache_ttl(&negative(3600, 3600), &LIMITS), Some(10));
        assert_eq!(cache_ttl(&negative(3600, 4), &LIMITS), Some(4));
        assert_eq!(cache_ttl(&negative(3, 3600), &LIMITS), Some(3));
        let mut no_soa = negative(1, 1);
        no_soa.authorities.clear();
        assert_eq!(cache_ttl(&no_soa, &LIMITS), Some(2));
        let mut nodata = no_soa.clone();
        nodata.rcode = ResponseCode::NoError;
        assert_eq!(cache_ttl(&nodata, &LIMITS), Some(2));
        let mut fail = a("a.", 300);
        fail.rcode = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&fail, &LIMITS), None);
        assert_eq!(cache_ttl(&a("a.", 0), &LIMITS), None);
        assert_eq!(cache_ttl(&a("a.", 86_400 * 7), &LIMITS), Some(3600));
    }

    #[test]
    fn entries_and_bytes_are_bounded_oldest_first() {
        let mut c = Cache::new(LIMITS);
        let t0 = Instant::now();
        for i in 0..10 {
            let n = format!("n{i}.example.");
            c.insert(key(&n), a(&n, 300), 50, t0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&key("n9.example."), t0).is_some());
        assert!(c.get(&key("n6.example."), t0).is_none());
        // Replacing one entry over and over neither grows the cache nor its order queue.
        for _ in 0..10_000 {
            c.insert(key("n9.example."), a("n9.example.", 300), 50, t0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.order.len() <= 2 * 3 + 64);

        let small = Limits {
            max_bytes: 1000,
            max_entries: 1000,
            ..LIMITS
        };
        let mut c = Cache::new(small);
        for i in 0..100 {
            let n = format!("n{i}.example.");
            c.insert(key(&n), a(&n, 300), 200, t0);
        }
        assert!(c.bytes() <= 1000, "{}", c.bytes());
        assert!(c.len() >= 2);
        // An entry larger than the whole budget is not kept.
        c.insert(key("huge.example."), a("huge.example.", 300), 5000, t0);
        assert!(c.get(&key("huge.example."), t0).is_none());
    }
}
