use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::*;

const TTLS: Ttls = Ttls {
    positive: 1,
    negative: 1,
};
const BLUE_GW: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const BLUE_WEB: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const RED_GW: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

fn zone(network: &str, cidr: &str, gateway: Ipv4Addr, names: &[(&str, &[Ipv4Addr])]) -> Zone {
    Zone {
        network: network.into(),
        domain: network_domain(network),
        gateway,
        cidr: cidr.parse().unwrap(),
        cidr6: None,
        names: names
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_vec()))
            .collect::<BTreeMap<_, _>>(),
        names6: BTreeMap::new(),
    }
}

/// `zone` made dual-stack: IPv6 CIDR `cidr6` and the IPv6 addresses of `names6`.
fn dual(zone: Zone, cidr6: &str, names6: &[(&str, &[Ipv6Addr])]) -> Zone {
    Zone {
        cidr6: Some(cidr6.parse().unwrap()),
        names6: names6.iter().map(|(n, a)| (n.to_string(), a.to_vec())).collect(),
        ..zone
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// `x.x.….ip6.arpa.`, the 32 nibbles of `addr` reversed.
fn arpa6(addr: Ipv6Addr) -> String {
    let nibbles: Vec<u8> = addr.octets().iter().flat_map(|o| [o >> 4, o & 0xf]).collect();
    let mut name: String = nibbles.iter().rev().map(|n| format!("{n:x}.")).collect();
    name.push_str("ip6.arpa.");
    name
}

/// blue (dual-stack, fd00:1::/48): db on two endpoints (10.1.0.5 and fd00:1::5 on this host,
/// 10.1.1.5 and fd00:1:0:1::5 on another), web (IPv4 only), db.svc, v6only (IPv6 only);
/// red (dual-stack, fd00:2::/48): db (with fd00:2::9) and cache (IPv4 only).
fn table() -> Table {
    let (t, problems) = Table::build(
        vec![
            dual(
                zone(
                    "blue",
                    "10.1.0.0/16",
                    BLUE_GW,
                    &[
                        ("db", &[ip("10.1.0.5"), ip("10.1.1.5")]),
                        ("web", &[BLUE_WEB]),
                        ("db.svc", &[ip("10.1.0.5")]),
                    ],
                ),
                "fd00:1::/48",
                &[
                    ("db", &[ip6("fd00:1::5"), ip6("fd00:1:0:1::5")]),
                    ("db.svc", &[ip6("fd00:1::5")]),
                    ("v6only", &[ip6("fd00:1::7")]),
                ],
            ),
            dual(
                zone(
                    "red",
                    "10.2.0.0/16",
                    RED_GW,
                    &[("db", &[ip("10.2.0.9")]), ("cache", &[ip("10.2.0.10")])],
                ),
                "fd00:2::/48",
                &[("db", &[ip6("fd00:2::9")])],
            ),
        ],
        TTLS,
        7,
    );
    assert!(problems.is_empty(), "{problems:?}");
    t
}

fn ask(t: &Table, gw: Ipv4Addr, name: &str, qtype: RecordType) -> Decision {
    t.decide(
        gw,
        IpAddr::V4(BLUE_WEB),
        &Query::query(Name::from_ascii(name).unwrap(), qtype),
    )
}

fn ask_red(t: &Table, name: &str, qtype: RecordType) -> Decision {
    t.decide(
        RED_GW,
        IpAddr::V4(ip("10.2.0.10")),
        &Query::query(Name::from_ascii(name).unwrap(), qtype),
    )
}

fn addresses(d: &Decision) -> Vec<Ipv4Addr> {
    match d {
        Decision::Local { answers, .. } => answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        other => panic!("not a local answer: {other:?}"),
    }
}

fn addresses6(d: &Decision) -> Vec<Ipv6Addr> {
    match d {
        Decision::Local { answers, .. } => answers
            .iter()
            .filter_map(|r| match r.data {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        other => panic!("not a local answer: {other:?}"),
    }
}

fn rcode(d: &Decision) -> (ResponseCode, usize, usize) {
    match d {
        Decision::Local {
            rcode,
            answers,
            authorities,
        } => (*rcode, answers.len(), authorities.len()),
        other => panic!("not a local answer: {other:?}"),
    }
}

#[test]
fn a_for_the_bare_name_and_the_full_name_in_any_case() {
    let t = table();
    for name in ["web.", "WEB.", "web.blue.overlay.", "Web.Blue.OVERLAY."] {
        let d = ask(&t, BLUE_GW, name, RecordType::A);
        assert_eq!(addresses(&d), vec![BLUE_WEB], "{name}");
        // The owner is the name as asked (0x20 clients compare case).
        if let Decision::Local { answers, .. } = &d {
            assert_eq!(answers[0].name.to_ascii(), name);
            assert_eq!(answers[0].ttl, 1);
        }
    }
    assert_eq!(
        addresses(&ask(&t, BLUE_GW, "db.svc.blue.overlay.", RecordType::A)),
        vec![ip("10.1.0.5")]
    );
}

#[test]
fn a_shared_name_answers_every_endpoint_in_rotating_order() {
    let t = table();
    let first = addresses(&ask(&t, BLUE_GW, "db.", RecordType::A));
    let second = addresses(&ask(&t, BLUE_GW, "db.", RecordType::A));
    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 2);
    assert_ne!(first, second, "the order rotates");
    let mut a = first.clone();
    a.sort();
    assert_eq!(a, vec![ip("10.1.0.5"), ip("10.1.1.5")]);
}

#[test]
fn answers_are_capped_but_rotate_through_everything() {
    let many: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(10, 1, 3, i)).collect();
    let (t, _) = Table::build(
        vec![zone("blue", "10.1.0.0/16", BLUE_GW, &[("big", &many)])],
        TTLS,
        1,
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let got = addresses(&ask(&t, BLUE_GW, "big.", RecordType::A));
        assert_eq!(got.len(), MAX_ANSWERS);
        seen.extend(got);
    }
    assert!(
        seen.len() > MAX_ANSWERS,
        "rotation reaches beyond the first {MAX_ANSWERS}"
    );
}

#[test]
fn aaaa_and_other_types_of_a_known_name_are_nodata_not_nxdomain() {
    let t = table();
    for qtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let d = ask(&t, BLUE_GW, "web.blue.overlay.", qtype);
        assert_eq!(rcode(&d), (ResponseCode::NoError, 0, 1), "{qtype}");
        let d = ask(&t, BLUE_GW, "web.", qtype);
        assert_eq!(rcode(&d), (ResponseCode::NoError, 0, 1), "bare {qtype}");
    }
    // A parent that exists only through `db.svc`, and the apex itself.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "svc.blue.overlay.", RecordType::A)),
        (ResponseCode::NoError, 0, 1)
    );
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "blue.overlay.", RecordType::A)),
        (ResponseCode::NoError, 0, 1)
    );
    let soa = ask(&t, BLUE_GW, "blue.overlay.", RecordType::SOA);
    assert_eq!(rcode(&soa), (ResponseCode::NoError, 1, 0));
}

