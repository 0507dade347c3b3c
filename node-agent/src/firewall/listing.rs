//! What the kernel holds in overlay's tables, read from `nft -j list ruleset`, and where it
//! differs from the rules the agent would write ([`super::rules`]).
//!
//! Sets, chains, hooks and the order of rules (each found by its comment) are compared with
//! the model itself. A rule's body is compared with the body the kernel listed right after the
//! agent last wrote that same rule text ([`Bodies`]): nft spells a rule back in its own way
//! (implied dependencies dropped, operators normalised), so the kernel's own listing of what
//! the agent wrote is the only faithful reference.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::rules::TABLE;
use super::rules::{Family, Table};

/// A rule as the agent writes it: table family, chain and rule text.
pub type RuleKey = (Family, &'static str, String);

/// How the kernel listed each rule text the agent wrote (counters zeroed).
pub type Bodies = BTreeMap<RuleKey, Value>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub tables: BTreeMap<Family, TableView>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableView {
    pub sets: BTreeMap<String, SetView>,
    pub chains: BTreeMap<String, ChainView>,
    /// Objects of other kinds (maps, counters, flowtables ...): overlay writes none.
    pub others: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetView {
    pub kind: Value,
    /// Each element as compact JSON.
    pub elements: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChainView {
    /// (type, hook, priority, policy) of a base chain.
    pub base: Option<(String, String, i64, String)>,
    pub rules: Vec<RuleView>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuleView {
    pub comment: Option<String>,
    /// The statements, counters zeroed.
    pub expr: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListingError(String);

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl Listing {
    /// Reads overlay's tables out of `nft -j list ruleset` output; every other table is ignored.
    pub fn parse(json: &str) -> Result<Self, ListingError> {
        let doc: Value = serde_json::from_str(json)
            .map_err(|e| ListingError(format!("nft listed unreadable JSON: {e}")))?;
        let items = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| ListingError("nft listing has no \"nftables\" array".into()))?;
        let mut listing = Listing::default();
        for item in items {
            let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            if kind == "metainfo" {
                continue;
            }
            let table_name = if kind == "table" {
                text(body, "name")
            } else {
                text(body, "table")
            };
            let Some(family) = Family::parse(&text(body, "family")) else {
                continue;
            };
            if table_name != TABLE {
                continue;
            }
            let table = listing.tables.entry(family).or_default();
            match kind.as_str() {
                "table" => {}
                "set" | "map" => {
                    let elements = body
                        .get("elem")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(Value::to_string).collect())
                        .unwrap_or_default();
                    let types = body.get("type").cloned().unwrap_or(Value::Null);
                    // A map's kind carries its value type too, as `Set::type_json` writes it.
                    let set_kind = match body.get("map") {
                        Some(data) if kind == "map" => serde_json::json!({ "type": types, "map": data }),
                        _ => types,
                    };
                    table.sets.insert(
                        text(body, "name"),
                        SetView {
                            kind: set_kind,
                            elements,
                        },
                    );
                }
                "chain" => {
                    let base = body.get("hook").map(|_| {
                        (
                            text(body, "type"),
                            text(body, "hook"),
                            body.get("prio").and_then(Value::as_i64).unwrap_or_default(),
                            text(body, "policy"),
                        )
                    });
                    table.chains.entry(text(body, "name")).or_default().base = base;
                }
                "rule" => {
                    let mut expr = body.get("expr").cloned().unwrap_or(Value::Null);
                    zero_counters(&mut expr);
                    table
                        .chains
                        .entry(text(body, "chain"))
                        .or_default()
                        .rules
                        .push(RuleView {
                            comment: body.get("comment").and_then(Value::as_str).map(str::to_string),
                            expr,
                        });
                }
                other => table.others.push(format!("{other} {}", text(body, "name"))),
            }
        }
        Ok(listing)
    }
}

/// Counters move with traffic; only their presence is part of a rule.
fn zero_counters(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "counter" && inner.is_object() {
                    *inner = serde_json::json!({"packets": 0, "bytes": 0});
                } else {
                    zero_counters(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(zero_counters),
        _ => {}
    }
}

/// An element or rule, short enough for one drift line.
fn shown(json: &str) -> String {
    let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let text = match &value {
        // A map element: key and value.
        Value::Array(pair) if pair.len() == 2 => format!("{} : {}", atoms(&pair[0]), atoms(&pair[1])),
        Value::String(_) | Value::Object(_) | Value::Number(_) => atoms(&value),
        _ => json.to_string(),
    };
    truncate(text)
}

/// One value or a concatenation, as a ruleset writes it.
fn atoms(value: &Value) -> String {
    let one = |p: &Value| p.as_str().map(str::to_string).unwrap_or_else(|| p.to_string());
    match value {
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .map(|parts| parts.iter().map(one).collect::<Vec<_>>().join(" . "))
            .unwrap_or_default(),
        other => one(other),
    }
}

fn truncate(mut text: String) -> String {
    const MAX: usize = 120;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Up to three items and how many more.
fn some_of<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&String> = items.collect();
    let mut out: Vec<String> = all.iter().take(3).map(|s| shown(s)).collect();
    if all.len() > 3 {
        out.push(format!("and {} more", all.len() - 3));
    }
    out.join(", ")
}

/// Every difference between the kernel's tables and `expected`, one line each; empty when
/// they match. `bodies` holds the reference listing of each rule text (unknown ones are
/// checked for presence and order only).
pub fn diff(expected: &[Table], kernel: &Listing, bodies: &Bodies) -> Vec<String> {
    let mut out = Vec::new();
    for table in expected {
        let family = table.family.as_str();
        let Some(have) = kernel.tables.get(&table.family) else {
            out.push(format!("missing nftables table {family} {TABLE}"));
            continue;
        };
        for s in &table.sets {
            let Some(got) = have.sets.get(s.name) else {
                out.push(format!("missing nftables set {family} {TABLE} {}", s.name));
                continue;
            };
            if got.kind != s.type_json() {
                out.push(format!("nftables set {family} {TABLE} {}: type changed", s.name));
                continue;
            }
            let want: BTreeSet<String> = s.elements.iter().map(|e| e.json().to_string()).collect();
            let missing: Vec<&String> = want.difference(&got.elements).collect();
            let extra: Vec<&String> = got.elements.difference(&want).collect();
            if !missing.is_empty() {
                out.push(format!(
                    "nftables set {family} {TABLE} {}: missing {}",
                    s.name,
                    some_of(missing.into_iter())
                ));
            }
            if !extra.is_empty() {
                out.push(format!(
                    "nftables set {family} {TABLE} {}: extra {}",
                    s.name,
                    some_of(extra.into_iter())
                ));
            }
        }
        for name in have
            .sets
            .keys()
            .filter(|n| !table.sets.iter().any(|s| s.name == *n))
        {
            out.push(format!("extra nftables set {family} {TABLE} {name}"));
        }
        for other in &have.others {
            out.push(format!("extra nftables {other} in table {family} {TABLE}"));
        }
        for c in &table.chains {
            let chain = format!("nftables chain {family} {TABLE} {}", c.name);
            let Some(got) = have.chains.get(c.name) else {
                out.push(format!("missing {chain}"));
                continue;
            };
            let want_base = c.base.as_ref().map(|b| {
                (
                    b.kind.to_string(),
                    b.hook.to_string(),
                    i64::from(b.priority),
                    "accept".to_string(),
                )
            });
            if got.base != want_base {
                out.push(format!("{chain}: type, hook, priority or policy changed"));
            }
            out.extend(rule_drift(&chain, table.family, c, got, bodies));
        }
        for name in have
            .chains
            .keys()
            .filter(|n| !table.chains.iter().any(|c| c.name == *n))
        {
            out.push(format!("extra nftables chain {family} {TABLE} {name}"));
        }
    }
    for family in kernel.tables.keys() {
        if !expected.iter().any(|t| t.family == *family) {
            out.push(format!("extra nftables table {} {TABLE}", family.as_str()));
        }
    }
    out
}

fn rule_drift(
    chain: &str,
    family: Family,
    want: &super::rules::Chain,
    got: &ChainView,
    bodies: &Bodies,
) -> Vec<String> {
    let mut out = Vec::new();
    let same_order = want.rules.len() == got.rules.len()
        && want
            .rules
            .iter()
            .zip(&got.rules)
            .all(|(w, g)| g.comment.as_deref() == Some(w.comment));
    if same_order {
        for (w, g) in want.rules.iter().zip(&got.rules) {
            let key = (family, want.name, w.text.clone());
            if bodies.get(&key).is_some_and(|body| *body != g.expr) {
                out.push(format!("{chain}: rule \"{}\" changed", w.comment));
            }
        }
        return out;
    }
    // Count what is there by comment; a rule without one (or with a foreign one) is extra.
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &want.rules {
        *left.entry(w.comment).or_default() += 1;
    }
    let mut found = 0;
    for g in &got.rules {
        match g.comment.as_deref().and_then(|c| left.get_mut(c)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                found += 1;
            }
            _ => out.push(format!(
                "{chain}: extra rule {}{}",
                g.comment
                    .as_deref()
                    .map(|c| format!("\"{c}\" "))
                    .unwrap_or_default(),
                truncate(g.expr.to_string())
            )),
        }
    }
    for w in &want.rules {
        if let Some(n) = left.get_mut(w.comment)
            && *n > 0
        {
            *n -= 1;
            out.push(format!("{chain}: rule \"{}\" missing", w.comment));
        }
    }
    if out.is_empty() && found == want.rules.len() {
        out.push(format!("{chain}: rules out of order"));
    }
    out
}

/// Records how the kernel listed each rule of `expected`, where the chain holds exactly the
/// expected rules (by comment, in order).
pub fn learn(expected: &[Table], kernel: &Listing, bodies: &mut Bodies) {
    for table in expected {
        let Some(have) = kernel.tables.get(&table.family) else {
            continue;
        };
        for c in &table.chains {
            let Some(got) = have.chains.get(c.name) else {
                continue;
            };
            let matches = c.rules.len() == got.rules.len()
                && c.rules
                    .iter()
                    .zip(&got.rules)
                    .all(|(w, g)| g.comment.as_deref() == Some(w.comment));
            if matches {
                for (w, g) in c.rules.iter().zip(&got.rules) {
                    bodies.insert((table.family, c.name, w.text.clone()), g.expr.clone());
                }
            }
        }
    }
}

/// Whether every rule of `expected` has a reference body.
pub fn knows_all(expected: &[Table], bodies: &Bodies) -> bool {
    expected.iter().all(|t| {
        t.chains.iter().all(|c| {
            c.rules
                .iter()
                .all(|r| bodies.contains_key(&(t.family, c.name, r.text.clone())))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::{self, tests::sample};

    /// A listing of `expected` as nft would print it, with `expr` standing in for each body.
    fn listing_of(expected: &[Table]) -> Value {
        let mut items = vec![serde_json::json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}})];
        for (i, t) in expected.iter().enumerate() {
            let family = t.family.as_str();
            items.push(serde_json::json!({"table": {"family": family, "name": "overlay", "handle": i}}));
            for s in &t.sets {
                let elem: Vec<Value> = s.elements.iter().map(|e| e.json()).collect();
                let mut set = serde_json::json!({"family": family, "name": s.name, "table": "overlay",
                    "type": s.type_json(), "handle": 3});
                if s.is_map() {
                    set["type"] = s.type_json()["type"].clone();
                    set["map"] = s.type_json()["map"].clone();
                }
                if !elem.is_empty() {
                    set["elem"] = Value::Array(elem);
                }
                items.push(serde_json::json!({ s.keyword(): set }));
            }
            for c in &t.chains {
                let mut chain =
                    serde_json::json!({"family": family, "table": "overlay", "name": c.name, "handle": 9});
                if let Some(b) = &c.base {
                    chain["type"] = b.kind.into();
                    chain["hook"] = b.hook.into();
                    chain["prio"] = b.priority.into();
                    chain["policy"] = "accept".into();
                }
                items.push(serde_json::json!({ "chain": chain }));
            }
            for c in &t.chains {
                for (n, r) in c.rules.iter().enumerate() {
                    items.push(serde_json::json!({"rule": {"family": family, "table": "overlay",
                        "chain": c.name, "handle": 100 + n, "comment": r.comment,
                        "expr": [{"text": r.text}, {"counter": {"packets": n * 7, "bytes": 99}}]}}));
                }
            }
        }
        items.push(serde_json::json!({"table": {"family": "inet", "name": "docker", "handle": 1}}));
        serde_json::json!({ "nftables": items })
    }

    fn learned(expected: &[Table], listing: &Listing) -> Bodies {
        let mut bodies = Bodies::new();
        learn(expected, listing, &mut bodies);
        assert!(knows_all(expected, &bodies));
        bodies
    }

    #[test]
    fn a_faithful_listing_has_no_drift_and_counters_do_not_count() {
        let expected = rules::tables(&sample());
        let json = listing_of(&expected);
        let listing = Listing::parse(&json.to_string()).unwrap();
        assert!(!listing.tables.contains_key(&Family::Ip));
        let bodies = learned(&expected, &listing);
        assert_eq!(diff(&expected, &listing, &bodies), Vec::<String>::new());
        // Traffic moves the counters: still no drift.
        let moved = json.to_string().replace("\"bytes\":99", "\"bytes\":123456");
        let listing = Listing::parse(&moved).unwrap();
        assert_eq!(diff(&expected, &listing, &bodies), Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let expected = rules::tables(&sample());
        let json = listing_of(&expected);
        let bodies = learned(&expected, &Listing::parse(&json.to_string()).unwrap());
        let drift = |edit: &dyn Fn(&mut Vec<Value>)| {
            let mut doc = json.clone();
            edit(doc["nftables"].as_array_mut().unwrap());
            diff(&expected, &Listing::parse(&doc.to_string()).unwrap(), &bodies)
        };
        let is = |kind: &str, v: &Value| v.get(kind).is_some();
        let named = |v: &Value, kind: &str, name: &str| v[kind]["name"] == name;

        let family = |v: &Value| {
            v.as_object()
                .and_then(|o| o.values().next())
                .and_then(|b| b.get("family"))
                .cloned()
        };
        let d = drift(&|items| items.retain(|v| family(v) != Some("inet".into())));
        assert_eq!(d, vec!["missing nftables table inet overlay".to_string()]);

        let d = drift(&|items| {
            for v in items.iter_mut().filter(|v| named(v, "set", "peers")) {
                v["set"]["elem"] = serde_json::json!(["192.0.2.66"]);
            }
        });
        assert_eq!(
            d,
            vec![
                "nftables set inet overlay peers: missing 192.0.2.12".to_string(),
                "nftables set inet overlay peers: extra 192.0.2.66".to_string()
            ]
        );

        let d = drift(&|items| {
            items.retain(|v| !(is("rule", v) && v["rule"]["comment"] == "DNS on the gateway"))
        });
        assert_eq!(
            d,
            vec![
                "nftables chain inet overlay workload_to_host: rule \"DNS on the gateway\" missing"
                    .to_string()
            ]
        );

        let d = drift(&|items| {
            for v in items
                .iter_mut()
                .filter(|v| is("rule", v) && v["rule"]["comment"] == "source MAC is not the endpoint's")
            {
                v["rule"]["expr"] = serde_json::json!([{"accept": null}]);
            }
        });
        assert_eq!(
            d,
            vec!["nftables chain bridge overlay from_workload: rule \"source MAC is not the endpoint's\" changed".to_string()]
        );

        let d = drift(&|items| {
            items.push(
                serde_json::json!({"rule": {"family": "inet", "table": "overlay", "chain": "forward",
                "handle": 500, "expr": [{"accept": null}]}}),
            );
        });
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("nftables chain inet overlay forward: extra rule [{\"accept\":null}]"),
            "{d:?}"
        );

        let d = drift(&|items| {
            for v in items
                .iter_mut()
                .filter(|v| named(v, "chain", "forward") && v["chain"]["family"] == "inet")
            {
                v["chain"]["policy"] = "drop".into();
            }
        });
        assert_eq!(
            d,
            vec!["nftables chain inet overlay forward: type, hook, priority or policy changed".to_string()]
        );

        let d = drift(&|items| {
            items.push(serde_json::json!({"table": {"family": "ip", "name": "overlay", "handle": 77}}));
        });
        assert_eq!(d, vec!["extra nftables table ip overlay".to_string()]);

        // Two rules swapped.
        let d = drift(&|items| {
            let a = items
                .iter()
                .position(|v| is("rule", v) && v["rule"]["comment"] == "echo to the gateway")
                .unwrap();
            items.swap(a, a + 1);
        });
        assert_eq!(
            d,
            vec!["nftables chain inet overlay workload_to_host: rules out of order".to_string()]
        );
    }

    #[test]
    fn no_tables_wanted_means_any_table_is_extra() {
        let listing = Listing::parse(&listing_of(&rules::tables(&sample())).to_string()).unwrap();
        let d = diff(&[], &listing, &Bodies::new());
        assert_eq!(
            d,
            vec![
                "extra nftables table bridge overlay".to_string(),
                "extra nftables table inet overlay".to_string()
            ]
        );
        assert!(diff(&[], &Listing::default(), &Bodies::new()).is_empty());
    }

    #[test]
    fn unreadable_listings_are_errors() {
        assert!(Listing::parse("not json").is_err());
        assert!(Listing::parse("{\"x\": 1}").is_err());
        assert!(Listing::parse("{\"nftables\": []}").unwrap().tables.is_empty());
    }
}
