//! nftables: which notifications concern overlay's table, and a fingerprint of the table to
//! tell a change behind the agent's back from the agent's own rebuild.
//!
//! Every table-scoped nf_tables message (table, chain, rule, set, element, object,
//! flowtable; new, delete or destroy) carries the table name as attribute 1 after the 4-byte
//! `nfgenmsg`, so only that much is parsed. The family is not looked at: the name is what
//! makes a table overlay's, whatever family it is built in.
//!
//! The agent's own rebuild raises the same notifications as anyone's. Rather than guess who
//! committed, the loop compares the table as listed now with how it listed right after the
//! agent last wrote it ([`fingerprint`]); equal means nothing to repair, so a rebuild never
//! triggers another.

use std::time::Duration;

use rtnetlink::packet_core::{NLA_TYPE_MASK, NetlinkBuffer, NlasIterator};
use serde_json::Value;

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

/// How long one `nft` listing may take before it counts as failed.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

async fn nft_json(args: &[&str]) -> Result<Value, String> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.arg("-j")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(NFT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("nft {} timed out", args.join(" ")))?
        .map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nft {}: bad JSON: {e}", args.join(" ")))
}

/// The families that hold a table named `table`, from `nft -j list tables`.
fn families(listing: &Value, table: &str) -> Vec<String> {
    let mut out: Vec<String> = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["name"] == table)
        .filter_map(|t| t["family"].as_str())
        // Passed to nft as an argument of its own; still, only what a family can look like.
        .filter(|f| !f.is_empty() && f.len() < 16 && f.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The listing without what changes by itself or by an identical re-creation: handles,
/// counters' values, timeouts running down, the listing's own metadata.
pub fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            map.remove("expires");
            map.remove("used");
            map.remove("metainfo");
            for (key, value) in map.iter_mut() {
                if key == "counter" && value.is_object() {
                    *value = Value::Object(Default::default());
                } else {
                    normalize(value);
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                normalize(item);
            }
            items.retain(|i| !matches!(i, Value::Object(m) if m.is_empty()));
        }
        _ => {}
    }
}

/// Every table named `table` (any family), listed and normalized; empty when there is none.
/// Two calls give the same text exactly when nobody changed those tables in between (or
/// changed them back).
pub async fn fingerprint(table: &str) -> Result<String, String> {
    let tables = nft_json(&["list", "tables"]).await?;
    let mut out = String::new();
    for family in families(&tables, table) {
        let mut listing = nft_json(&["list", "table", &family, table]).await?;
        normalize(&mut listing);
        out.push_str(&family);
        out.push(' ');
        out.push_str(&listing.to_string());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    #[test]
    fn families_holding_the_table() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "nat", "handle": 1}},
            {"table": {"family": "inet", "name": "overlay", "handle": 2}},
            {"table": {"family": "bridge", "name": "overlay", "handle": 3}},
            {"table": {"family": "ip; rm -rf", "name": "overlay", "handle": 4}},
        ]});
        assert_eq!(families(&listing, "overlay"), vec!["bridge", "inet"]);
        assert!(families(&json!({}), "overlay").is_empty());
    }

    #[test]
    fn normalized_listings_ignore_handles_and_counters_only() {
        let listing = |handle: u64, packets: u64, verdict: &str| {
            json!({"nftables": [
                {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                {"table": {"family": "ip", "name": "overlay", "handle": handle}},
                {"rule": {"family": "ip", "table": "overlay", "chain": "forward", "handle": handle + 3,
                          "expr": [{"counter": {"packets": packets, "bytes": packets * 60}}, {verdict: null}]}},
            ]})
        };
        let (mut a, mut b, mut c) = (
            listing(1, 0, "drop"),
            listing(7, 99, "drop"),
            listing(1, 0, "accept"),
        );
        normalize(&mut a);
        normalize(&mut b);
        normalize(&mut c);
        assert_eq!(a, b, "re-created identically, traffic counted");
        assert_ne!(a, c, "a rule changed");
    }
}