#[test]
fn unknown_names_in_the_zone_are_nxdomain_with_the_soa() {
    let t = table();
    for name in ["nope.blue.overlay.", "x.web.blue.overlay.", "cache.blue.overlay."] {
        let d = ask(&t, BLUE_GW, name, RecordType::A);
        assert_eq!(rcode(&d), (ResponseCode::NXDomain, 0, 1), "{name}");
        if let Decision::Local { authorities, .. } = &d {
            match &authorities[0].data {
                RData::SOA(soa) => {
                    assert_eq!(soa.serial, 7);
                    assert_eq!(soa.minimum, 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let d = ask(&t, BLUE_GW, "nope.blue.overlay.", RecordType::AAAA);
    assert_eq!(rcode(&d), (ResponseCode::NXDomain, 0, 1));
}

#[test]
fn ptr_for_the_networks_addresses() {
    let t = table();
    let d = ask(&t, BLUE_GW, "2.0.1.10.in-addr.arpa.", RecordType::PTR);
    match &d {
        Decision::Local { rcode, answers, .. } => {
            assert_eq!(*rcode, ResponseCode::NoError);
            assert_eq!(answers.len(), 1);
            assert_eq!(
                answers[0].data,
                RData::PTR(PTR(Name::from_str("web.blue.overlay.").unwrap()))
            );
        }
        other => panic!("{other:?}"),
    }
    // 10.1.0.5 carries db and db.svc.
    let names = match ask(&t, BLUE_GW, "5.0.1.10.IN-ADDR.ARPA.", RecordType::PTR) {
        Decision::Local { answers, .. } => answers.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(names, 2);
    // An address of the network without a name, the gateway included: NXDOMAIN.
    for name in ["77.0.1.10.in-addr.arpa.", "1.0.1.10.in-addr.arpa."] {
        let d = ask(&t, BLUE_GW, name, RecordType::PTR);
        assert_eq!(rcode(&d), (ResponseCode::NXDomain, 0, 1), "{name}");
        if let Decision::Local { authorities, .. } = &d {
            assert_eq!(authorities[0].name.to_ascii(), "1.10.in-addr.arpa.");
        }
    }
    // A named address asked for another type.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "2.0.1.10.in-addr.arpa.", RecordType::A)),
        (ResponseCode::NoError, 0, 1)
    );
}

#[test]
fn names_of_another_network_never_resolve() {
    let t = table();
    // red's `cache`, bare or in red's zone, asked on blue's gateway.
    assert_eq!(ask(&t, BLUE_GW, "cache.", RecordType::A), Decision::Forward);
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "cache.red.overlay.", RecordType::A)),
        (ResponseCode::NXDomain, 0, 0)
    );
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "db.red.overlay.", RecordType::A)),
        (ResponseCode::NXDomain, 0, 0)
    );
    // red's addresses reversed from blue.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "9.0.2.10.in-addr.arpa.", RecordType::PTR)),
        (ResponseCode::NXDomain, 0, 0)
    );
    // Both have a `db`: each gateway answers its own.
    assert_eq!(
        addresses(&ask_red(&t, "db.", RecordType::A)),
        vec![ip("10.2.0.9")]
    );
    assert_eq!(
        addresses(&ask_red(&t, "cache.red.overlay.", RecordType::A)),
        vec![ip("10.2.0.10")]
    );
    assert_eq!(
        rcode(&ask_red(&t, "web.blue.overlay.", RecordType::A)),
        (ResponseCode::NXDomain, 0, 0)
    );
    assert_eq!(ask_red(&t, "web.", RecordType::A), Decision::Forward);
}

