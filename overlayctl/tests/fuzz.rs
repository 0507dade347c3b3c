//! Outside input decoded on the client side and in the shared wire crate: command lines
//! (CIDRs, MACs, names in flags), MAC and interface/namespace name validation, and Watch events
//! as an agent decodes and applies them. None may panic; what is accepted must be well formed.

use std::str::FromStr;

use clap::Parser;
use overlay_lab::fuzz::{mutations, run_for};
use overlay_proto::mac::MacAddr;
use overlay_proto::v1 as pb;
use overlay_proto::validate;
use overlayctl::cli::Cli;
use proptest::prelude::*;
use prost::Message;

#[test]
fn command_lines_never_panic_the_parser() {
    let words = prop_oneof![
        Just("network".to_string()),
        Just("create".to_string()),
        Just("endpoint".to_string()),
        Just("attach".to_string()),
        Just("cluster".to_string()),
        Just("add-member".to_string()),
        Just("--subnet".to_string()),
        Just("--mode".to_string()),
        Just("--mtu".to_string()),
        Just("--ip".to_string()),
        Just("--netns".to_string()),
        Just("-o".to_string()),
        "[0-9./:a-f-]{0,20}",
        ".{0,12}",
    ];
    run_for(
        "overlayctl command lines",
        prop::collection::vec(words, 0..8),
        |args| {
            let _ = Cli::try_parse_from(std::iter::once("overlayctl".to_string()).chain(args));
            Ok(())
        },
    );
}

#[test]
fn macs_are_validated_without_panics() {
    run_for("MAC addresses", "[0-9a-fA-F:.-]{0,24}|.{0,24}", |text| {
        if let Ok(mac) = MacAddr::from_str(&text) {
            // Whatever parses prints back to something that parses to the same address.
            prop_assert_eq!(MacAddr::from_str(&mac.to_string()), Ok(mac));
        }
        Ok(())
    });
}

#[test]
fn names_are_validated_without_panics() {
    run_for(
        "interface and namespace names",
        ".{0,40}|/?[a-z0-9./-]{0,20}",
        |name| {
            if validate::ifname(&name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= 15, "{:?}", name);
                prop_assert!(!name.contains('/') && name != "." && name != "..", "{:?}", name);
            }
            if validate::netns(&name).is_ok() {
                // A name stays a file under /run/netns; a path has no `..` component.
                let escapes = if name.starts_with('/') {
                    name.split('/').any(|part| part == "..")
                } else {
                    name.contains('/') || name == "." || name == ".."
                };
                prop_assert!(!escapes, "{:?} escapes /run/netns", name);
            }
            Ok(())
        },
    );
}

fn full_state() -> pb::HostDesiredState {
    pb::HostDesiredState {
        host_name: "h1".into(),
        revision: 7,
        networks: vec![pb::NetworkState {
            name: "blue".into(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            mtu: 1450,
            peers: vec![pb::Peer {
                host: "h2".into(),
                underlay_ip: "192.0.2.12".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn watch_events_never_panic_the_agent_side() {
    let full = pb::WatchEvent {
        revision: 7,
        event: Some(pb::watch_event::Event::Full(full_state())),
    };
    let delta = pb::WatchEvent {
        revision: 8,
        event: Some(pb::watch_event::Event::Delta(pb::DesiredDelta {
            base_revision: 7,
            remove_networks: vec!["blue".into()],
            ..Default::default()
        })),
    };
    let seeds = vec![full.encode_to_vec(), delta.encode_to_vec()];
    run_for("Watch events (mutated)", mutations(seeds, 8), |bytes| {
        if let Ok(event) = pb::WatchEvent::decode(bytes.as_slice()) {
            let mut state = full_state();
            let _ = overlay_proto::watch::apply(&mut state, event);
        }
        Ok(())
    });
}

/// Certificates are outside input twice: the controller reads every client's role and name
/// from its certificate, and `overlayctl certs show` reads any file it is given.
#[test]
fn certificates_are_decoded_without_panics() {
    use overlay_proto::tls::PeerIdentity;
    use overlayctl::certs;
    let ca = certs::new_ca(30).expect("CA");
    let mut real = Vec::new();
    for role in overlay_proto::tls::Role::ALL {
        let pair = certs::issue(&ca, role, "h1", &["192.0.2.10".to_string()], 30).expect("cert");
        let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes()).expect("pem");
        real.push(pem.contents);
    }
    run_for(
        "certificates, mutated real ones (peer identity)",
        mutations(real, 8),
        |der| {
            if let Ok(id) = PeerIdentity::from_der(&der) {
                // Whatever is accepted names someone.
                prop_assert!(!id.name.is_empty());
            }
            // The names that bind a certificate to a member or an underlay address.
            if let Ok((_, names)) = overlay_proto::tls::peer_of(&der) {
                prop_assert!(names.ips.len() + names.dns.len() <= der.len());
                let _ = names.contains_host("192.0.2.10");
            }
            Ok(())
        },
    );
    run_for(
        "certificates, random bytes (peer identity)",
        prop::collection::vec(any::<u8>(), 0..512),
        |der| {
            let _ = PeerIdentity::from_der(&der);
            Ok(())
        },
    );
}
