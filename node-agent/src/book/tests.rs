//! The host's allocator: unit cases, and random attach / detach / restart / lost-state
//! sequences that must never hand out an address that a live endpoint holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

fn lease() -> Lease {
    Lease {
        subnet: "10.1.3.0/29".parse().unwrap(),
        gateway: "10.1.3.1".parse().unwrap(),
    }
}

fn ask(key: &str, netns: &str) -> NewEndpoint {
    NewEndpoint {
        key: key.into(),
        network: "blue".into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        ip: None,
        names: vec![],
        ports: vec![],
        owner: "cni".into(),
        default_route: false,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn addresses_come_round_robin_from_the_lease_never_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut book = Book::open(dir.path()).unwrap();
    let none = BTreeSet::new();
    // A /29: .2 to .6 are endpoints' (.1 gateway, .0 network, .7 broadcast).
    let got: Vec<Ipv4Addr> = (0..5)
        .map(|i| {
            book.add_from_lease(
                ask(&format!("c{i}/eth0"), &format!("/run/netns/n{i}")),
                lease(),
                &none,
                i,
                Commit::Durable,
            )
            .unwrap()
            .ip
        })
        .collect();
    assert_eq!(
        got,
        ["10.1.3.2", "10.1.3.3", "10.1.3.4", "10.1.3.5", "10.1.3.6"].map(ip)
    );
    let full = book.add_from_lease(
        ask("c9/eth0", "/run/netns/n9"),
        lease(),
        &none,
        9,
        Commit::Durable,
    );
    assert!(matches!(full, Err(BookError::PoolExhausted { .. })), "{full:?}");
    // A freed address is the last to come back.
    book.remove("c1/eth0").unwrap();
    let again = book
        .add_from_lease(
            ask("c10/eth0", "/run/netns/n10"),
            lease(),
            &none,
            10,
            Commit::Durable,
        )
        .unwrap();
    assert_eq!(again.ip, ip("10.1.3.3"), "the only free one");
    assert_eq!(again.mac.to_string(), "0a:58:0a:01:03:03");
}

#[test]
fn requested_addresses_and_clashes_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut book = Book::open(dir.path()).unwrap();
    let controller: BTreeSet<Ipv4Addr> = [ip("10.1.3.4")].into();
    let with_ip = |key: &str, a: &str| {
        let mut r = ask(key, &format!("/run/netns/{key}"));
        r.ip = Some(ip(a));
        r
    };
    for (a, says) in [
        ("10.1.3.1", "gateway"),
        ("10.1.3.7", "allows 10.1.3.2 to 10.1.3.6"),
        ("10.2.0.5", "not this host's"),
        ("10.1.3.4", "already used"),
    ] {
        let err = book
            .add_from_lease(with_ip("x", a), lease(), &controller, 1, Commit::Durable)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{a}: {err}");
    }
    book.add_from_lease(with_ip("a", "10.1.3.5"), lease(), &controller, 1, Commit::Durable)
        .unwrap();
    let err = book
        .add_from_lease(with_ip("a", "10.1.3.6"), lease(), &controller, 1, Commit::Durable)
        .unwrap_err()
        .to_string();
    assert!(err.contains("key \"a\" is already attached"), "{err}");
    let mut same_if = ask("b", "/run/netns/a");
    same_if.ip = Some(ip("10.1.3.6"));
    let err = book
        .add_from_lease(same_if, lease(), &controller, 1, Commit::Durable)
        .unwrap_err()
        .to_string();
    assert!(err.contains("interface eth0 in namespace /run/netns/a"), "{err}");
    // Nothing was written by the refusals.
    assert_eq!(book.len(), 1);
}

