//! Request fields from the wire into typed values. Syntax only: whether a value makes sense
//! against the cluster state is the state machine's call.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use overlay_proto::v1 as pb;
use tonic::Status;

use super::invalid;
use crate::model::{MacvlanMode, MacvlanSpec, Mode, NetworkSpec};

pub fn cidr(what: &str, text: &str) -> Result<Ipv4Network, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(format!("{what} is required (e.g. 10.1.0.0/16)")));
    }
    if text.parse::<ipnetwork::Ipv6Network>().is_ok() {
        return Err(ipv6_unsupported(what, text));
    }
    if !text.contains('/') {
        return Err(invalid(format!(
            "malformed CIDR {text:?} for {what}: missing /prefix-length"
        )));
    }
    text.parse::<Ipv4Network>()
        .map_err(|e| invalid(format!("malformed CIDR {text:?} for {what}: {e}")))
}

pub fn ipv4(what: &str, text: &str) -> Result<Ipv4Addr, Status> {
    let text = text.trim();
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(ipv6_unsupported(what, text));
    }
    text.parse::<Ipv4Addr>()
        .map_err(|_| invalid(format!("malformed IPv4 address {text:?} for {what}")))
}

/// An address of either family (a host's underlay). A scoped IPv6 address (`fe80::1%eth0`)
/// is named as such: the zone means something on one host only, never to its peers.
pub fn ip(what: &str, text: &str) -> Result<IpAddr, Status> {
    let text = text.trim();
    if let Some((addr, _zone)) = text.split_once('%')
        && addr.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err(invalid(format!(
            "malformed IP address {text:?} for {what}: a zone (%...) has no meaning to other hosts; give an address without one"
        )));
    }
    text.parse::<IpAddr>()
        .map_err(|_| invalid(format!("malformed IP address {text:?} for {what}")))
}

/// An IPv6 address or network where only IPv4 works today: say so, rather than calling it
/// malformed IPv4.
fn ipv6_unsupported(what: &str, text: &str) -> Status {
    invalid(format!(
        "IPv6 is not supported yet: {text:?} for {what} is IPv6; give an IPv4 address or CIDR"
    ))
}

/// The largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u64 = 4_194_304;

/// What the controller can tell about an endpoint's namespace reference before any agent looks:
/// a pid is a real workload's (never 0, never init), and a path is not one of /proc's
/// namespace links, which agents never follow. The agent checks the namespace itself.
pub fn netns_reference(text: &str) -> Result<(), Status> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let pid = text.parse::<u64>().unwrap_or(u64::MAX);
        return match pid {
            0 => Err(invalid("namespace pid 0 is not a process")),
            1 => Err(invalid(
                "namespace pid 1 is the host's init: its namespace is the host's own; give the workload's pid",
            )),
            p if p > PID_MAX_LIMIT => Err(invalid(format!(
                "namespace pid {text} is beyond the largest pid Linux hands out ({PID_MAX_LIMIT})"
            ))),
            p if text.starts_with('0') => Err(invalid(format!(
                "namespace pid {text:?} has a leading zero; write it as {p}"
            ))),
            _ => Ok(()),
        };
    }
    if text == "/proc" || text.starts_with("/proc/") {
        let pid = text
            .strip_prefix("/proc/")
            .and_then(|rest| rest.strip_suffix("/ns/net"))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let hint = match pid {
            Some(p) => format!("give the pid instead (--netns {p})"),
            None => "give the workload's pid instead".to_string(),
        };
        return Err(invalid(format!(
            "namespace {text} is under /proc, whose namespace files are links the agent does not follow; {hint}"
        )));
    }
    Ok(())
}

