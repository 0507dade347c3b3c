//! The link dump, read on a plain netlink socket and decoded lazily. A pass reads every
//! interface on the host, overlay's or not, and decoding each message fully (every nested
//! attribute: per-family configuration, bridge port options, ...) cost ~7 us a link against
//! ~1.5 us for the kernel to produce it: 3-4 ms for 400 links, most of a pass on a host with
//! a few hundred containers. Only the attributes [`Link`] needs are read here; a link whose
//! kind carries data the planner reads (vxlan, vlan) or that is not one of the common kinds
//! is decoded fully by the same [`super::parse_link`] as before, so both paths agree.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rtnetlink::packet_core::{NLA_TYPE_MASK, NlasIterator, Parseable};
use rtnetlink::packet_route::link::{LinkFlags, LinkHeader, LinkMessage};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

use crate::kernel::{Link, LinkKind};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Set on a dump's messages when what it covers changed while it ran.
const NLM_F_DUMP_INTR: u16 = 0x10;
const DUMP_ATTEMPTS: usize = 3;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
/// Leave the counters out: nothing reads them.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
/// ifinfomsg.
const HEADER_LEN: usize = 16;

/// A socket for link dumps, opened in the namespace of the thread that opens it.
pub struct LinkDumper {
    sock: Mutex<Socket>,
    seq: AtomicU32,
}

impl LinkDumper {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // A dump is answered at once, inside each recv; this only bounds a kernel that
        // never ends one.
        socket2::SockRef::from(&sock).set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            sock: Mutex::new(sock),
            seq: AtomicU32::new(1),
        })
    }

    /// Every link of the namespace. CPU work, not waiting: the kernel builds each part of
    /// the dump inside the recv that reads it (~1.5 us a link), so this runs on the caller's
    /// thread, as decoding the answer did before (a blocking-pool hop cost each wiring in a
    /// workload namespace a new thread, +0.5 ms).
    pub fn links(&self) -> io::Result<Vec<Link>> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        // Links that come or go during a dump make the kernel flag it inconsistent: read it
        // again, a few times, rather than plan from a snapshot that never existed.
        for _ in 0..DUMP_ATTEMPTS {
            if let Some(links) = self.dump_once(&sock)? {
                return Ok(links);
            }
        }
        Err(io::Error::other(format!(
            "link dump: interrupted by changes {DUMP_ATTEMPTS} times in a row"
        )))
    }

    /// One dump: `None` if the kernel flagged it interrupted (NLM_F_DUMP_INTR).
    fn dump_once(&self, sock: &Socket) -> io::Result<Option<Vec<Link>>> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        sock.send(&request(seq), 0)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = sock.recv(&mut &mut buf[..], 0)?;
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(io::Error::other("link dump: bad message length"));
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let msg_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let payload = &rest[16..len];
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if msg_seq != seq {
                    // Left over from an earlier dump that stopped half way.
                    continue;
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                // NLMSG_DONE and NLMSG_ERROR both start with the error code (0: none).
                let code = || {
                    payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-nix::libc::EIO)
                };
                match kind {
                    NLMSG_DONE | NLMSG_ERROR if code() != 0 => {
                        return Err(io::Error::from_raw_os_error(code().saturating_neg()));
                    }
                    NLMSG_DONE => return Ok((!interrupted).then_some(out)),
                    RTM_NEWLINK => out.extend(decode(payload)),
                    _ => {}
                }
            }
        }
    }
}

/// RTM_GETLINK, dump, ifinfomsg of zeros, IFLA_EXT_MASK.
fn request(seq: u32) -> Vec<u8> {
    let len = 16 + HEADER_LEN + 8;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0u8; HEADER_LEN]);
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    m.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    m
}

/// One RTM_NEWLINK payload (ifinfomsg and attributes) as a [`Link`].
pub fn decode(payload: &[u8]) -> Option<Link> {
    let header = LinkHeader::parse(payload).ok()?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        kind: LinkKind::Other(String::new()),
        mtu: 0,
        mac: None,
        up: header.flags.contains(LinkFlags::Up),
        master: None,
        peer_in_other_netns: false,
        lower: None,
        alias: None,
    };
    let u32_of = |v: &[u8]| <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes);
    let text = |v: &[u8]| {
        let v = v.split(|b| *b == 0).next().unwrap_or(v);
        String::from_utf8(v.to_vec()).ok()
    };
    for nla in NlasIterator::new(payload.get(HEADER_LEN..)?) {
        let nla = nla.ok()?;
        let value = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            IFLA_IFNAME => link.name = text(value)?,
            IFLA_MTU => link.mtu = u32_of(value)?,
            IFLA_ADDRESS => link.mac = super::mac_of(value),
            IFLA_MASTER => link.master = u32_of(value),
            IFLA_LINK_NETNSID => link.peer_in_other_netns = true,
            IFLA_LINK => link.lower = u32_of(value),
            IFLA_IFALIAS => link.alias = text(value),
            IFLA_LINKINFO => {
                for info in NlasIterator::new(value) {
                    let info = info.ok()?;
                    if info.kind() & NLA_TYPE_MASK == IFLA_INFO_KIND {
                        match text(info.value())?.as_str() {
                            "bridge" => link.kind = LinkKind::Bridge,
                            "veth" => link.kind = LinkKind::Veth,
                            "macvlan" => link.kind = LinkKind::Macvlan,
                            // Kinds whose data matters, and the rare others: the full decode.
                            _ => return super::parse_link(&LinkMessage::parse(payload).ok()?),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}