#[test]
fn everything_else_is_forwarded() {
    let t = table();
    for (name, qtype) in [
        ("example.com.", RecordType::A),
        ("www.example.com.", RecordType::AAAA),
        ("localhost.", RecordType::A),
        ("db.svc.", RecordType::A),
        ("8.8.8.8.in-addr.arpa.", RecordType::PTR),
        ("1.10.in-addr.arpa.", RecordType::PTR),
        (".", RecordType::NS),
    ] {
        assert_eq!(ask(&t, BLUE_GW, name, qtype), Decision::Forward, "{name}");
    }
}

#[test]
fn refused_for_unknown_gateways_foreign_sources_and_other_classes() {
    let t = table();
    assert_eq!(ask(&t, ip("10.9.0.1"), "web.", RecordType::A), Decision::Refused);
    let q = Query::query(Name::from_str("web.").unwrap(), RecordType::A);
    // A red workload (or anything outside blue) asking blue's gateway.
    assert_eq!(
        t.decide(BLUE_GW, IpAddr::V4(ip("10.2.0.10")), &q),
        Decision::Refused
    );
    assert_eq!(
        t.decide(BLUE_GW, "192.0.2.1".parse().unwrap(), &q),
        Decision::Refused
    );
    assert_eq!(t.decide(BLUE_GW, "::1".parse().unwrap(), &q), Decision::Refused);
    assert_eq!(
        addresses(&t.decide(BLUE_GW, "::ffff:10.1.0.2".parse().unwrap(), &q)),
        vec![BLUE_WEB]
    );
    let mut chaos = Query::query(Name::from_str("version.bind.").unwrap(), RecordType::TXT);
    chaos.set_query_class(DNSClass::CH);
    assert_eq!(t.decide(BLUE_GW, IpAddr::V4(BLUE_WEB), &chaos), Decision::Refused);
}

