//! What each Docker call does (see the module docs of [`super`] and
//! [`crate::attachments::runtime`]). Every request is checked before anything changes; an
//! error is one line naming the cause, which Docker shows as `remote: <line>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ipnetwork::Ipv4Network;
use overlay_proto::ports::{Protocol, PublishedPort};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Reply;
use super::api;
use super::engine::Engine;
use crate::attachments::{AttachError, Attachments};

/// Who the book says holds Docker's endpoints.
pub const OWNER: &str = "docker";
/// The prefix of the pool ids handed to Docker: `overlay-net/<overlay network>`.
const POOL_PREFIX: &str = "overlay-net/";

pub type Pending<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

pub struct Plugin {
    attachments: Arc<Attachments>,
    /// Docker network id -> overlay network (also in the agent's store).
    networks: Mutex<BTreeMap<String, String>>,
    /// dockerd's own API, where containers' names are learnt (`None`: endpoints get none).
    engine: Option<Engine>,
}

fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))
}

/// An address as Docker writes it: "10.1.0.5" or "10.1.0.5/24".
fn ipv4(what: &str, text: &str) -> Result<Ipv4Addr, String> {
    text.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| format!("{what} {text:?} is not an IPv4 address"))
}

fn driver(result: Result<Value, String>) -> Reply {
    match result {
        Ok(v) => Reply::Ok(v),
        Err(msg) => {
            tracing::warn!(error = %msg, "docker network driver call refused");
            Reply::DriverError(msg)
        }
    }
}

fn ipam(result: Result<Value, String>) -> Reply {
    match result {
        Ok(v) => Reply::Ok(v),
        Err(msg) => {
            tracing::warn!(error = %msg, "docker IPAM call refused");
            Reply::IpamError(msg)
        }
    }
}

fn text(e: AttachError) -> String {
    e.message
}

/// The overlay network a pool id names.
fn pool_network(pool_id: &str) -> Result<&str, String> {
    pool_id
        .strip_prefix(POOL_PREFIX)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("pool {pool_id:?} is not one overlay-net handed out"))
}

