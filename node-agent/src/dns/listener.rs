//! One gateway's port 53, UDP and TCP, and what happens to each message received there.
//!
//! Sockets are bound with `IP_FREEBIND`: the gateway address lives on the network's bridge,
//! which the reconciler may create after the zone arrives (or re-create); a freebind socket
//! binds anyway and receives as soon as the address exists, with no retry loop.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, RawFd};

use hickory_proto::op::{Message, ResponseCode};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, SockaddrLike, recvmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::forward::{Forwarder, Slot};
use super::reply::{self, Incoming};
use super::resolv::Upstreams;
use super::zone::{Decision, Table};
use crate::metrics::DnsMetrics;

/// Largest datagram read; a bigger query is cut and answered FORMERR.
const UDP_BUFFER: usize = 4096;
/// Asked of the kernel for each UDP socket, so that a burst waits in the socket, not lost.
const UDP_RECV_BUFFER: usize = 1 << 20;
const TCP_BACKLOG: i32 = 256;
/// A TCP response above this cannot be framed (the length prefix is 16 bits).
const TCP_LIMIT: usize = 65_535;

/// What every listener shares: the table, the forwarder and the bounds.
pub struct Shared {
    pub table: RwLock<Arc<Table>>,
    pub upstreams: Arc<Upstreams>,
    pub forwarder: Forwarder,
    pub metrics: DnsMetrics,
    /// One permit per open TCP connection, over all gateways.
    pub tcp_slots: Arc<Semaphore>,
    /// A TCP client has this long for each whole query, and for taking each response.
    pub tcp_timeout: Duration,
}

/// What to do with one received message.
pub enum Step {
    Reply(Vec<u8>),
    /// Ask upstream first (the caller decides where that runs).
    Forward(Box<Job>),
    Nothing,
}

pub struct Job {
    req: Message,
    upstreams: Vec<SocketAddr>,
    slot: Slot,
    limit: usize,
}

impl Shared {
    /// The table of the moment: in-flight queries keep the one they started with.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// The host's resolvers, less our own gateways (a resolv.conf pointing at us would loop).
    fn upstreams_for(&self, table: &Table) -> Vec<SocketAddr> {
        self.upstreams
            .get()
            .iter()
            .filter(|a| !table.is_gateway(a.ip()))
            .copied()
            .collect()
    }

    /// Everything but the upstream round trip: parsing, our zones, the cache, the bounds.
    pub fn handle(&self, gateway: Ipv4Addr, src: SocketAddr, bytes: &[u8], transport: &'static str) -> Step {
        self.metrics.query(transport);
        let req = match reply::parse(bytes) {
            Incoming::Query(m) => m,
            Incoming::Error(bytes, rcode) => {
                self.metrics.response(reply::rcode_label(rcode));
                return Step::Reply(bytes);
            }
            Incoming::Drop(reason) => {
                self.metrics.dropped(reason);
                return Step::Nothing;
            }
        };
        let limit = if transport == "udp" {
            reply::udp_limit(&req)
        } else {
            TCP_LIMIT
        };
        let table = self.table();
        let query = &req.queries[0];
        match table.decide(gateway, src.ip(), query) {
            Decision::Local {
                rcode,
                answers,
                authorities,
            } => self.reply(&reply::local(&req, rcode, answers, authorities), limit),
            Decision::Refused => self.reply(&reply::error(&req, ResponseCode::Refused), limit),
            Decision::Forward => {
                if let Some(records) = self.forwarder.cached(query) {
                    return self.reply(&reply::relayed(&req, &records), limit);
                }
                let upstreams = self.upstreams_for(&table);
                if upstreams.is_empty() {
                    return self.reply(&reply::error(&req, ResponseCode::ServFail), limit);
                }
                match self.forwarder.slot() {
                    Some(slot) => Step::Forward(Box::new(Job {
                        req,
                        upstreams,
                        slot,
                        limit,
                    })),
                    None => {
                        self.metrics.dropped("busy");
                        self.reply(&reply::error(&req, ResponseCode::ServFail), limit)
                    }
                }
            }
        }
    }

