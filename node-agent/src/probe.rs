//! ICMP echo probes for `overlayctl probe`: from this host's gateway address in a network to
//! another host's, through the overlay. Sent with DF set, so that a packet too big for the path
//! is lost (as a workload's would be) instead of fragmented around an MTU black hole.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// What `count` echoes found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    pub sent: u32,
    pub received: u32,
    /// Sum of the round trips of the replies.
    pub rtt_total: Duration,
}

/// Distinguishes concurrent probes: every socket sees every ICMP packet of the namespace.
static NEXT_IDENT: AtomicU16 = AtomicU16::new(1);

/// Sends `count` echo requests with `payload` bytes from `src` to `dst`, one at a time, each
/// waiting up to `timeout` for its reply. Blocking: run it on a blocking thread.
pub fn echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: usize,
    count: u32,
    timeout: Duration,
) -> std::io::Result<EchoStats> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    sock.bind(&SocketAddrV4::new(src, 0).into())?;
    dont_fragment(&sock)?;
    let ident = NEXT_IDENT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id() as u16);
    let to = SocketAddrV4::new(dst, 0).into();
    let mut stats = EchoStats::default();
    let mut buf = vec![0u8; 65_536];
    for seq in 0..count {
        let seq = seq as u16;
        let packet = echo_request(ident, seq, payload);
        let sent_at = Instant::now();
        stats.sent += 1;
        match sock.send_to(&packet, &to) {
            Ok(_) => {}
            // Bigger than the route's MTU allows with DF: lost, as a workload's packet would be.
            Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => continue,
            Err(e) => return Err(e),
        }
        let deadline = sent_at + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match (&sock).read(&mut buf) {
                Ok(n) if is_reply(&buf[..n], dst, ident, seq) => {
                    stats.received += 1;
                    stats.rtt_total += sent_at.elapsed();
                    break;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(stats)
}

/// IP_MTU_DISCOVER = IP_PMTUDISC_DO: never fragment locally, set DF on the wire.
fn dont_fragment(sock: &Socket) -> std::io::Result<()> {
    let value: nix::libc::c_int = nix::libc::IP_PMTUDISC_DO;
    // SAFETY: a valid socket descriptor, a c_int option value and its exact size.
    let rc = unsafe {
        nix::libc::setsockopt(
            sock.as_raw_fd(),
            nix::libc::IPPROTO_IP,
            nix::libc::IP_MTU_DISCOVER,
            (&value as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An ICMP echo request (type 8) with a checksum.
pub fn echo_request(ident: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..payload).map(|i| (i % 251) as u8));
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` (IPv4 header included, as a raw socket receives it) is the echo reply from
/// `from` to request (`ident`, `seq`).
pub fn is_reply(packet: &[u8], from: Ipv4Addr, ident: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if packet.len() < ihl + 8 || ihl < 20 {
        return false;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    src == from
        && icmp[0] == 0
        && icmp[1] == 0
        && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero_and_replies_are_matched() {
        let req = echo_request(0x1234, 7, 56);
        assert_eq!(req.len(), 64);
        assert_eq!(checksum(&req), 0, "a correct checksum sums to zero");
        // A reply as a raw socket sees it: 20-byte IP header, then ICMP type 0.
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 1, 1, 10, 0, 0, 1];
        let mut icmp = req.clone();
        icmp[0] = 0;
        ip.extend_from_slice(&icmp);
        let from = Ipv4Addr::new(10, 0, 1, 1);
        assert!(is_reply(&ip, from, 0x1234, 7));
        assert!(!is_reply(&ip, from, 0x1234, 8), "other sequence");
        assert!(
            !is_reply(&ip, Ipv4Addr::new(10, 0, 2, 1), 0x1234, 7),
            "other sender"
        );
        assert!(!is_reply(&ip[..10], from, 0x1234, 7), "truncated");
    }
}
