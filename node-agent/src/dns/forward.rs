//! Queries that are not ours go to the host's resolvers: from the cache when it has them, else
//! asked upstream (UDP, TCP when the answer is truncated), each attempt with a timeout, at most
//! a bounded number at once: one socket per query in flight, never more.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::cache::{Cache, Key, Limits, Records};
use super::reply::EDNS_PAYLOAD;
use crate::metrics::DnsMetrics;

/// An upstream is tried at most this many times per query (one attempt per upstream).
const MAX_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver")]
    NoUpstream,
    #[error("upstream {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("upstream {0} sent an answer that does not parse")]
    Malformed(SocketAddr),
}

impl ForwardError {
    fn reason(&self) -> &'static str {
        match self {
            ForwardError::NoUpstream => "none",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Io(..) => "io",
            ForwardError::Malformed(_) => "malformed",
        }
    }
}

pub struct Forwarder {
    cache: Mutex<Cache>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    metrics: DnsMetrics,
}

/// The right to one query in flight upstream; the gauge follows it.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: DnsMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight().dec();
    }
}

impl Forwarder {
    pub fn new(limits: Limits, max_in_flight: usize, timeout: Duration, metrics: DnsMetrics) -> Self {
        Self {
            cache: Mutex::new(Cache::new(limits)),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
            metrics,
        }
    }

    pub fn cached(&self, q: &Query) -> Option<Records> {
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&Key::of(q), Instant::now());
        if hit.is_some() {
            self.metrics.cache_hit();
        }
        hit
    }

    /// A slot for one more query upstream, unless the bound is reached.
    pub fn slot(&self) -> Option<Slot> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        self.metrics.in_flight().inc();
        Some(Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    pub fn clear_cache(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clear();
        self.metrics.set_cache(0, 0);
    }

    /// Asks `upstreams` in order (the next after a timeout, an error, SERVFAIL or REFUSED);
    /// a good answer is cached. The last upstream's error answer, if any, is the answer when
    /// none does better.
    pub async fn fetch(
        &self,
        q: &Query,
        upstreams: &[SocketAddr],
        _slot: &Slot,
    ) -> Result<Records, ForwardError> {
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        self.metrics.forwarded();
        let mut fallback: Option<Records> = None;
        let mut last_error = ForwardError::NoUpstream;
        for up in upstreams.iter().take(MAX_ATTEMPTS) {
            match self.ask(*up, q).await {
                Ok((records, _))
                    if matches!(records.rcode, ResponseCode::ServFail | ResponseCode::Refused) =>
                {
                    self.metrics.upstream_error("rcode");
                    fallback = Some(records);
                }
                Ok((records, size)) => {
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.insert(Key::of(q), records.clone(), size, Instant::now());
                    self.metrics.set_cache(cache.len(), cache.bytes());
                    return Ok(records);
                }
                Err(e) => {
                    tracing::debug!(error = %e, query = %q, "upstream attempt failed");
                    self.metrics.upstream_error(e.reason());
                    last_error = e;
                }
            }
        }
        fallback.ok_or(last_error)
    }

    /// One attempt at `up`: its answer and its size on the wire.
    async fn ask(&self, up: SocketAddr, q: &Query) -> Result<(Records, usize), ForwardError> {
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        let mut query = Query::query(q.name().to_lowercase(), q.query_type());
        query.set_query_class(q.query_class());
        msg.add_query(query);
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.edns = Some(edns);
        let bytes = msg.to_vec().map_err(|_| ForwardError::Malformed(up))?;
        let id = msg.metadata.id;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = tokio::time::timeout_at(deadline, ask_udp(up, &bytes, id, q))
            .await
            .map_err(|_| ForwardError::Timeout(up))??;
        let (resp, size) = if resp.0.metadata.truncation {
            let deadline = tokio::time::Instant::now() + self.timeout;
            tokio::time::timeout_at(deadline, ask_tcp(up, &bytes, id, q))
                .await
                .map_err(|_| ForwardError::Timeout(up))??
        } else {
            resp
        };
        Ok((
            Records {
                rcode: resp.metadata.response_code,
                answers: resp.answers,
                authorities: resp.authorities,
                additionals: resp.additionals,
            },
            size,
        ))
    }
}

/// Whether `resp` answers our query `id` for `q` (anything else on the socket is ignored:
/// a late answer to another query, or an off-path guess).
fn answers(resp: &Message, id: u16, q: &Query) -> bool {
    resp.metadata.message_type == MessageType::Response
        && resp.metadata.id == id
        && resp.queries.len() == 1
        && resp.queries[0].query_type() == q.query_type()
        && resp.queries[0].query_class() == q.query_class()
        && resp.queries[0].name().eq_ignore_root(q.name())
}

/// Over a connected UDP socket of its own (random source port), so only `up` can answer.
async fn ask_udp(up: SocketAddr, bytes: &[u8], id: u16, q: &Query) -> Result<(Message, usize), ForwardError> {
    let local: SocketAddr = if up.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io = |e| ForwardError::Io(up, e);
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(up).await.map_err(io)?;
    sock.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(EDNS_PAYLOAD) * 2];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        match Message::from_vec(&buf[..n]) {
            Ok(resp) if answers(&resp, id, q) => return Ok((resp, n)),
            _ => continue,
        }
    }
}

async fn ask_tcp(up: SocketAddr, bytes: &[u8], id: u16, q: &Query) -> Result<(Message, usize), ForwardError> {
    let io = |e| ForwardError::Io(up, e);
    let mut stream = TcpStream::connect(up).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::Malformed(up))?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    stream.write_all(&out).await.map_err(io)?;
    let n = usize::from(stream.read_u16().await.map_err(io)?);
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.map_err(io)?;
    match Message::from_vec(&buf) {
        Ok(resp) if answers(&resp, id, q) => Ok((resp, n)),
        _ => Err(ForwardError::Malformed(up)),
    }
}