    /// The upstream round trip of a [`Step::Forward`]: the response to send.
    pub async fn run(&self, job: Box<Job>) -> Vec<u8> {
        let Job {
            req,
            upstreams,
            slot,
            limit,
        } = *job;
        let resp = match self.forwarder.fetch(&req.queries[0], &upstreams, &slot).await {
            Ok(records) => reply::relayed(&req, &records),
            Err(_) => reply::error(&req, ResponseCode::ServFail),
        };
        drop(slot);
        match self.reply(&resp, limit) {
            Step::Reply(bytes) => bytes,
            _ => Vec::new(),
        }
    }

    fn reply(&self, resp: &Message, limit: usize) -> Step {
        self.metrics
            .response(reply::rcode_label(resp.metadata.response_code));
        Step::Reply(reply::encode(resp, limit))
    }
}

/// One gateway's sockets and the tasks serving them; dropping it closes them.
pub struct Listener {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Listener {
    /// Binds `addr` (UDP and TCP) and starts serving it: UDP on `udp` (the server's UDP
    /// thread), TCP on the calling runtime. The sockets live in the namespace of the calling
    /// thread.
    pub fn bind(addr: SocketAddrV4, shared: Arc<Shared>, udp: &Handle) -> io::Result<Listener> {
        let udp_sock = {
            let _on = udp.enter();
            Arc::new(UdpSocket::from_std(udp_socket(addr)?.into())?)
        };
        let tcp = TcpListener::from_std(tcp_socket(addr)?.into())?;
        let gateway = *addr.ip();
        let tasks = vec![
            udp.spawn(serve_udp(udp_sock, gateway, shared.clone())),
            tokio::spawn(serve_tcp(tcp, gateway, shared)),
        ];
        Ok(Listener { tasks })
    }
}

fn udp_socket(addr: SocketAddrV4) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_freebind_v4(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(UDP_RECV_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

fn tcp_socket(addr: SocketAddrV4) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_freebind_v4(true)?;
    // A restarted agent rebinds while the old connections sit in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(TCP_BACKLOG)?;
    Ok(s)
}

/// Datagrams taken from the socket per system call when queries queue up (`recvmmsg`): under
/// load the receive syscall and the wake-up are paid once per batch, not per query. At
/// `UDP_BUFFER` bytes each this is 64 KiB per gateway.
const UDP_BATCH: usize = 16;

async fn serve_udp(sock: Arc<UdpSocket>, gateway: Ipv4Addr, shared: Arc<Shared>) {
    let mut bufs = vec![vec![0u8; UDP_BUFFER]; UDP_BATCH];
    // Forwarded queries belong to this receiver: stopping it stops them.
    let mut forwards = JoinSet::new();
    loop {
        if let Err(e) = sock.readable().await {
            tracing::debug!(%gateway, error = %e, "DNS socket failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let fd = sock.as_raw_fd();
        let received = match sock.try_io(Interest::READABLE, || recv_batch(fd, &mut bufs)) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(%gateway, error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while forwards.try_join_next().is_some() {}
        let mut replies = Vec::with_capacity(received.len());
        for (buf, (n, src)) in bufs.iter().zip(received) {
            let Some(src) = src else { continue };
            match shared.handle(gateway, SocketAddr::V4(src), &buf[..n], "udp") {
                Step::Reply(bytes) => replies.push((bytes, src)),
                Step::Forward(job) => {
                    let (sock, shared) = (sock.clone(), shared.clone());
                    forwards.spawn(async move {
                        let bytes = shared.run(job).await;
                        if sock.send_to(&bytes, SocketAddr::V4(src)).await.is_err() {
                            shared.metrics.dropped("send");
                        }
                    });
                }
                Step::Nothing => {}
            }
        }
        send_all(&sock, &replies, &shared).await;
    }
}

/// Sends `replies` in as few system calls as the socket takes (`sendmmsg`); what it does not
/// take at once is sent one by one, waiting for room. A reply the kernel refuses is counted
/// as dropped and skipped.
async fn send_all(sock: &UdpSocket, replies: &[(Vec<u8>, SocketAddrV4)], shared: &Shared) {
    let fd = sock.as_raw_fd();
    let mut done = 0;
    while done < replies.len() {
        let rest = &replies[done..];
        match sock.try_io(Interest::WRITABLE, || send_batch(fd, rest)) {
            Ok(sent) if sent > 0 => done += sent,
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                // sendmmsg fails only on its first message; the rest are tried again.
                shared.metrics.dropped("send");
                done += 1;
            }
            // No room now: this one waits for room.
            _ => {
                wait_and_send(sock, &rest[0], shared).await;
                done += 1;
            }
        }
    }
}

/// One reply, waiting for room in the socket.
async fn wait_and_send(sock: &UdpSocket, (bytes, to): &(Vec<u8>, SocketAddrV4), shared: &Shared) {
    if sock.send_to(bytes, SocketAddr::V4(*to)).await.is_err() {
        shared.metrics.dropped("send");
    }
}

/// `sendmmsg(2)` of `replies` (each to its address) on `fd`, without blocking: how many the
/// kernel took, in order. nix's wrapper only reports that count through an iterator that
/// reads receive-side addresses a send never wrote, hence the direct call.
fn send_batch(fd: RawFd, replies: &[(Vec<u8>, SocketAddrV4)]) -> io::Result<usize> {
    use nix::libc;
    let replies = &replies[..replies.len().min(UDP_BATCH)];
    let addrs: Vec<SockaddrIn> = replies.iter().map(|(_, a)| SockaddrIn::from(*a)).collect();
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(bytes, _)| libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(&addrs)
        .map(|(iov, addr)| {
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: every pointer in `headers` points into `addrs`, `iovs` and `replies`, all alive
    // and unmoved until the call returns; the kernel only reads them (and writes each
    // header's `msg_len`); the count is the headers' own.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// The datagrams waiting on `fd`, up to one per buffer, without blocking: each one's length
/// (cut at the buffer's size, as `recv_from` would) and sender, in the buffers' order. The
/// headers are made per call: they hold raw pointers, which a task kept across awaits on a
/// multi-threaded runtime may not.
fn recv_batch(fd: RawFd, bufs: &mut [Vec<u8>]) -> io::Result<Vec<(usize, Option<SocketAddrV4>)>> {
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(bufs.len(), None);
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(b.as_mut_slice())])
        .collect();
    let got = recvmmsg(fd, &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
    Ok(got
        .map(|m| (m.bytes, m.address.map(|a| SocketAddrV4::new(a.ip(), a.port()))))
        .collect())
}

async fn serve_tcp(listener: TcpListener, gateway: Ipv4Addr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                tracing::debug!(%gateway, error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = shared.tcp_slots.clone().try_acquire_owned() else {
            shared.metrics.dropped("tcp_busy");
            drop(stream);
            continue;
        };
        connections.spawn(connection(stream, src, gateway, shared.clone(), permit));
    }
}

/// Queries one after the other on one connection, each to be received whole within the
/// timeout: a client that stalls, or announces 65,535 bytes and sends ten, is cut off.
async fn connection(
    mut stream: TcpStream,
    src: SocketAddr,
    gateway: Ipv4Addr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let limit = shared.tcp_timeout;
    loop {
        let msg = match tokio::time::timeout(limit, read_message(&mut stream)).await {
            Ok(Ok(Some(msg))) => msg,
            Ok(_) => return,
            Err(_) => {
                shared.metrics.dropped("tcp_timeout");
                return;
            }
        };
        let out = match shared.handle(gateway, src, &msg, "tcp") {
            Step::Reply(bytes) => bytes,
            Step::Forward(job) => shared.run(job).await,
            Step::Nothing => return,
        };
        let Ok(len) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        match tokio::time::timeout(limit, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                shared.metrics.dropped("tcp_timeout");
                return;
            }
        }
    }
}

/// One length-prefixed message; `None` at the end of the stream or for a length too short to
/// be a DNS message. The buffer grows with what arrives, not with what is announced.
async fn read_message(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let len = match stream.read_u16().await {
        Ok(len) => usize::from(len),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len < 12 {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(len.min(512));
    (&mut *stream).take(len as u64).read_to_end(&mut buf).await?;
    Ok((buf.len() == len).then_some(buf))
}