#[test]
fn bad_zones_and_names_are_reported_and_the_rest_is_kept() {
    let bad_names: &[(&str, &[Ipv4Addr])] = &[
        ("ok", &[ip("10.1.0.3")]),
        ("with space", &[ip("10.1.0.4")]),
        ("", &[ip("10.1.0.4")]),
        ("a..b", &[ip("10.1.0.4")]),
        ("*", &[ip("10.1.0.4")]),
        ("nul\0", &[ip("10.1.0.4")]),
        ("outside", &[ip("10.9.0.4"), ip("10.1.0.6")]),
        ("OK", &[ip("10.1.0.7")]),
        (&*"x".repeat(64), &[ip("10.1.0.4")]),
    ];
    let long_domain = format!("{}.overlay.", ["abcdefghij"; 20].join("."));
    let (t, problems) = Table::build(
        vec![
            zone("blue", "10.1.0.0/16", BLUE_GW, bad_names),
            zone("dupgw", "10.1.0.0/16", BLUE_GW, &[]),
            Zone {
                domain: "blue.overlay".into(),
                ..zone("dupdomain", "10.3.0.0/16", ip("10.3.0.1"), &[])
            },
            zone("outside", "10.4.0.0/16", ip("10.5.0.1"), &[]),
            Zone {
                domain: "bad domain.".into(),
                ..zone("baddomain", "10.6.0.0/16", ip("10.6.0.1"), &[])
            },
            Zone {
                domain: "6.10.in-addr.arpa.".into(),
                ..zone("arpa", "10.6.0.0/16", ip("10.6.0.1"), &[])
            },
            Zone {
                domain: long_domain,
                ..zone(
                    "long",
                    "10.7.0.0/16",
                    ip("10.7.0.1"),
                    &[("abcdefghijklmnopqrstuvwxyz", &[ip("10.7.0.2")])],
                )
            },
        ],
        TTLS,
        1,
    );
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text.iter().all(|l| !l.contains('\n')), "one line each: {text:?}");
    let count = |needle: &str| text.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("network blue: name"), 7, "{text:?}");
    assert_eq!(
        count("address 10.9.0.4 skipped: outside 10.1.0.0/16"),
        1,
        "{text:?}"
    );
    assert_eq!(
        count("network dupgw: zone skipped: its gateway 10.1.0.1 is network blue's"),
        1,
        "{text:?}"
    );
    assert_eq!(
        count("network dupdomain: zone skipped: its domain blue.overlay. is network blue's"),
        1,
        "{text:?}"
    );
    assert_eq!(
        count("network outside: zone skipped: gateway 10.5.0.1 is outside 10.4.0.0/16"),
        1
    );
    assert_eq!(count("network baddomain: zone skipped"), 1, "{text:?}");
    assert_eq!(count("network arpa: zone skipped"), 1, "{text:?}");
    assert_eq!(count("network long: name"), 1, "{text:?}");
    // blue kept its good names: `ok`/`OK` merged, `outside` with its one good address.
    let mut ok = addresses(&ask(&t, BLUE_GW, "ok.", RecordType::A));
    ok.sort();
    assert_eq!(ok, vec![ip("10.1.0.3"), ip("10.1.0.7")]);
    assert_eq!(
        addresses(&ask(&t, BLUE_GW, "outside.", RecordType::A)),
        vec![ip("10.1.0.6")]
    );
    assert_eq!(t.gateways().count(), 2, "blue and long");
    assert_eq!(t.names(), 2);
}

#[test]
fn domains_follow_the_network_name() {
    assert_eq!(network_domain("Blue"), "blue.overlay.");
    assert!(parse_domain("blue.overlay").is_ok());
    assert!(parse_domain("blue.overlay.").is_ok());
    assert!(parse_domain(".").is_err());
}

#[test]
fn aaaa_for_a_name_with_ipv6_addresses() {
    let t = table();
    for name in ["DB.SVC.blue.overlay.", "db.svc.blue.overlay."] {
        let d = ask(&t, BLUE_GW, name, RecordType::AAAA);
        assert_eq!(addresses6(&d), vec![ip6("fd00:1::5")], "{name}");
        assert_eq!(rcode(&d), (ResponseCode::NoError, 1, 0), "{name}");
        if let Decision::Local { answers, .. } = &d {
            assert_eq!(answers[0].name.to_ascii(), name);
            assert_eq!(answers[0].ttl, 1);
        }
    }
    // A bare name.
    assert_eq!(
        addresses6(&ask(&t, BLUE_GW, "v6only.", RecordType::AAAA)),
        vec![ip6("fd00:1::7")]
    );
    // A asks for IPv4 only.
    let d = ask(&t, BLUE_GW, "db.svc.blue.overlay.", RecordType::A);
    assert_eq!(rcode(&d), (ResponseCode::NoError, 1, 0));
    assert_eq!(addresses(&d), vec![ip("10.1.0.5")]);
}

