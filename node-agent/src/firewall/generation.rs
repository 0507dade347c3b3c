//! The nftables ruleset generation of this namespace: a counter the kernel bumps on every
//! committed change, to any table. Reading it is one netlink round trip (no process), so the
//! agent can tell on every pass and every audit whether anything changed since it last
//! looked, and list the tables (a process spawn) only when something did. [`Changes`] wakes
//! on each such commit, for a loop that wants to reconcile as soon as someone else's change
//! lands rather than at the next periodic pass.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::Socket;

use super::nfnetlink::{self, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR, u16_at, u32_at};

const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
/// nlmsghdr (16 bytes) and nfgenmsg (4 bytes).
const HEADERS: usize = 20;
const SEQ: u32 = 0x6f76_6c79;

/// The current generation (blocking, bounded by a 1 s timeout).
pub fn current() -> io::Result<u32> {
    let sock = nfnetlink::socket(Some(Duration::from_secs(1)))?;
    sock.send(&request())?;
    let mut buf = [0u8; 512];
    let n = (&sock).read(&mut buf)?;
    parse(&buf[..n])
}

/// nftables' multicast group: one message per object of every committed transaction.
const NFNLGRP_NFTABLES: u32 = 7;

/// A subscription to every nftables commit in this namespace (the agent's own included: a
/// pass that follows one of those finds the generation it wrote and does nothing).
pub struct Changes {
    sock: Socket,
}

impl Changes {
    /// Subscribes, in the namespace of the calling thread.
    pub fn subscribe() -> io::Result<Self> {
        let sock = nfnetlink::socket(None)?;
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel picks a port id); the
        // pointer and length describe that struct, and the descriptor is open.
        let bound = unsafe {
            let mut addr: nix::libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = nix::libc::AF_NETLINK as nix::libc::sa_family_t;
            nix::libc::bind(
                sock.as_raw_fd(),
                (&addr as *const nix::libc::sockaddr_nl).cast(),
                std::mem::size_of::<nix::libc::sockaddr_nl>() as nix::libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        let group = NFNLGRP_NFTABLES;
        // SAFETY: a u32 option value and its exact size, on an open netlink socket.
        let joined = unsafe {
            nix::libc::setsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_NETLINK,
                nix::libc::NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                std::mem::size_of::<u32>() as nix::libc::socklen_t,
            )
        };
        if joined != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { sock })
    }

    /// Blocks until a commit is announced (`true`) or `timeout` passes (`false`). The rest of
    /// a burst is drained, so one transaction wakes the caller once. A lost message (the
    /// socket's buffer overflowed) counts as a change.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match (&self.sock).read(&mut buf) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
            Err(e) => return Err(e),
        }
        self.sock.set_nonblocking(true)?;
        while (&self.sock).read(&mut buf).is_ok() {}
        self.sock.set_nonblocking(false)?;
        Ok(true)
    }
}

fn request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEADERS);
    msg.extend_from_slice(&(HEADERS as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&SEQ.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("nftables generation: {what}"))
}

/// The generation id out of the kernel's NEWGEN answer (or the error it sent instead).
fn parse(reply: &[u8]) -> io::Result<u32> {
    if reply.len() < 16 {
        return Err(bad("short reply"));
    }
    let len = u32_at(reply, 0) as usize;
    if len < 16 || len > reply.len() {
        return Err(bad("bad length"));
    }
    if u32_at(reply, 8) != SEQ {
        return Err(bad("unexpected sequence number"));
    }
    let kind = u16_at(reply, 4);
    if kind == NLMSG_ERROR {
        if len < 20 {
            return Err(bad("short error"));
        }
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return Err(io::Error::from_raw_os_error(code.saturating_neg()));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN || len < HEADERS {
        return Err(bad("unexpected message"));
    }
    let mut attrs = &reply[HEADERS..len];
    while attrs.len() >= 4 {
        let alen = usize::from(u16_at(attrs, 0));
        // The top bits are the nested and byte-order flags.
        let atype = u16_at(attrs, 2) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            return Err(bad("bad attribute"));
        }
        if atype == NFTA_GEN_ID && alen >= 8 {
            return Ok(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        let step = (alen + 3) & !3;
        attrs = &attrs[step.min(attrs.len())..];
    }
    Err(bad("no generation id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn request_is_a_getgen() {
        let r = request();
        assert_eq!(r.len(), 20);
        assert_eq!(u16_at(&r, 4), (10 << 8) | 16);
    }

    #[test]
    fn reads_the_id_among_other_attributes() {
        let mut payload = vec![0, 0, 0, 0];
        payload.extend(attr(3, b"nft\0"));
        payload.extend(attr(NFTA_GEN_ID | 0x4000, &1234u32.to_be_bytes()));
        let msg = reply((10 << 8) | 15, SEQ, &payload);
        assert_eq!(parse(&msg).unwrap(), 1234);
    }

    #[test]
    fn errors_and_garbage_are_refused() {
        let err = reply(NLMSG_ERROR, SEQ, &(-1i32).to_ne_bytes());
        assert_eq!(parse(&err).unwrap_err().raw_os_error(), Some(1));
        assert!(
            parse(&reply((10 << 8) | 15, SEQ + 1, &[0; 12])).is_err(),
            "other sequence"
        );
        assert!(
            parse(&reply((10 << 8) | 15, SEQ, &[0, 0, 0, 0])).is_err(),
            "no id"
        );
        assert!(parse(&[1, 2, 3]).is_err());
        let mut truncated = reply((10 << 8) | 15, SEQ, &[0, 0, 0, 0, 200, 0, 1, 0]);
        truncated.truncate(24);
        assert!(parse(&truncated).is_err());
        let mut lying = reply((10 << 8) | 15, SEQ, &[0, 0, 0, 0, 200, 0, 1, 0]);
        lying[0] = 255;
        assert!(parse(&lying).is_err(), "length beyond the buffer");
    }
}
