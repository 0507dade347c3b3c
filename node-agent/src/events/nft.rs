//! nftables: which notifications concern overlay's table.
//!
//! Every table-scoped nf_tables message (table, chain, rule, set, element, object,
//! flowtable; new, delete or destroy) carries the table name as attribute 1 after the 4-byte
//! `nfgenmsg`, so only that much is parsed. The family is not looked at: the name is what
//! makes a table overlay's, whatever family it is built in.
//!
//! The agent's own write raises the same notifications as anyone's. Rather than guess who
//! committed, the loop compares the ruleset generation now with the one right after the agent
//! last wrote ([`crate::firewall::generation`]); equal means nothing to repair, so a write
//! never triggers another.
use rtnetlink::packet_core::{NLA_TYPE_MASK, NetlinkBuffer, NlasIterator};

/// nfnetlink multicast group of nf_tables changes.
pub const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...: all 1.
const ATTR_TABLE: u16 = 1;
/// `sizeof(struct nfgenmsg)`.
const NFGENMSG_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Relevant,
    Ignored,
    /// Too damaged to tell: treat as a possible change of the table.
    Malformed,
}

/// Whether one netlink message (header included) changed something in a table named `table`.
pub fn concerns_table(message: &[u8], table: &str) -> Verdict {
    let Ok(buffer) = NetlinkBuffer::new_checked(message) else {
        return Verdict::Malformed;
    };
    let kind = buffer.message_type();
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || matches!(kind & 0xff, NFT_MSG_NEWGEN | NFT_MSG_GETGEN) {
        return Verdict::Ignored;
    }
    let Some(attributes) = buffer.payload().get(NFGENMSG_LEN..) else {
        return Verdict::Malformed;
    };
    for nla in NlasIterator::new(attributes) {
        let Ok(nla) = nla else {
            return Verdict::Malformed;
        };
        if nla.kind() & NLA_TYPE_MASK == ATTR_TABLE {
            let name = nla.value();
            let name = name.split(|b| *b == 0).next().unwrap_or(name);
            return if name == table.as_bytes() {
                Verdict::Relevant
            } else {
                Verdict::Ignored
            };
        }
    }
    Verdict::Ignored
}

#[cfg(test)]
mod tests {

    use super::*;

    /// An nf_tables message: header, nfgenmsg, then the given attributes.
    fn message(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![2, 0, 0, 0];
        for (t, v) in attrs {
            let len = (4 + v.len()) as u16;
            payload.extend_from_slice(&len.to_ne_bytes());
            payload.extend_from_slice(&t.to_ne_bytes());
            payload.extend_from_slice(v);
            while payload.len() % 4 != 0 {
                payload.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(payload);
        m
    }

    const NFT: u16 = NFNL_SUBSYS_NFTABLES << 8;

    #[test]
    fn table_name_decides() {
        // DELTABLE overlay, NEWRULE in overlay (chain name attribute first), DELSETELEM.
        assert_eq!(
            concerns_table(&message(NFT | 2, &[(1, b"overlay\0")]), "overlay"),
            Verdict::Relevant
        );
        assert_eq!(
            concerns_table(
                &message(NFT | 6, &[(1, b"overlay\0"), (2, b"forward\0")]),
                "overlay"
            ),
            Verdict::Relevant
        );
        assert_eq!(
            concerns_table(&message(NFT | 14, &[(1, b"overlay\0")]), "overlay"),
            Verdict::Relevant
        );
        // Other tables, prefixes of the name, the end-of-batch message, another subsystem.
        assert_eq!(
            concerns_table(&message(NFT | 6, &[(1, b"filter\0")]), "overlay"),
            Verdict::Ignored
        );
        assert_eq!(
            concerns_table(&message(NFT | 6, &[(1, b"overlay2\0")]), "overlay"),
            Verdict::Ignored
        );
        assert_eq!(
            concerns_table(&message(NFT | 6, &[(1, b"over\0")]), "overlay"),
            Verdict::Ignored
        );
        assert_eq!(
            concerns_table(&message(NFT | NFT_MSG_NEWGEN, &[(1, b"overlay\0")]), "overlay"),
            Verdict::Ignored
        );
        assert_eq!(
            concerns_table(&message((1 << 8) | 2, &[(1, b"overlay\0")]), "overlay"),
            Verdict::Ignored
        );
        // Truncated attributes, a payload shorter than nfgenmsg, garbage.
        let mut cut = message(NFT | 2, &[(1, b"overlay\0")]);
        cut[20] = 200;
        assert_eq!(concerns_table(&cut, "overlay"), Verdict::Malformed);
        let mut short = message(NFT | 2, &[]);
        short.truncate(18);
        short[0] = 18;
        assert_eq!(concerns_table(&short, "overlay"), Verdict::Malformed);
        assert_eq!(concerns_table(&[1, 2, 3], "overlay"), Verdict::Malformed);
    }
}
