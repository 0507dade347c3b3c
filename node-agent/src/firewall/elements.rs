//! Set elements added and deleted over nfnetlink, in-process: the common change to the
//! rules (an endpoint, a peer, a published port comes or goes) as one batch the kernel
//! commits all or nothing, like `nft -f` would, without starting a process. Starting `nft`
//! was most of what a new endpoint cost in the agent (3-6 ms of an 11 ms attach, P1); this
//! is one netlink round trip.
//!
//! What is encoded is exactly what `nft` sends for `add element` / `delete element` on these
//! sets: the key (and a map's value) as the kernel stores it, each field of a concatenation
//! padded to 32 bits. The first time the agent writes a set this way, the next look lists
//! the tables with `nft -j` and compares them with the model (see `Firewall::update`), so an
//! element the kernel stored differently shows as drift and is rebuilt by `nft`;
//! `firewall_kernel.rs` does the same for every set and map type.

use std::io::{self, Read};
use std::time::Duration;

use socket2::Socket;

use super::nfnetlink::{self, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR, u16_at, u32_at};

use super::rules::{Atom, Element, Family, TABLE};

/// One set's change: elements to delete, then to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetChange {
    pub family: Family,
    pub set: &'static str,
    pub gone: Vec<Element>,
    pub came: Vec<Element>,
}

const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// Bigger batches go to `nft` instead: the socket's send buffer is ~200 KiB by default.
const MAX_BATCH: usize = 128 * 1024;
/// Elements per message: the biggest (a port's identity, or a published port with its
/// value) takes 40 bytes on the wire, so a message's list stays near 20 KiB.
const PER_MESSAGE: usize = 512;
/// Same as an interface name in the kernel (IFNAMSIZ).
const IFNAMSIZ: usize = 16;

/// Applies `changes` in one transaction. Any error (the kernel's, or a batch too big) leaves
/// the kernel as it was.
pub fn apply(changes: &[SetChange]) -> io::Result<()> {
    let (batch, acks) = encode(changes, 1)?;
    if acks == 0 {
        return Ok(());
    }
    let sock = nfnetlink::socket(Some(Duration::from_secs(1)))?;
    let sent = sock.send(&batch)?;
    if sent != batch.len() {
        return Err(io::Error::other("nfnetlink: batch sent in part"));
    }
    read_acks(&sock, acks)
}

/// The batch for `changes` (sequence numbers from `first_seq`) and how many acks to expect.
fn encode(changes: &[SetChange], first_seq: u32) -> io::Result<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut acks = 0;
    // Every deletion before any addition, as the text transaction does.
    let steps = changes
        .iter()
        .map(|c| (c, NFT_MSG_DELSETELEM, &c.gone))
        .chain(changes.iter().map(|c| (c, NFT_MSG_NEWSETELEM, &c.came)));
    // A message per `PER_MESSAGE` elements: an attribute's length is 16 bits, and a list
    // that overflowed it would be read short by the kernel without an error.
    let steps = steps.flat_map(|(change, kind, elements)| {
        elements
            .chunks(PER_MESSAGE)
            .map(move |chunk| (change, kind, chunk))
    });
    for (change, kind, elements) in steps {
        let mut list = Vec::new();
        for e in elements {
            let mut elem = Vec::new();
            attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value(&e.key)?)?;
            if kind == NFT_MSG_NEWSETELEM && !e.value.is_empty() {
                attr(&mut elem, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &value(&e.value)?)?;
            }
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem)?;
        }
        let mut body = Vec::new();
        attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE))?;
        attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(change.set))?;
        attr(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list)?;
        let flags = match kind {
            NFT_MSG_NEWSETELEM => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            _ => NLM_F_REQUEST | NLM_F_ACK,
        };
        seq += 1;
        let family = match change.family {
            Family::Bridge => NFPROTO_BRIDGE,
            Family::Inet => NFPROTO_INET,
            Family::Ip => nix::libc::AF_INET as u8,
        };
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            family,
            0,
            &body,
        );
        acks += 1;
    }
    seq += 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    if out.len() > MAX_BATCH {
        return Err(io::Error::other(format!(
            "nfnetlink: batch of {} bytes is too big for one message",
            out.len()
        )));
    }
    Ok((out, acks))
}

