//! The wire types of Docker's legacy plugin API (`Plugin.Activate`, `NetworkDriver.*`,
//! `IpamDriver.*`), as dockerd (moby's libnetwork remote driver and IPAM client) sends and
//! reads them: JSON bodies with Go's field names. Docker decodes answers case-insensitively and
//! ignores unknown fields; requests are read strictly by name, unknown fields ignored.
//!
//! Errors: a network driver answers `{"Err": "..."}`, an IPAM driver `{"Error": "..."}`
//! (docker reads a different field for each), both shown to the user as `remote: <message>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activate {
    pub implements: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPool {
    #[serde(default)]
    pub address_space: String,
    /// `--subnet`, "" without.
    #[serde(default)]
    pub pool: String,
    /// `--ip-range`.
    #[serde(default)]
    pub sub_pool: String,
    /// `--ipam-opt`.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "V6")]
    pub v6: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PoolAnswer {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ReleasePool {
    #[serde(default, rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddress {
    #[serde(default, rename = "PoolID")]
    pub pool_id: String,
    /// A specific address (`docker run --ip`, `--gateway`, `--aux-address`), "" for any.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressAnswer {
    /// With its prefix length, e.g. "10.1.0.5/24".
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddress {
    #[serde(default, rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct IpamData {
    #[serde(default, rename = "AddressSpace")]
    pub address_space: String,
    #[serde(default, rename = "Pool")]
    pub pool: String,
    #[serde(default, rename = "Gateway")]
    pub gateway: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct CreateNetwork {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` holds `--opt`s; also `com.docker.network.enable_ipv6`,
    /// `com.docker.network.internal`.
    #[serde(default, rename = "Options")]
    pub options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize, Debug, Default)]
pub struct NetworkRef {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct EndpointInterface {
    #[serde(default, rename = "Address")]
    pub address: String,
    #[serde(default, rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(default, rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct CreateEndpoint {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, rename = "Interface")]
    pub interface: Option<EndpointInterface>,
    #[serde(default, rename = "Options")]
    pub options: BTreeMap<String, Value>,
}

/// What CreateEndpoint answers: only fields docker left empty (here the MAC), never an echo.
#[derive(Serialize)]
pub struct CreatedEndpoint {
    #[serde(rename = "Interface")]
    pub interface: Option<CreatedInterface>,
}

#[derive(Serialize)]
pub struct CreatedInterface {
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Deserialize, Debug, Default)]
pub struct EndpointRef {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, rename = "Options")]
    pub options: BTreeMap<String, Value>,
}

#[derive(Deserialize, Debug, Default)]
pub struct Join {
    #[serde(default, rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(default, rename = "Options")]
    pub options: BTreeMap<String, Value>,
}

#[derive(Serialize)]
pub struct Joined {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway")]
    pub gateway: String,
}

#[derive(Serialize)]
pub struct InterfaceName {
    /// The workload end, in dockerd's namespace until docker moves it into the sandbox.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// Docker names it `<prefix><n>` inside: eth0 for the first network.
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: &'static str,
}

#[derive(Serialize)]
pub struct OperInfo {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

/// One of docker's `types.PortBinding`s (`com.docker.network.portmap`): Proto is the IP
/// protocol number.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct PortBinding {
    #[serde(default, rename = "Proto")]
    pub proto: u8,
    #[serde(default, rename = "Port")]
    pub port: u32,
    #[serde(default, rename = "HostIP")]
    pub host_ip: String,
    #[serde(default, rename = "HostPort")]
    pub host_port: u32,
    #[serde(default, rename = "HostPortEnd")]
    pub host_port_end: u32,
}

/// The key docker passes port bindings under.
pub const PORTMAP: &str = "com.docker.network.portmap";
/// The key of `--opt`s in CreateNetwork's options.
pub const GENERIC: &str = "com.docker.network.generic";
/// What an address request for a network's gateway carries in its options.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