#[test]
fn one_default_route_per_namespace_and_the_oldest_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut book = Book::open(dir.path()).unwrap();
    let none = BTreeSet::new();
    let on = |book: &Book| -> Vec<String> {
        book.records()
            .filter(|r| r.default_route)
            .map(|r| r.key.clone())
            .collect()
    };
    let mut second = ask("w/eth1", "/run/netns/w");
    second.ifname = "eth1".into();
    second.network = "red".into();
    book.add_from_lease(ask("w/eth0", "/run/netns/w"), lease(), &none, 1, Commit::Durable)
        .unwrap();
    book.add_from_lease(second, lease(), &none, 2, Commit::Durable)
        .unwrap();
    assert_eq!(on(&book), ["w/eth0"]);
    let mut third = ask("w/eth2", "/run/netns/w");
    third.ifname = "eth2".into();
    third.network = "green".into();
    third.default_route = true;
    book.add_from_lease(third, lease(), &none, 3, Commit::Durable)
        .unwrap();
    assert_eq!(on(&book), ["w/eth2"], "--default-route takes it over");
    book.remove("w/eth2").unwrap();
    assert_eq!(on(&book), ["w/eth0"], "back to the oldest");
    // And all of it survives a restart.
    drop(book);
    let book = Book::open(dir.path()).unwrap();
    assert_eq!(on(&book), ["w/eth0"]);
    assert!(!book.needs_import(), "an existing store needs no import");
}

#[test]
fn a_lost_store_is_new_and_takes_the_controllers_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut book = Book::open(dir.path()).unwrap();
    assert!(book.needs_import());
    let none = BTreeSet::new();
    let r = book
        .add_from_lease(
            ask("c1/eth0", "/run/netns/c1"),
            lease(),
            &none,
            1,
            Commit::Durable,
        )
        .unwrap();
    drop(book);
    std::fs::remove_file(dir.path().join(crate::store::STORE_FILE)).unwrap();
    let mut book = Book::open(dir.path()).unwrap();
    assert!(book.needs_import() && book.is_empty());
    assert_eq!(book.import(vec![r.clone()]).unwrap(), 1);
    assert!(!book.needs_import());
    let imported = book.get("c1/eth0").unwrap();
    assert!(imported.reported, "what the controller holds is reported");
    let next = book
        .add_from_lease(
            ask("c2/eth0", "/run/netns/c2"),
            lease(),
            &none,
            2,
            Commit::Durable,
        )
        .unwrap();
    assert_ne!(next.ip, r.ip);
    assert!(next.id > r.id, "ids never repeat across a rebuild");
}

// ---------------------------------------------------------------- random sequences