#[test]
fn a_name_without_ipv6_answers_aaaa_nodata_and_one_without_ipv4_answers_a_nodata() {
    let t = table();
    // web has no IPv6 address in dual-stack blue; cache none in red.
    for (gw, name) in [(BLUE_GW, "web."), (BLUE_GW, "web.blue.overlay.")] {
        let d = ask(&t, gw, name, RecordType::AAAA);
        assert_eq!(rcode(&d), (ResponseCode::NoError, 0, 1), "{name}");
    }
    assert_eq!(
        rcode(&ask_red(&t, "cache.", RecordType::AAAA)),
        (ResponseCode::NoError, 0, 1)
    );
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "v6only.blue.overlay.", RecordType::A)),
        (ResponseCode::NoError, 0, 1)
    );
    // An IPv4-only network: AAAA of every name is NODATA, as before dual stack.
    let (v4, _) = Table::build(
        vec![zone("blue", "10.1.0.0/16", BLUE_GW, &[("web", &[BLUE_WEB])])],
        TTLS,
        1,
    );
    assert_eq!(
        rcode(&ask(&v4, BLUE_GW, "web.", RecordType::AAAA)),
        (ResponseCode::NoError, 0, 1)
    );
    // Unknown names stay NXDOMAIN for AAAA; other networks' names too.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "nope.blue.overlay.", RecordType::AAAA)),
        (ResponseCode::NXDomain, 0, 1)
    );
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, "db.red.overlay.", RecordType::AAAA)),
        (ResponseCode::NXDomain, 0, 0)
    );
    assert_eq!(
        addresses6(&ask_red(&t, "db.", RecordType::AAAA)),
        vec![ip6("fd00:2::9")]
    );
}

#[test]
fn any_answers_both_families() {
    let t = table();
    let d = ask(&t, BLUE_GW, "db.svc.blue.overlay.", RecordType::ANY);
    assert_eq!(rcode(&d), (ResponseCode::NoError, 2, 0));
    assert_eq!(addresses(&d), vec![ip("10.1.0.5")]);
    assert_eq!(addresses6(&d), vec![ip6("fd00:1::5")]);
    let d = ask(&t, BLUE_GW, "web.", RecordType::ANY);
    assert_eq!(rcode(&d), (ResponseCode::NoError, 1, 0));
    let d = ask(&t, BLUE_GW, "v6only.", RecordType::ANY);
    assert_eq!(addresses6(&d), vec![ip6("fd00:1::7")]);
    assert_eq!(rcode(&d), (ResponseCode::NoError, 1, 0));
}

#[test]
fn aaaa_of_a_shared_name_rotates_and_is_capped() {
    let t = table();
    let first = addresses6(&ask(&t, BLUE_GW, "db.", RecordType::AAAA));
    let second = addresses6(&ask(&t, BLUE_GW, "db.", RecordType::AAAA));
    assert_eq!((first.len(), second.len()), (2, 2));
    assert_ne!(first, second, "the order rotates");
    let mut a = first.clone();
    a.sort();
    assert_eq!(a, vec![ip6("fd00:1::5"), ip6("fd00:1:0:1::5")]);

    let many4: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(10, 1, 3, i)).collect();
    let many6: Vec<Ipv6Addr> = (0..100u16)
        .map(|i| Ipv6Addr::new(0xfd00, 1, 0, 3, 0, 0, 0, i))
        .collect();
    let (t, problems) = Table::build(
        vec![dual(
            zone("blue", "10.1.0.0/16", BLUE_GW, &[("big", &many4)]),
            "fd00:1::/48",
            &[("big", &many6)],
        )],
        TTLS,
        1,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let got = addresses6(&ask(&t, BLUE_GW, "big.", RecordType::AAAA));
        assert_eq!(got.len(), MAX_ANSWERS);
        seen.extend(got);
    }
    assert!(
        seen.len() > MAX_ANSWERS,
        "rotation reaches beyond the first {MAX_ANSWERS}"
    );
    // ANY: at most MAX_ANSWERS of each family.
    let d = ask(&t, BLUE_GW, "big.", RecordType::ANY);
    assert_eq!(
        (addresses(&d).len(), addresses6(&d).len()),
        (MAX_ANSWERS, MAX_ANSWERS)
    );
}

