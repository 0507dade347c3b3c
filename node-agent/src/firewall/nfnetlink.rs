//! What the agent's two nfnetlink users share ([`super::generation`], [`super::elements`]):
//! the socket, in the calling thread's namespace, and reading native-endian fields.

use std::io;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// nftables' subsystem id in nfnetlink message types and batch resource ids.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// An error or an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;

/// A NETLINK_NETFILTER socket whose reads give up after `timeout`.
pub fn socket(timeout: Option<Duration>) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::from(nix::libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(nix::libc::NETLINK_NETFILTER)),
    )?;
    sock.set_read_timeout(timeout)?;
    Ok(sock)
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