/// An endpoint as an agent reports it; the state machine checks it against the state.
pub fn host_endpoint(e: &pb::HostEndpoint) -> Result<crate::model::HostEndpoint, Status> {
    use crate::model::EndpointStatus;
    let clip = |m: &str| m.chars().take(1024).collect::<String>();
    let status = match pb::EndpointReport::try_from(e.report) {
        Ok(pb::EndpointReport::Ready) => EndpointStatus::Ready,
        Ok(pb::EndpointReport::Failed) => EndpointStatus::Failed(clip(&e.message)),
        Ok(pb::EndpointReport::Gone) => EndpointStatus::Gone(clip(&e.message)),
        Ok(pb::EndpointReport::Unspecified) | Err(_) => EndpointStatus::Pending,
    };
    Ok(crate::model::HostEndpoint {
        key: e.key.clone(),
        host_id: e.host_id,
        network: e.network.clone(),
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        ip: ipv4("endpoint address", &e.ip)?,
        default_route: e.default_route,
        owner: e.owner.clone(),
        names: e.names.clone(),
        status,
        ports: overlay_proto::ports::from_wire(&e.ports)
            .map_err(|why| invalid(format!("endpoint {:?}: published ports: {why}", e.key)))?,
    })
}

pub fn mode(raw: i32) -> Result<Mode, Status> {
    Mode::from_wire(raw).map_err(|_| {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        invalid(format!("network mode is required: {}", names.join(", ")))
    })
}