#[test]
fn ptr_for_the_networks_ipv6_addresses() {
    let t = table();
    // fd00:1::5 carries db and db.svc.
    let d = ask(&t, BLUE_GW, &arpa6(ip6("fd00:1::5")), RecordType::PTR);
    let mut names: Vec<String> = match &d {
        Decision::Local { rcode, answers, .. } => {
            assert_eq!(*rcode, ResponseCode::NoError);
            answers
                .iter()
                .map(|r| match &r.data {
                    RData::PTR(p) => p.0.to_ascii(),
                    other => panic!("{other:?}"),
                })
                .collect()
        }
        other => panic!("{other:?}"),
    };
    names.sort();
    assert_eq!(names, ["db.blue.overlay.", "db.svc.blue.overlay."]);
    // Upper-case nibbles, as some clients write them.
    let upper = arpa6(ip6("fd00:1::7")).to_ascii_uppercase();
    match ask(&t, BLUE_GW, &upper, RecordType::PTR) {
        Decision::Local { answers, .. } => {
            assert_eq!(
                answers[0].data,
                RData::PTR(PTR(Name::from_str("v6only.blue.overlay.").unwrap()))
            );
        }
        other => panic!("{other:?}"),
    }
    // An address of the network without a name: NXDOMAIN with the IPv6 reverse zone's SOA.
    let d = ask(&t, BLUE_GW, &arpa6(ip6("fd00:1::77")), RecordType::PTR);
    assert_eq!(rcode(&d), (ResponseCode::NXDomain, 0, 1));
    if let Decision::Local { authorities, .. } = &d {
        assert_eq!(
            authorities[0].name.to_ascii(),
            "0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa."
        );
    }
    // A named address asked for another type.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, &arpa6(ip6("fd00:1::7")), RecordType::A)),
        (ResponseCode::NoError, 0, 1)
    );
    // red's address from blue: NXDOMAIN, nothing learnt; outside every network, or not a
    // whole address: forwarded.
    assert_eq!(
        rcode(&ask(&t, BLUE_GW, &arpa6(ip6("fd00:2::9")), RecordType::PTR)),
        (ResponseCode::NXDomain, 0, 0)
    );
    assert_eq!(
        ask(&t, BLUE_GW, &arpa6(ip6("2001:db8::1")), RecordType::PTR),
        Decision::Forward
    );
    assert_eq!(
        ask(&t, BLUE_GW, "0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.", RecordType::PTR),
        Decision::Forward
    );
    // An IPv4-only network's zone does not claim IPv6 addresses.
    let (v4, _) = Table::build(
        vec![zone("blue", "10.1.0.0/16", BLUE_GW, &[("web", &[BLUE_WEB])])],
        TTLS,
        1,
    );
    assert_eq!(
        ask(&v4, BLUE_GW, &arpa6(ip6("fd00:1::5")), RecordType::PTR),
        Decision::Forward
    );
}

#[test]
fn ipv6_addresses_outside_the_ipv6_cidr_or_without_one_are_reported() {
    let (t, problems) = Table::build(
        vec![
            dual(
                zone("blue", "10.1.0.0/16", BLUE_GW, &[("web", &[BLUE_WEB])]),
                "fd00:1::/48",
                &[
                    ("web", &[ip6("fd00:9::2"), ip6("fd00:1::2"), ip6("fd00:1::2")]),
                    ("with space", &[ip6("fd00:1::3")]),
                ],
            ),
            Zone {
                names6: [("db".to_string(), vec![ip6("fd00:2::9")])].into(),
                ..zone("red", "10.2.0.0/16", RED_GW, &[("db", &[ip("10.2.0.9")])])
            },
        ],
        TTLS,
        1,
    );
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    let count = |needle: &str| text.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("network blue: name web: address fd00:9::2 skipped: outside fd00:1::/48"),
        1,
        "{text:?}"
    );
    assert_eq!(count("network blue: name \"with space\""), 1, "{text:?}");
    assert_eq!(
        count("network red: name db: address fd00:2::9 skipped: the network has no IPv6 CIDR"),
        1,
        "{text:?}"
    );
    // What is good is kept, once.
    assert_eq!(
        addresses6(&ask(&t, BLUE_GW, "web.", RecordType::AAAA)),
        vec![ip6("fd00:1::2")]
    );
    assert_eq!(
        addresses(&ask_red(&t, "db.", RecordType::A)),
        vec![ip("10.2.0.9")]
    );
    assert_eq!(
        rcode(&ask_red(&t, "db.", RecordType::AAAA)),
        (ResponseCode::NoError, 0, 1)
    );
}
