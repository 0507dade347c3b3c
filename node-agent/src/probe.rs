//! ICMP echo probes for `overlayctl probe`: from this host's gateway address in a network to
//! another host's, through the overlay, over IPv4 and (dual-stack networks) IPv6. Sent with DF
//! set (IPv6: never fragmented by the sender), so that a packet too big for the path is lost
//! (as a workload's would be) instead of fragmented around an MTU black hole.

use std::io::Read;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// Sends `count` echo requests with `payload` bytes from `src` to `dst` (one family), one at
/// a time, each waiting up to `timeout` for its reply. Blocking: run it on a blocking thread.
pub fn echo(
    src: IpAddr,
    dst: IpAddr,
    payload: usize,
    count: u32,
    timeout: Duration,
) -> std::io::Result<EchoStats> {
    let sock = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(_)) => {
            let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
            sock.bind(&SocketAddrV4::new(src, 0).into())?;
            dont_fragment(
                &sock,
                nix::libc::IPPROTO_IP,
                nix::libc::IP_MTU_DISCOVER,
                nix::libc::IP_PMTUDISC_DO,
            )?;
            sock
        }
        (IpAddr::V6(src), IpAddr::V6(_)) => {
            // The kernel computes the checksum of raw ICMPv6 (RFC 3542).
            let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
            sock.bind(&SocketAddrV6::new(src, 0, 0, 0).into())?;
            dont_fragment(&sock, nix::libc::IPPROTO_IPV6, IPV6_DONTFRAG, 1)?;
            sock
        }
        _ => {
            return Err(std::io::Error::other(format!(
                "cannot probe {dst} from {src}: not one family"
            )));
        }
    };
    let ident = NEXT_IDENT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id() as u16);
    let to = SocketAddr::new(dst, 0).into();
    let mut stats = EchoStats::default();
    let mut buf = vec![0u8; 65_536];
    for seq in 0..count {
        let seq = seq as u16;
        let packet = match dst {
            IpAddr::V4(_) => echo_request(ident, seq, payload),
            IpAddr::V6(_) => echo_request6(ident, seq, payload),
        };
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
            let received = match dst {
                IpAddr::V4(dst) => (&sock)
                    .read(&mut buf)
                    .map(|n| is_reply(&buf[..n], dst, ident, seq)),
                // Raw ICMPv6 sockets get the message alone: the sender comes with it.
                IpAddr::V6(dst) => recv_from(&sock, &mut buf)
                    .map(|(n, from)| from == Some(dst) && is_reply6(&buf[..n], ident, seq)),
            };
            match received {
                Ok(true) => {
                    stats.received += 1;
                    stats.rtt_total += sent_at.elapsed();
                    break;
                }
                Ok(false) => {}
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

/// `IPV6_DONTFRAG` (linux/in6.h): a datagram bigger than the path MTU fails with EMSGSIZE.
const IPV6_DONTFRAG: nix::libc::c_int = 62;

/// Never fragment locally: IPv4 `IP_MTU_DISCOVER` = `IP_PMTUDISC_DO` (DF on the wire too),
/// IPv6 `IPV6_DONTFRAG`.
fn dont_fragment(
    sock: &Socket,
    level: nix::libc::c_int,
    option: nix::libc::c_int,
    value: nix::libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: a valid socket descriptor, a c_int option value and its exact size.
    let rc = unsafe {
        nix::libc::setsockopt(
            sock.as_raw_fd(),
            level,
            option,
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

/// One datagram into `buf` and who sent it.
fn recv_from(sock: &Socket, buf: &mut [u8]) -> std::io::Result<(usize, Option<Ipv6Addr>)> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; recv only writes initialised bytes
    // into the buffer, and only the `n` it reports are read back.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, from) = sock.recv_from(uninit)?;
    let from = from.as_socket_ipv6().map(|a| *a.ip());
    Ok((n, from))
}

/// An ICMPv6 echo request (type 128); the kernel fills in the checksum.
pub fn echo_request6(ident: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![128u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..payload).map(|i| (i % 251) as u8));
    p
}

/// Whether ICMPv6 `message` (as a raw socket receives it: no IPv6 header) is the echo reply
/// (type 129) to request (`ident`, `seq`).
pub fn is_reply6(message: &[u8], ident: u16, seq: u16) -> bool {
    message.len() >= 8
        && message[0] == 129
        && message[1] == 0
        && u16::from_be_bytes([message[4], message[5]]) == ident
        && u16::from_be_bytes([message[6], message[7]]) == seq
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

    #[test]
    fn icmpv6_requests_and_replies() {
        let req = echo_request6(0xbeef, 3, 56);
        assert_eq!((req.len(), req[0]), (64, 128));
        let mut reply = req.clone();
        reply[0] = 129;
        assert!(is_reply6(&reply, 0xbeef, 3));
        assert!(!is_reply6(&req, 0xbeef, 3), "a request is no reply");
        assert!(!is_reply6(&reply, 0xbeef, 4), "other sequence");
        assert!(!is_reply6(&reply[..7], 0xbeef, 3), "truncated");
    }
}
