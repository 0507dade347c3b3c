//! The commands, each one request to the agent's local API.

use std::time::Duration;

use overlay_proto::local::{self as api, local_endpoints_client::LocalEndpointsClient};
use tonic::transport::Channel;

use crate::conf::NetConf;
use crate::env::{Command, Invocation};
use crate::error::{CniError, code};
use crate::result;

/// How long to wait for the agent's socket to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take: an ADD wires a namespace (milliseconds), but on a loaded
/// host with many containers starting at once it may queue.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)` prints nothing.
pub async fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<String>, CniError> {
    if inv.command == Command::Version {
        return Ok(Some(result::version()));
    }
    let conf = NetConf::parse(stdin)?;
    let network = conf.network_name().to_string();
    let mut client = match connect(&conf).await {
        // STATUS answers "not available" rather than "try again".
        Err(e) if inv.command == Command::Status => {
            return Err(CniError::new(code::NOT_AVAILABLE, e.msg));
        }
        other => other?,
    };
    let call = |s: tonic::Status| CniError::from_status(&s);
    match inv.command {
        Command::Add => {
            let req = add_request(inv, &conf)?;
            let att = client
                .attach(req)
                .await
                .map_err(call)?
                .into_inner()
                .attachment
                .ok_or_else(|| CniError::new(code::AGENT_ERROR, "the agent answered without an endpoint"))?;
            Ok(Some(result::add(&conf.cni_version, &att).to_string()))
        }
        Command::Del => {
            client
                .detach(api::DetachRequest {
                    key: inv.key(),
                    network,
                })
                .await
                .map_err(call)?;
            Ok(None)
        }
        Command::Check => {
            let att = client
                .check(api::CheckRequest {
                    key: inv.key(),
                    network,
                })
                .await
                .map_err(call)?
                .into_inner()
                .attachment
                .ok_or_else(|| CniError::new(code::AGENT_ERROR, "the agent answered without an endpoint"))?;
            if let Some(prev) = &conf.prev_result {
                result::check_against(prev, &att)?;
            }
            Ok(None)
        }
        Command::Status => {
            client
                .status(api::StatusRequest { network })
                .await
                .map_err(|s| CniError::new(code::NOT_AVAILABLE, s.message().to_string()))?;
            Ok(None)
        }
        Command::Gc => {
            let keep = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| format!("{}/{}", a.container_id, a.ifname))
                .collect();
            client
                .gc(api::GcRequest {
                    network,
                    owner: crate::OWNER.to_string(),
                    keep,
                })
                .await
                .map_err(call)?;
            Ok(None)
        }
        Command::Version => Ok(Some(result::version())),
    }
}

async fn connect(conf: &NetConf) -> Result<LocalEndpointsClient<Channel>, CniError> {
    let client = overlay_proto::local_socket::connect(&conf.socket(), CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .await
        .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, e.to_string()))?;
    Ok(client
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(4 << 20))
}

/// The attach request: key from the container and interface, the requested address from
/// `CNI_ARGS IP=` (what podman sends for `--ip`) or the `ips` capability, names from the
/// `aliases` capability and `K8S_POD_NAME`, ports from `portMappings`.
fn add_request(inv: &Invocation, conf: &NetConf) -> Result<api::AttachRequest, CniError> {
    let mut wanted: Vec<String> = inv.args.get("IP").into_iter().cloned().collect();
    wanted.extend(conf.runtime_config.ips.iter().cloned());
    let wanted: Vec<String> = wanted
        .iter()
        .map(|ip| ip.split('/').next().unwrap_or_default().trim().to_string())
        .collect();
    // A dual-stack endpoint's IPv6 address is the twin of its IPv4 one, never chosen on its
    // own: a request for one is refused rather than silently not honoured.
    if let Some(v6) = wanted.iter().find(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()) {
        return Err(CniError::new(
            code::ADDRESS_REFUSED,
            format!(
                "IPv6 address {v6} requested: overlay gives a dual-stack endpoint the IPv6 twin of its IPv4 address; request an IPv4 address instead"
            ),
        ));
    }
    let wanted: Vec<String> = wanted
        .into_iter()
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    let ip = match wanted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        many if many.iter().all(|ip| *ip == many[0]) => many[0].clone(),
        _ => {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("more than one IPv4 address requested: {}", wanted.join(", ")),
            ));
        }
    };
    let mut names: Vec<String> = conf
        .runtime_config
        .aliases
        .get(conf.network_name())
        .cloned()
        .unwrap_or_default();
    if let Some(pod) = inv.args.get("K8S_POD_NAME") {
        names.push(pod.clone());
    }
    names.dedup();
    Ok(api::AttachRequest {
        key: inv.key(),
        network: conf.network_name().to_string(),
        netns: inv.netns.clone(),
        ifname: inv.ifname.clone(),
        ip,
        names,
        ports: conf
            .runtime_config
            .port_mappings
            .iter()
            .map(|p| api::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: if p.protocol.is_empty() {
                    "tcp".into()
                } else {
                    p.protocol.clone()
                },
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        default_route: false,
        owner: crate::OWNER.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &str, ips: &[&str]) -> Result<api::AttachRequest, CniError> {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
        ];
        let inv = Invocation::from_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni",
            "runtimeConfig": { "ips": ips },
        });
        add_request(&inv, &NetConf::parse(conf.to_string().as_bytes())?)
    }

    #[test]
    fn requested_addresses_ipv4_only() {
        assert_eq!(request("IP=10.1.0.7", &[]).unwrap().ip, "10.1.0.7");
        assert_eq!(request("", &["10.1.0.7/24"]).unwrap().ip, "10.1.0.7");
        for (args, ips) in [
            ("IP=fd00:10::7", &[][..]),
            ("", &["10.1.0.7/24", "fd00:10::7/64"][..]),
        ] {
            let err = request(args, ips).expect_err("an IPv6 request");
            assert_eq!(err.code, code::ADDRESS_REFUSED, "{err}");
            assert!(
                err.msg.contains("fd00:10::7") && err.msg.contains("IPv4"),
                "{err}"
            );
        }
    }
}
