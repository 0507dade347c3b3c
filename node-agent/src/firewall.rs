//! nftables: isolation between overlay networks and masquerade for NAT egress.
//!
//! Everything lives in one table, `ip overlay`, rebuilt atomically from the desired state in a
//! single `nft` transaction (add, delete, re-create): there is never a moment without rules,
//! and no other table on the host is read or touched. With nothing to enforce the table is
//! removed.

use std::borrow::Cow;

use ipnetwork::Ipv4Network;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::spec::{HostSpec, Mode};

pub const TABLE: &str = "overlay";

/// What the rules depend on; compared with the last applied one to skip no-op rebuilds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSpec {
    /// (network, CIDR, masquerade traffic leaving the network)
    pub networks: Vec<(String, Ipv4Network, bool)>,
    pub underlay_iface: String,
}

impl FirewallSpec {
    pub fn from_host(spec: &HostSpec, underlay_iface: &str) -> Self {
        Self {
            // macvlan workloads sit on the LAN and never cross this host's forward path.
            networks: spec
                .networks
                .iter()
                .filter(|n| n.mode != Mode::Macvlan)
                .map(|n| (n.name.clone(), n.cidr, n.nat_egress))
                .collect(),
            underlay_iface: underlay_iface.to_string(),
        }
    }

    fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(field),
    })))
}

fn prefix(net: Ipv4Network) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: net.prefix() as u32,
    }))
}

fn matches(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>, comment: String) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Owned(comment)),
        ..Default::default()
    })
}

/// The whole transaction: drop the old table (creating it first so the delete cannot fail)
/// and, unless nothing is needed, build the new one.
pub fn ruleset(spec: &FirewallSpec) -> Nftables<'static> {
    let table = || {
        NfListObject::Table(Table {
            family: NfFamily::IP,
            name: Cow::Borrowed(TABLE),
            handle: None,
        })
    };
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    if spec.is_empty() {
        return batch.to_nftables();
    }
    batch.add(table());
    // filter priority (0) and srcnat priority (100), as `nft` names them.
    batch.add(chain("forward", NfChainType::Filter, NfHook::Forward, 0));
    batch.add(chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100));
    for (name, cidr, _) in &spec.networks {
        let others: Vec<SetItem> = spec
            .networks
            .iter()
            .filter(|(n, _, _)| n != name)
            .map(|(_, c, _)| SetItem::Element(prefix(*c)))
            .collect();
        if others.is_empty() {
            continue;
        }
        batch.add(rule(
            "forward",
            vec![
                matches(payload("ip", "saddr"), Operator::EQ, prefix(*cidr)),
                matches(
                    payload("ip", "daddr"),
                    Operator::EQ,
                    Expression::Named(NamedExpression::Set(others)),
                ),
                Statement::Drop(None),
            ],
            format!("isolate {name}"),
        ));
    }
    for (name, cidr, _) in spec.networks.iter().filter(|(_, _, nat)| *nat) {
        batch.add(rule(
            "postrouting",
            vec![
                matches(payload("ip", "saddr"), Operator::EQ, prefix(*cidr)),
                matches(payload("ip", "daddr"), Operator::NEQ, prefix(*cidr)),
                matches(
                    Expression::Named(NamedExpression::Meta(nftables::expr::Meta {
                        key: nftables::expr::MetaKey::Oifname,
                    })),
                    Operator::EQ,
                    Expression::String(Cow::Owned(spec.underlay_iface.clone())),
                ),
                Statement::Masquerade(None),
            ],
            format!("nat egress {name}"),
        ));
    }
    batch.to_nftables()
}

#[derive(Debug, thiserror::Error)]
#[error("nft: {0}")]
pub struct FirewallError(String);

/// Applies the ruleset with `nft -j -f -` (a child process; nothing forks without exec).
/// Whether overlay's table is in the kernel (the audit's check; its rules are always rebuilt
/// whole, so presence is what can drift behind the agent's back).
pub fn table_present() -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn apply(spec: &FirewallSpec) -> Result<(), FirewallError> {
    nftables::helper::apply_ruleset(&ruleset(spec)).map_err(|e| FirewallError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(spec: &FirewallSpec) -> String {
        serde_json::to_string(&ruleset(spec)).unwrap()
    }

    #[test]
    fn isolation_and_nat_rules() {
        let spec = FirewallSpec {
            networks: vec![
                ("blue".into(), "10.1.0.0/16".parse().unwrap(), false),
                ("red".into(), "10.2.0.0/16".parse().unwrap(), true),
            ],
            underlay_iface: "eth0".into(),
        };
        let j = json(&spec);
        assert!(j.contains("isolate blue") && j.contains("isolate red"), "{j}");
        assert!(
            j.contains("nat egress red") && !j.contains("nat egress blue"),
            "{j}"
        );
        assert!(j.contains("masquerade") && j.contains("\"oifname\""), "{j}");
        // Re-created atomically: add, delete, add.
        let ops: Vec<&str> = ["\"add\"", "\"delete\""]
            .iter()
            .copied()
            .filter(|k| j.contains(k))
            .collect();
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn no_networks_means_no_table() {
        let spec = FirewallSpec {
            networks: vec![],
            underlay_iface: "eth0".into(),
        };
        let nft = ruleset(&spec);
        assert_eq!(nft.objects.len(), 2, "only add+delete of the table");
    }
}