impl Plugin {
    pub fn new(attachments: Arc<Attachments>, engine: Option<Engine>) -> Self {
        let networks = attachments.docker_networks().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the docker networks from the store");
            Vec::new()
        });
        Self {
            attachments,
            engine,
            networks: Mutex::new(networks.into_iter().collect()),
        }
    }

    fn network_of(&self, docker_id: &str) -> Result<String, String> {
        self.networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(docker_id)
            .cloned()
            .ok_or_else(|| {
                format!("docker network {docker_id:?} is unknown to overlay-net (created while the agent's store was lost? remove and create it again)")
            })
    }

    pub fn activate(&self, _: &[u8]) -> Reply {
        Reply::Ok(json!(api::Activate {
            implements: vec!["NetworkDriver", "IpamDriver"],
        }))
    }

    pub fn nothing(&self, _: &[u8]) -> Reply {
        Reply::Ok(json!({}))
    }

    pub fn capabilities(&self, _: &[u8]) -> Reply {
        // Local: each host's dockerd keeps its own network object (no swarm, no external
        // store); global connectivity: its containers reach those of every other host.
        Reply::Ok(json!(api::Capabilities {
            scope: "local",
            connectivity_scope: "global",
        }))
    }

    pub fn ipam_capabilities(&self, _: &[u8]) -> Reply {
        Reply::Ok(json!(api::IpamCapabilities {
            requires_mac_address: false,
            requires_request_replay: false,
        }))
    }

    pub fn address_spaces(&self, _: &[u8]) -> Reply {
        Reply::Ok(json!(api::AddressSpaces {
            local_default_address_space: "overlay",
            global_default_address_space: "overlay",
        }))
    }

    /// The pool of a Docker network: this host's lease of the overlay network named by
    /// `--ipam-opt network=NAME` or holding `--subnet`.
    pub fn request_pool(&self, body: &[u8]) -> Reply {
        ipam((|| {
            let req: api::RequestPool = parse(body)?;
            if req.v6 {
                return Err(
                    "IPv6 is not supported by overlay networks yet: create the docker network without --ipv6"
                        .into(),
                );
            }
            if !req.sub_pool.is_empty() {
                return Err(format!(
                    "--ip-range {} is not supported: containers get addresses of this host's lease of the overlay network",
                    req.sub_pool
                ));
            }
            let named = req.options.as_ref().and_then(|o| o.get("network")).cloned();
            let by_subnet = match req.pool.as_str() {
                "" => None,
                text => {
                    let subnet: Ipv4Network = text
                        .parse()
                        .map_err(|_| format!("--subnet {text:?} is not an IPv4 CIDR"))?;
                    Some(self.attachments.network_holding(subnet).ok_or_else(|| {
                        format!("--subnet {text} is not inside any overlay network of this host (overlayctl network ls)")
                    })?)
                }
            };
            let network = match (named, by_subnet) {
                (Some(n), Some(s)) if n != s => {
                    return Err(format!(
                        "--subnet {} belongs to overlay network {s:?}, not {n:?}",
                        req.pool
                    ));
                }
                (Some(n), _) => n,
                (None, Some(s)) => s,
                (None, None) => {
                    return Err(
                        "say which overlay network: --subnet <its CIDR> (what docker run --ip needs) or --ipam-opt network=NAME (Docker does not tell IPAM plugins a network's name)"
                            .into(),
                    );
                }
            };
            let n = self.attachments.leased_network(&network).map_err(text)?;
            Ok(json!(api::PoolAnswer {
                pool_id: format!("{POOL_PREFIX}{network}"),
                pool: n.lease.subnet.to_string(),
                data: BTreeMap::from([(
                    api::GATEWAY_REQUEST.to_string(),
                    format!("{}/{}", n.lease.gateway, n.lease.subnet.prefix()),
                )]),
            }))
        })())
    }

    /// An address for a container (before its endpoint exists), or the gateway's.
    pub fn request_address(&self, body: &[u8]) -> Reply {
        ipam((|| {
            let req: api::RequestAddress = parse(body)?;
            let network = pool_network(&req.pool_id)?;
            let n = self.attachments.leased_network(network).map_err(text)?;
            let prefix = n.lease.subnet.prefix();
            let wanted = match req.address.as_str() {
                "" => None,
                a => Some(ipv4("address", a)?),
            };
            let gateway_asked = req
                .options
                .as_ref()
                .and_then(|o| o.get(api::REQUEST_ADDRESS_TYPE))
                .is_some_and(|t| t == api::GATEWAY_REQUEST);
            if gateway_asked {
                return match wanted {
                    Some(ip) if ip != n.lease.gateway => Err(format!(
                        "the gateway of overlay network {network:?} on this host is {}, not {ip}",
                        n.lease.gateway
                    )),
                    _ => Ok(json!(api::AddressAnswer {
                        address: format!("{}/{prefix}", n.lease.gateway),
                        data: BTreeMap::new(),
                    })),
                };
            }
            let record = self.attachments.reserve(network, wanted, OWNER).map_err(text)?;
            Ok(json!(api::AddressAnswer {
                address: format!("{}/{prefix}", record.ip),
                data: BTreeMap::new(),
            }))
        })())
    }

    pub fn release_address<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move {
            let result = async {
                let req: api::ReleaseAddress = parse(body)?;
                let network = pool_network(&req.pool_id)?;
                let ip = ipv4("address", &req.address)?;
                self.attachments
                    .release_reserved(network, ip, OWNER)
                    .await
                    .map_err(text)?;
                Ok(json!({}))
            }
            .await;
            ipam(result)
        })
    }

    /// Joins Docker network `NetworkID` to the overlay network of its pool (or `--opt network`).
    pub fn create_network(&self, body: &[u8]) -> Reply {
        driver((|| {
            let req: api::CreateNetwork = parse(body)?;
            if req.network_id.is_empty() {
                return Err("CreateNetwork without a NetworkID".into());
            }
            if req.ipv6_data.as_ref().is_some_and(|d| !d.is_empty())
                || req.options.get("com.docker.network.enable_ipv6") == Some(&Value::Bool(true))
            {
                return Err(
                    "IPv6 is not supported by overlay networks yet: create the docker network without --ipv6"
                        .into(),
                );
            }
            let opt = req
                .options
                .get(api::GENERIC)
                .and_then(|g| g.get("network"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let pools: Vec<&api::IpamData> = req.ipv4_data.iter().flatten().collect();
            let [pool] = pools.as_slice() else {
                return Err(format!(
                    "a docker network on overlay-net has exactly one IPv4 pool (got {}): use --ipam-driver overlay-net",
                    pools.len()
                ));
            };
            let subnet: Ipv4Network = pool.pool.parse().map_err(|_| {
                format!(
                    "pool {:?} is not an IPv4 CIDR: use --ipam-driver overlay-net",
                    pool.pool
                )
            })?;
            let network = self.attachments.network_holding(subnet).ok_or_else(|| {
                format!(
                    "pool {subnet} is not this host's lease of an overlay network: create the docker network with --ipam-driver overlay-net"
                )
            })?;
            let lease = self.attachments.leased_network(&network).map_err(text)?.lease;
            if lease.subnet != subnet {
                return Err(format!(
                    "pool {subnet} is not this host's lease {} of overlay network {network:?}: use --ipam-driver overlay-net",
                    lease.subnet
                ));
            }
            if let Some(named) = opt
                && named != network
            {
                return Err(format!(
                    "--opt network={named} but the addresses (--subnet / --ipam-opt) are overlay network {network:?}'s"
                ));
            }
            self.attachments
                .put_docker_network(&req.network_id, &network)
                .map_err(text)?;
            self.networks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.network_id.clone(), network.clone());
            tracing::info!(docker_network = %req.network_id, %network, "docker network joined to overlay network");
            Ok(json!({}))
        })())
    }

    pub fn delete_network(&self, body: &[u8]) -> Reply {
        driver((|| {
            let req: api::NetworkRef = parse(body)?;
            self.attachments
                .remove_docker_network(&req.network_id)
                .map_err(text)?;
            self.networks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.network_id);
            Ok(json!({}))
        })())
    }

    /// Names the endpoint on the address IPAM held; answers with its MAC (the anti-spoofing
    /// rules know the endpoint by address and MAC, so the MAC is overlay's to choose).
    pub fn create_endpoint(&self, body: &[u8]) -> Reply {
        tracing::debug!(body = %String::from_utf8_lossy(body), "docker: CreateEndpoint");
        driver((|| {
            let req: api::CreateEndpoint = parse(body)?;
            let network = self.network_of(&req.network_id)?;
            if req.endpoint_id.is_empty()
                || req.endpoint_id.len() > 128
                || req.endpoint_id.chars().any(|c| !c.is_ascii_alphanumeric())
            {
                return Err(format!(
                    "endpoint id {:?} is not one Docker makes",
                    req.endpoint_id
                ));
            }
            let iface = req.interface.unwrap_or_default();
            if !iface.address_ipv6.is_empty() {
                return Err("IPv6 is not supported by overlay networks yet".into());
            }
            if !iface.mac_address.is_empty() {
                return Err("overlay-net gives each container its MAC (the anti-spoofing rules know it): drop --mac-address".into());
            }
            if iface.address.is_empty() {
                return Err("no IPv4 address for the endpoint: use --ipam-driver overlay-net".into());
            }
            let ip = ipv4("address", &iface.address)?;
            let record = self
                .attachments
                .link_runtime(&network, ip, super::plugin::OWNER, &req.endpoint_id)
                .map_err(text)?;
            Ok(json!(api::CreatedEndpoint {
                interface: Some(api::CreatedInterface {
                    mac_address: record.mac.to_string(),
                }),
            }))
        })())
    }

    pub fn endpoint_info(&self, _: &[u8]) -> Reply {
        Reply::Ok(json!(api::OperInfo {
            value: BTreeMap::new()
        }))
    }

    pub fn delete_endpoint<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move {
            let result = async {
                let req: api::EndpointRef = parse(body)?;
                self.attachments
                    .delete_runtime(&req.endpoint_id)
                    .await
                    .map_err(text)?;
                Ok(json!({}))
            }
            .await;
            driver(result)
        })
    }

    /// Creates the veth pair; Docker moves `SrcName` into the sandbox and names it eth<n>.
    pub fn join<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        tracing::debug!(body = %String::from_utf8_lossy(body), "docker: Join");
        Box::pin(async move {
            let result = async {
                let req: api::Join = parse(body)?;
                self.network_of(&req.network_id)?;
                let (record, peer) = self
                    .attachments
                    .join_runtime(&req.endpoint_id, &req.sandbox_key)
                    .await
                    .map_err(text)?;
                if let Some(engine) = &self.engine {
                    tokio::spawn(super::engine::learn_names(
                        engine.clone(),
                        self.attachments.clone(),
                        req.network_id.clone(),
                        req.endpoint_id.clone(),
                    ));
                }
                Ok(json!(api::Joined {
                    interface_name: api::InterfaceName {
                        src_name: peer,
                        dst_prefix: "eth",
                    },
                    gateway: record.gateway.to_string(),
                }))
            }
            .await;
            driver(result)
        })
    }

    /// `docker run -p`: the endpoint's port bindings, published like `--publish`.
    pub fn program_external<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move {
            let result = async {
                let req: api::EndpointRef = parse(body)?;
                let bindings: Vec<api::PortBinding> = match req.options.get(api::PORTMAP) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => {
                        serde_json::from_value(v.clone()).map_err(|e| format!("port bindings: {e}"))?
                    }
                };
                let ports = bindings.iter().map(published).collect::<Result<Vec<_>, _>>()?;
                overlay_proto::ports::check_list(&ports)?;
                self.attachments
                    .set_runtime_ports(&req.endpoint_id, ports)
                    .await
                    .map_err(text)?;
                Ok(json!({}))
            }
            .await;
            driver(result)
        })
    }

    pub fn revoke_external<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move {
            let result = async {
                let req: api::EndpointRef = parse(body)?;
                if self.attachments.runtime_endpoint(&req.endpoint_id).is_some() {
                    self.attachments
                        .set_runtime_ports(&req.endpoint_id, Vec::new())
                        .await
                        .map_err(text)?;
                }
                Ok(json!({}))
            }
            .await;
            driver(result)
        })
    }
}

/// One of Docker's port bindings as a published port.
fn published(b: &api::PortBinding) -> Result<PublishedPort, String> {
    let protocol = match b.proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        other => {
            return Err(format!(
                "port bindings of IP protocol {other} cannot be published (tcp or udp)"
            ));
        }
    };
    if b.host_port == 0 {
        return Err(format!(
            "-p {}: give the host port (-p HOSTPORT:{}); overlay-net does not pick one",
            b.port, b.port
        ));
    }
    if b.host_port_end != 0 && b.host_port_end != b.host_port {
        return Err(format!(
            "-p {}-{}: host port ranges are not supported",
            b.host_port, b.host_port_end
        ));
    }
    PublishedPort::from_parts(b.host_port, b.port, protocol.as_str(), &b.host_ip)
}