#[derive(Clone, Debug)]
enum Op {
    Attach {
        key: u8,
        want: Option<u8>,
        /// Staged and sealed, as the local API does (the answer waits for the seal);
        /// otherwise staged only, the agent dying before the seal: never answered.
        sealed: bool,
    },
    Detach {
        key: u8,
    },
    /// The agent reports its book to the controller.
    Sync,
    Restart,
    /// The state dir is lost; the new store imports the controller's records, and the kernel
    /// shows the addresses of the workloads that `chatty` selects.
    LoseState {
        chatty: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, proptest::option::of(2u8..8), proptest::bool::weighted(0.8))
            .prop_map(|(key, want, sealed)| Op::Attach { key, want, sealed }),
        2 => (0u8..12).prop_map(|key| Op::Detach { key }),
        2 => Just(Op::Sync),
        1 => Just(Op::Restart),
        1 => any::<u8>().prop_map(|chatty| Op::LoseState { chatty }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever happens, no two live endpoints ever hold the same address; an address the
    /// book hands out is never held by a workload it lost track of, when that workload was
    /// known to the controller or seen in the kernel; no record is lost across restarts.
    #[test]
    fn no_address_is_ever_held_twice(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut book = Book::open(dir.path()).unwrap();
        // What the workloads hold in reality: key -> address (the book may have lost some).
        let mut live: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        // What the controller recorded at the last sync.
        let mut controller: BTreeMap<String, crate::store::Record> = BTreeMap::new();
        // Addresses the book may not reuse: workloads it lost but the controller or the kernel
        // still shows.
        let mut visible: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut now = 0;
        for op in ops {
            now += 1;
            match op {
                Op::Attach { key, want, sealed } => {
                    let key = format!("c{key}/eth0");
                    let mut req = ask(&key, &format!("/run/netns/{key}"));
                    req.ip = want.map(|w| Ipv4Addr::new(10, 1, 3, w));
                    let used: BTreeSet<Ipv4Addr> = controller.values().map(|r| r.ip).chain(visible.iter().copied()).collect();
                    if let Ok(r) = book.add_from_lease(req, lease(), &used, now, Commit::Staged) {
                        prop_assert!(!live.contains_key(&key), "{key} attached twice");
                        for (k, a) in &live {
                            prop_assert_ne!(*a, r.ip, "{} handed out again ({} holds it)", r.ip, k);
                        }
                        prop_assert!(book.is_staged(&key));
                        if sealed {
                            book.sealer().seal().unwrap();
                            book.sealed(&key);
                            live.insert(key, r.ip);
                        } else {
                            // The agent dies before the seal: nobody was answered. Whether
                            // the record reached the disk or not, its devices (if the pass
                            // made them) are a stray or stale to the next agent.
                            drop(book);
                            book = Book::open(dir.path()).unwrap();
                            prop_assert!(!book.is_staged(&key));
                        }
                    }
                }
                Op::Detach { key } => {
                    let key = format!("c{key}/eth0");
                    if book.remove(&key).unwrap().is_some() {
                        live.remove(&key);
                    }
                }
                Op::Sync => {
                    controller = book.records().map(|r| (r.key.clone(), r.clone())).collect();
                    // What the controller knows, it also forgets: lost workloads it no longer
                    // records stay visible only through the kernel.
                }
                Op::Restart => {
                    let before: Vec<_> = book.records().cloned().collect();
                    drop(book);
                    book = Book::open(dir.path()).unwrap();
                    let after: Vec<_> = book.records().cloned().collect();
                    prop_assert_eq!(before, after, "records lost across a restart");
                    for key in live.keys().filter(|k| !k.starts_with("lost:")) {
                        prop_assert!(book.get(key).is_some(), "live {key} forgotten by a restart");
                    }
                }
                Op::LoseState { chatty } => {
                    drop(book);
                    std::fs::remove_file(dir.path().join(crate::store::STORE_FILE)).unwrap();
                    book = Book::open(dir.path()).unwrap();
                    prop_assert!(book.needs_import());
                    book.import(controller.values().cloned().collect()).unwrap();
                    // Workloads the new book does not know (by key and address: a record the
                    // controller has may be stale): gone from its view, still alive.
                    let known: BTreeSet<(String, Ipv4Addr)> =
                        book.records().map(|r| (r.key.clone(), r.ip)).collect();
                    let lost: Vec<(String, Ipv4Addr)> = live
                        .iter()
                        .filter(|(k, a)| !known.contains(&((*k).clone(), **a)))
                        .map(|(k, a)| (k.clone(), *a))
                        .collect();
                    for (i, (k, a)) in lost.into_iter().enumerate() {
                        if chatty & (1 << (i % 8)) != 0 {
                            // The kernel saw it (its MAC on the bridge): its address stays
                            // taken, by a workload the book cannot detach.
                            visible.insert(a);
                            live.insert(format!("lost:{k}"), a);
                        }
                        live.remove(&k);
                    }
                }
            }
            // The book never holds one address twice.
            let mut seen = BTreeSet::new();
            for r in book.records() {
                prop_assert!(seen.insert(r.ip), "{} held twice in the book", r.ip);
                prop_assert!(r.ip != lease().gateway);
            }
        }
    }
}

#[test]
fn a_freed_address_is_not_the_next_one_after_a_restart_either() {
    let dir = tempfile::tempdir().unwrap();
    let none = BTreeSet::new();
    let mut book = Book::open(dir.path()).unwrap();
    book.add_from_lease(ask("a/eth0", "/run/netns/a"), lease(), &none, 1, Commit::Durable)
        .unwrap();
    let b = book
        .add_from_lease(ask("b/eth0", "/run/netns/b"), lease(), &none, 2, Commit::Durable)
        .unwrap();
    book.remove("b/eth0").unwrap();
    drop(book);
    let mut book = Book::open(dir.path()).unwrap();
    let c = book
        .add_from_lease(ask("c/eth0", "/run/netns/c"), lease(), &none, 3, Commit::Durable)
        .unwrap();
    assert_ne!(c.ip, b.ip, "the cursor survives the restart");
}