/// Reads until `acks` answers have come, or the first error (the batch was then aborted
/// whole; what else the kernel says about it is left unread on a socket that is dropped).
fn read_acks(sock: &Socket, mut acks: usize) -> io::Result<()> {
    // An error echoes the message it is about, whole: room for the biggest.
    let mut buf = vec![0u8; 2 * MAX_BATCH];
    while acks > 0 {
        let n = (&*sock).read(&mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= 16 {
            let len = u32_at(rest, 0) as usize;
            if len < 16 || len > rest.len() {
                return Err(io::Error::other("nfnetlink: bad answer length"));
            }
            if u16_at(rest, 4) == NLMSG_ERROR {
                if len < 20 {
                    return Err(io::Error::other("nfnetlink: short error"));
                }
                let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                }
                acks = acks.saturating_sub(1);
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
    Ok(())
}

/// A key or map value as `NFTA_DATA_VALUE`: one field as it is, the fields of a
/// concatenation each padded to 32 bits.
fn value(atoms: &[Atom]) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    for atom in atoms {
        let start = data.len();
        match atom {
            Atom::Name(n) => {
                let bytes = n.as_str().as_bytes();
                if bytes.len() >= IFNAMSIZ {
                    return Err(io::Error::other(format!("interface name {n:?} too long")));
                }
                data.extend_from_slice(bytes);
                data.resize(start + IFNAMSIZ, 0);
            }
            Atom::Mac(m) | Atom::RawMac(m) => data.extend_from_slice(&m.0),
            Atom::Ip(ip) => data.extend_from_slice(&ip.octets()),
            Atom::Ip6(ip) | Atom::Raw6(ip) => data.extend_from_slice(&ip.octets()),
            Atom::Proto(p) => data.push(p.number()),
            Atom::Port(port) => data.extend_from_slice(&port.to_be_bytes()),
        }
        if atoms.len() > 1 {
            data.resize(data.len().next_multiple_of(4), 0);
        }
    }
    let mut out = Vec::new();
    attr(&mut out, NFTA_DATA_VALUE, &data)?;
    Ok(out)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A netlink attribute: length (header and payload, unpadded), type, payload padded to 4.
/// A payload too long for the 16-bit length is refused, never truncated.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(4 + payload.len())
        .map_err(|_| io::Error::other("nfnetlink: attribute longer than 64 KiB"))?;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
    Ok(())
}

/// nlmsghdr, nfgenmsg (family, version 0, resource id in network order), then `body`.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::Name;

    fn name(s: &str) -> Atom {
        Atom::Name(Name::new(s).unwrap())
    }

    #[test]
    fn concatenated_fields_are_padded_to_32_bits() {
        let key = [
            name("ovv-1"),
            Atom::Mac("0a:58:0a:01:00:02".parse().unwrap()),
            Atom::Ip("10.1.0.2".parse().unwrap()),
        ];
        let v = value(&key).unwrap();
        // Attribute header, then 16 + 8 + 4 bytes.
        assert_eq!(u16_at(&v, 0) as usize, 4 + 28);
        assert_eq!(&v[4..9], b"ovv-1");
        assert!(v[9..20].iter().all(|b| *b == 0));
        assert_eq!(&v[20..26], &[0x0a, 0x58, 0x0a, 0x01, 0x00, 0x02]);
        assert_eq!(&v[26..28], &[0, 0]);
        assert_eq!(&v[28..32], &[10, 1, 0, 2]);
        // A single field is not padded.
        let one = value(&[Atom::Ip("192.0.2.12".parse().unwrap())]).unwrap();
        assert_eq!(u16_at(&one, 0), 8);
        let port = value(&[Atom::Proto(overlay_proto::ports::Protocol::Tcp), Atom::Port(8080)]).unwrap();
        assert_eq!(&port[4..12], &[6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
    }

    /// In a namespace of its own: a batch the kernel refuses changes nothing and says why; a
    /// good one lands whole.
    #[test]
    fn a_refused_batch_changes_nothing() {
        use overlay_lab::netns::{Namespaces, exec, stdout, unique_prefix};
        let mut namespaces = Namespaces::default();
        let ns = format!("{}-el", unique_prefix("el"));
        namespaces.add(&ns).unwrap();
        exec(
            &ns,
            "nft",
            &["add table inet overlay; add set inet overlay peers { type ipv4_addr; elements = { 192.0.2.12 } }"],
        )
        .unwrap();
        let ip = |s: &str| Element::new(vec![Atom::Ip(s.parse().unwrap())]);
        let change = |gone: Vec<Element>, came: Vec<Element>| SetChange {
            family: Family::Inet,
            set: "peers",
            gone,
            came,
        };
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let (refused, accepted) = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // Adds 192.0.2.13, but deletes an element that is not there: all or nothing.
            let refused = apply(&[change(vec![ip("192.0.2.99")], vec![ip("192.0.2.13")])]);
            let accepted = apply(&[change(vec![ip("192.0.2.12")], vec![ip("192.0.2.14")])]);
            (refused, accepted)
        })
        .join()
        .unwrap();
        let err = refused.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOENT), "{err}");
        accepted.unwrap();
        let listed = stdout(&exec(&ns, "nft", &["list set inet overlay peers"]).unwrap());
        assert!(
            listed.contains("192.0.2.14") && !listed.contains("192.0.2.12") && !listed.contains("192.0.2.13"),
            "{listed}"
        );
    }

    #[test]
    fn a_batch_is_framed_and_deletes_come_first() {
        let e = Element::new(vec![Atom::Ip("192.0.2.12".parse().unwrap())]);
        let changes = [SetChange {
            family: Family::Inet,
            set: "peers",
            gone: vec![e.clone()],
            came: vec![Element::new(vec![Atom::Ip("192.0.2.13".parse().unwrap())])],
        }];
        let (batch, acks) = encode(&changes, 7).unwrap();
        assert_eq!(acks, 2);
        let mut kinds = Vec::new();
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let len = u32_at(rest, 0) as usize;
            kinds.push((u16_at(rest, 4), u32_at(rest, 8), rest[16]));
            rest = &rest[len.next_multiple_of(4)..];
        }
        assert_eq!(
            kinds,
            vec![
                (NFNL_MSG_BATCH_BEGIN, 7, 0),
                ((10 << 8) | NFT_MSG_DELSETELEM, 8, NFPROTO_INET),
                ((10 << 8) | NFT_MSG_NEWSETELEM, 9, NFPROTO_INET),
                (NFNL_MSG_BATCH_END, 10, 0),
            ]
        );
        // Long lists are split over messages, all in the one batch: 1100 ports' identities
        // would overflow one attribute's 16-bit length.
        let many: Vec<Element> = (0..1100u32)
            .map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                Element::new(vec![
                    name(&format!("ovv-{i:x}")),
                    Atom::Mac(overlay_proto::mac::MacAddr([0x0a, 0x58, 10, 1, hi, lo])),
                    Atom::Ip(std::net::Ipv4Addr::new(10, 1, hi, lo)),
                ])
            })
            .collect();
        let big = [SetChange {
            family: Family::Bridge,
            set: "endpoints",
            gone: Vec::new(),
            came: many,
        }];
        let (batch, acks) = encode(&big, 1).unwrap();
        assert_eq!(acks, 3, "512 + 512 + 76");
        let mut rest = &batch[..];
        let mut elements = 0;
        while !rest.is_empty() {
            let len = u32_at(rest, 0) as usize;
            if u16_at(rest, 4) == (10 << 8) | NFT_MSG_NEWSETELEM {
                // The list attribute comes after the table and set names.
                let body = &rest[20..len];
                let table = (u16_at(body, 0) as usize).next_multiple_of(4);
                let set = (u16_at(body, table) as usize).next_multiple_of(4);
                let list_len = u16_at(body, table + set) as usize;
                assert_eq!(table + set + list_len, body.len(), "the list fills the message");
                elements += (list_len - 4) / 40;
            }
            rest = &rest[len.next_multiple_of(4)..];
        }
        assert_eq!(elements, 1100);
        // Nothing to do: no messages but the frame, no acks.
        let (_, none) = encode(&[], 1).unwrap();
        assert_eq!(none, 0);
    }
}