pub fn network_spec(req: &pb::CreateNetworkRequest) -> Result<NetworkSpec, Status> {
    let mode = mode(req.mode)?;
    if req
        .subnet
        .trim()
        .split('/')
        .next()
        .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return Err(invalid(format!(
            "IPv6-only networks are not supported yet: subnet {:?} is IPv6; give an IPv4 subnet, with the IPv6 one beside it (subnet6)",
            req.subnet.trim()
        )));
    }
    let cidr = cidr("subnet", &req.subnet)?;
    let host_prefix = match req.host_prefix {
        Some(p) if p > 32 => return Err(invalid(format!("invalid host prefix /{p}: must be at most /32"))),
        p => p.map(|p| p as u8),
    };
    let macvlan = match &req.macvlan {
        Some(m)
            if !m.parent.is_empty()
                || !m.gateway.is_empty()
                || !m.ip_range.is_empty()
                || !m.mode.is_empty() =>
        {
            if m.parent.is_empty() {
                return Err(invalid(
                    "macvlan networks need --parent (the host NIC, e.g. eth0 or eth0.50)",
                ));
            }
            if m.gateway.is_empty() {
                return Err(invalid("macvlan networks need --gateway (the LAN router)"));
            }
            Some(MacvlanSpec {
                parent: m.parent.clone(),
                gateway: ipv4("gateway", &m.gateway)?,
                ip_range: if m.ip_range.is_empty() {
                    cidr
                } else {
                    self::cidr("ip range", &m.ip_range)?
                },
                mode: m.mode.parse::<MacvlanMode>().map_err(invalid)?,
            })
        }
        _ => None,
    };
    Ok(NetworkSpec {
        name: req.name.clone(),
        mode,
        cidr,
        host_prefix,
        vni: req.vni,
        mtu: req.mtu,
        nat_egress: req.nat_egress,
        direct_routing: req.direct_routing,
        macvlan,
        cidr6: match req.subnet6.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                invalid(format!(
                    "invalid IPv6 subnet {text:?}: expected a CIDR such as fd00:10::/48"
                ))
            })?),
        },
        host_prefix6: match req.host_prefix6 {
            Some(p) if p > 128 => {
                return Err(invalid(format!(
                    "invalid IPv6 host prefix /{p}: must be at most /128"
                )));
            }
            p => p.map(|p| p as u8),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_cidrs_are_named() {
        for bad in [
            "",
            "10.1.0.0",
            "10.1.0/16",
            "10.1.0.0/33",
            "300.1.0.0/16",
            "fe80::/64",
            "10.1.0.0/x",
        ] {
            let err = cidr("subnet", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.message().contains("subnet"), "{}", err.message());
        }
        assert_eq!(cidr("subnet", "10.1.0.0/16").unwrap().prefix(), 16);
    }

    #[test]
    fn ipv6_is_named_as_not_supported_yet() {
        for v6 in ["fd00::/64", "2001:db8::/48", " fe80::/10 "] {
            let err = cidr("subnet", v6).unwrap_err();
            assert!(
                err.message().starts_with("IPv6 is not supported yet"),
                "{}",
                err.message()
            );
            assert!(err.message().contains("subnet"), "{}", err.message());
        }
        let err = ipv4("gateway", "fd00::1").unwrap_err();
        assert!(
            err.message().starts_with("IPv6 is not supported yet"),
            "{}",
            err.message()
        );
        // Garbage with a colon is still just malformed.
        let err = cidr("subnet", "10.1:0.0/16").unwrap_err();
        assert!(err.message().starts_with("malformed CIDR"), "{}", err.message());
    }

    #[test]
    fn addresses_of_either_family_parse() {
        for (text, want) in [
            ("192.0.2.11", "192.0.2.11"),
            (" 2001:db8::11 ", "2001:db8::11"),
            ("2001:0db8:0:0::11", "2001:db8::11"),
            ("::ffff:192.0.2.11", "::ffff:192.0.2.11"),
        ] {
            assert_eq!(
                ip("underlay IP", text).map(|a| a.to_string()).ok().as_deref(),
                Some(want),
                "{text:?}"
            );
        }
        for (bad, says) in [
            ("", "malformed IP address \"\" for underlay IP"),
            ("192.0.2", "malformed IP address"),
            ("2001:db8::1::2", "malformed IP address"),
            ("[2001:db8::1]", "malformed IP address"),
            ("fe80::1%eth0", "a zone (%...) has no meaning to other hosts"),
        ] {
            let err = ip("underlay IP", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.message().contains(says), "{bad:?}: {}", err.message());
        }
    }

    #[test]
    fn namespace_references_refused_up_front() {
        for (bad, says) in [
            ("0", "not a process"),
            ("1", "host's init"),
            ("007", "write it as 7"),
            ("99999999999999999999", "beyond the largest pid"),
            ("4194305", "beyond the largest pid"),
            ("/proc/1/ns/net", "--netns 1"),
            ("/proc/self/ns/net", "workload's pid"),
            ("/proc/1234/task/1234/ns/net", "workload's pid"),
            ("/proc", "under /proc"),
        ] {
            let err = netns_reference(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.message().contains(says), "{bad:?}: {}", err.message());
        }
        for ok in [
            "1234",
            "2",
            "w1",
            "/run/netns/w1",
            "/var/run/docker/netns/abc",
            "/procfs/x",
        ] {
            assert!(netns_reference(ok).is_ok(), "{ok:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Requests come from anyone who reaches the port: whatever they hold, validation answers
    //! with a status, never a panic, and whatever it accepts is a spec the state machine can
    //! apply (or refuse) without panicking either.

    use overlay_lab::fuzz::run_for;
    use proptest::prelude::*;

    use super::*;
    use crate::state::{ClusterState, Command};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,24}",
            "[0-9./]{0,20}",
            "(25[0-9]|1?[0-9]?[0-9])\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}",
        ]
    }

    #[test]
    fn create_network_requests_never_panic() {
        let modes = prop_oneof![Just("bridge".to_string()), Just("passthru".to_string()), ".{0,9}"];
        let macvlan = (text(), text(), text(), modes).prop_map(|(parent, gateway, ip_range, mode)| {
            pb::MacvlanOptions {
                parent,
                gateway,
                ip_range,
                mode,
            }
        });
        let request = (
            ".{0,70}",
            -1i32..5,
            text(),
            proptest::option::of(0u32..40),
            proptest::option::of(any::<u32>()),
            proptest::option::of(0u32..70_000),
            any::<bool>(),
            proptest::option::of(macvlan),
            any::<bool>(),
        )
            .prop_map(
                |(name, mode, subnet, host_prefix, vni, mtu, nat_egress, macvlan, direct_routing)| {
                    pb::CreateNetworkRequest {
                        subnet6: String::new(),
                        host_prefix6: None,
                        name,
                        mode,
                        subnet,
                        host_prefix,
                        vni,
                        mtu,
                        nat_egress,
                        macvlan,
                        direct_routing,
                    }
                },
            );
        run_for("CreateNetwork validation", request, |req| {
            let _ = cidr("subnet", &req.subnet);
            let _ = ipv4("gateway", &req.subnet);
            if let Ok(spec) = network_spec(&req) {
                let mut state = ClusterState::default();
                let _ = state.apply(Command::CreateNetwork { spec, now_ms: 1 });
            }
            Ok(())
        });
    }
}
