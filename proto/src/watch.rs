//! Applying Watch events to a host's desired state: the receiving half of the Watch protocol,
//! shared by the agent and by the controller's tests (which check that a full state plus every
//! delta equals the full state computed directly).

use crate::v1::{self as pb, watch_event};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("delta for revision {base} but the state is at revision {have}; a full state is needed")]
    Gap { base: u64, have: u64 },
    #[error("delta changes network {0:?} which this host does not have")]
    UnknownNetwork(String),
    #[error("empty watch event")]
    Empty,
}

/// Puts a host's desired state in canonical order: networks by name, peers by host, endpoints
/// by id.
pub fn canonicalize(state: &mut pb::HostDesiredState) {
    state.networks.sort_by(|a, b| a.name.cmp(&b.name));
    for n in &mut state.networks {
        n.peers.sort_by(|a, b| a.host.cmp(&b.host));
        n.endpoints.sort_by_key(|e| e.id);
        n.directory.sort_by_key(|r| r.endpoint_id);
    }
}

/// Applies `event` to `state` (which may be empty before the first full state).
pub fn apply(state: &mut pb::HostDesiredState, event: pb::WatchEvent) -> Result<(), ApplyError> {
    match event.event.ok_or(ApplyError::Empty)? {
        watch_event::Event::Full(full) => {
            *state = full;
        }
        // An order, not a change of desired state: the caller acts on it; the state stays.
        watch_event::Event::Probe(_) => return Ok(()),
        watch_event::Event::Delta(delta) => {
            if delta.base_revision != state.revision {
                return Err(ApplyError::Gap {
                    base: delta.base_revision,
                    have: state.revision,
                });
            }
            if !delta.underlay_ip.is_empty() {
                state.underlay_ip = delta.underlay_ip;
            }
            if !delta.vtep_mac.is_empty() {
                state.vtep_mac = delta.vtep_mac;
            }
            state
                .networks
                .retain(|n| !delta.remove_networks.contains(&n.name));
            for upsert in delta.upsert_networks {
                match state.networks.iter_mut().find(|n| n.name == upsert.name) {
                    Some(existing) => *existing = upsert,
                    None => state.networks.push(upsert),
                }
            }
            for changes in delta.peer_changes {
                let network = state
                    .networks
                    .iter_mut()
                    .find(|n| n.name == changes.network)
                    .ok_or_else(|| ApplyError::UnknownNetwork(changes.network.clone()))?;
                network.peers.retain(|p| !changes.remove.contains(&p.host));
                for peer in changes.upsert {
                    match network.peers.iter_mut().find(|p| p.host == peer.host) {
                        Some(existing) => *existing = peer,
                        None => network.peers.push(peer),
                    }
                }
            }
            for changes in delta.endpoint_changes {
                let network = state
                    .networks
                    .iter_mut()
                    .find(|n| n.name == changes.network)
                    .ok_or_else(|| ApplyError::UnknownNetwork(changes.network.clone()))?;
                network.endpoints.retain(|e| !changes.remove.contains(&e.id));
                for ep in changes.upsert {
                    match network.endpoints.iter_mut().find(|e| e.id == ep.id) {
                        Some(existing) => *existing = ep,
                        None => network.endpoints.push(ep),
                    }
                }
            }
            for changes in delta.directory_changes {
                let network = state
                    .networks
                    .iter_mut()
                    .find(|n| n.name == changes.network)
                    .ok_or_else(|| ApplyError::UnknownNetwork(changes.network.clone()))?;
                let gone: std::collections::BTreeSet<u64> = changes.remove.into_iter().collect();
                network.directory.retain(|r| !gone.contains(&r.endpoint_id));
                for record in changes.upsert {
                    match network
                        .directory
                        .iter_mut()
                        .find(|r| r.endpoint_id == record.endpoint_id)
                    {
                        Some(existing) => *existing = record,
                        None => network.directory.push(record),
                    }
                }
            }
        }
    }
    state.revision = event.revision;
    canonicalize(state);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(host: &str) -> pb::Peer {
        pb::Peer {
            host: host.into(),
            underlay_ip: "192.0.2.1".into(),
            vtep_mac: "02:00:00:00:00:01".into(),
            subnet: "10.1.1.0/24".into(),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_need_the_right_base() {
        let mut state = pb::HostDesiredState::default();
        let full = pb::HostDesiredState {
            revision: 3,
            host_name: "h1".into(),
            networks: vec![pb::NetworkState {
                name: "blue".into(),
                peers: vec![peer("h2")],
                ..Default::default()
            }],
            ..Default::default()
        };
        apply(
            &mut state,
            pb::WatchEvent {
                revision: 3,
                event: Some(watch_event::Event::Full(full)),
            },
        )
        .unwrap();
        let delta = |base: u64| pb::WatchEvent {
            revision: base + 1,
            event: Some(watch_event::Event::Delta(pb::DesiredDelta {
                base_revision: base,
                peer_changes: vec![pb::PeerChanges {
                    network: "blue".into(),
                    upsert: vec![peer("h3")],
                    remove: vec!["h2".into()],
                }],
                ..Default::default()
            })),
        };
        assert_eq!(
            apply(&mut state, delta(7)),
            Err(ApplyError::Gap { base: 7, have: 3 })
        );
        apply(&mut state, delta(3)).unwrap();
        assert_eq!(state.revision, 4);
        let hosts: Vec<_> = state.networks[0].peers.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(hosts, ["h3"]);
    }
}
