//! The network configuration on stdin (one plugin's part of a conflist, with `name` and
//! `cniVersion` filled in by the runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{CniError, code};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    /// The conflist's name; the overlay network unless `network` says otherwise.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The overlay network to join.
    #[serde(default)]
    pub network: Option<String>,
    /// Where the agent's local API listens.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// GC (spec 1.1.0): the attachments that must stay.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// CHECK and DEL: the result of the ADD.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Capability `aliases`: network name -> names (podman passes its container name here).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Capability `ips`: requested addresses with or without prefix.
    #[serde(default)]
    pub ips: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u32,
    pub container_port: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Largest configuration accepted on stdin.
pub const MAX_CONF: usize = 1 << 20;

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        if bytes.len() > MAX_CONF {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                format!(
                    "network configuration of {} bytes (at most {MAX_CONF})",
                    bytes.len()
                ),
            ));
        }
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("network configuration is not valid JSON: {e}"),
            )
        })?;
        if conf.cni_version.is_empty() {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "network configuration has no cniVersion",
            ));
        }
        if !crate::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI version {:?} is not supported (supported: {})",
                    conf.cni_version,
                    crate::SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.network_name().is_empty() {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "network configuration names no network (set \"name\" or \"network\")",
            ));
        }
        for p in &conf.runtime_config.port_mappings {
            let bad_port = |n: u32| n == 0 || n > 65535;
            if bad_port(p.host_port) || bad_port(p.container_port) {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!(
                        "port mapping {}:{} is out of range 1-65535",
                        p.host_port, p.container_port
                    ),
                ));
            }
            if !matches!(p.protocol.as_str(), "" | "tcp" | "udp") {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!("port mapping protocol {:?} (expected tcp or udp)", p.protocol),
                ));
            }
        }
        Ok(conf)
    }

    /// The overlay network this configuration joins.
    pub fn network_name(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    pub fn socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(overlay_proto::local_socket::DEFAULT_SOCKET))
    }
}
