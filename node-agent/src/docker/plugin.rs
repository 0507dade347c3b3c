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
/// The prefix of a deferred pool's id: `overlay-net/deferred/<placeholder CIDR>`.
///
/// `docker network create --driver overlay-net --ipam-driver overlay-net NAME` says nothing
/// to IPAM about which overlay network is meant: Docker asks for the pool before the network
/// exists and never tells a plugin the network's name. Such a pool is a placeholder, a /24
/// of 0.0.0.0/8 ("this network", never a destination), and the overlay network (NAME, or
/// the driver's `--opt network=`) is looked up in dockerd's own view of the network once it
/// exists: when the first container asks for an address.
const DEFERRED_PREFIX: &str = "overlay-net/deferred/";
/// The key a placeholder pool is stored under, beside the docker networks' ids (which are
/// hex): what it stands for survives an agent restart, for releases and for new picks.
const STORED_PLACEHOLDER: &str = "placeholder:";
/// The IPAM address space overlay-net answers Docker with (Docker's own is `LocalDefault`).
const ADDRESS_SPACE: &str = "overlay";

pub type Pending<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

pub struct Plugin {
    attachments: Arc<Attachments>,
    /// Docker network id -> overlay network (also in the agent's store).
    networks: Mutex<BTreeMap<String, String>>,
    /// Placeholder pools handed out (see [`DEFERRED_PREFIX`]) -> the overlay network, once
    /// known.
    deferred: Mutex<BTreeMap<Ipv4Network, Option<String>>>,
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

/// What a pool id handed to Docker names.
enum Pool<'a> {
    /// The host's lease of this overlay network.
    Network(&'a str),
    /// A placeholder, until dockerd says which network holds it.
    Deferred(Ipv4Network),
}

fn pool_of(pool_id: &str) -> Result<Pool<'_>, String> {
    let foreign = || format!("pool {pool_id:?} is not one overlay-net handed out");
    if let Some(cidr) = pool_id.strip_prefix(DEFERRED_PREFIX) {
        let cidr: Ipv4Network = cidr.parse().map_err(|_| foreign())?;
        return is_placeholder(cidr)
            .then_some(Pool::Deferred(cidr))
            .ok_or_else(foreign);
    }
    pool_id
        .strip_prefix(POOL_PREFIX)
        .filter(|n| !n.is_empty())
        .map(Pool::Network)
        .ok_or_else(foreign)
}

/// One of the placeholder pools of [`DEFERRED_PREFIX`].
fn is_placeholder(cidr: Ipv4Network) -> bool {
    cidr.prefix() == 24 && cidr.ip().octets()[0] == 0 && cidr.ip().octets()[3] == 0
}

/// The gateway Docker records for a placeholder pool (containers get the real one at Join).
fn placeholder_gateway(cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// The overlay network a docker network means, from dockerd's inspect of it: `--opt
/// network=` or else its own name.
fn meant_network(inspect: &Value) -> Option<String> {
    inspect["Options"]["network"]
        .as_str()
        .or_else(|| inspect["Name"].as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The (only) IPv4 subnet of a docker network's IPAM configuration.
fn ipam_subnet(inspect: &Value) -> Option<Ipv4Network> {
    inspect["IPAM"]["Config"]
        .as_array()?
        .iter()
        .find_map(|c| c["Subnet"].as_str()?.parse().ok())
}

impl Plugin {
    pub fn new(attachments: Arc<Attachments>, engine: Option<Engine>) -> Self {
        let stored = attachments.docker_networks().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the docker networks from the store");
            Vec::new()
        });
        // Placeholder pools are stored beside the docker networks, under their own key.
        let (pools, networks): (Vec<_>, Vec<_>) = stored
            .into_iter()
            .partition(|(key, _)| key.starts_with(STORED_PLACEHOLDER));
        let deferred = pools
            .into_iter()
            .filter_map(|(key, network)| {
                let cidr: Ipv4Network = key.strip_prefix(STORED_PLACEHOLDER)?.parse().ok()?;
                Some((cidr, Some(network).filter(|n| !n.is_empty())))
            })
            .collect();
        Self {
            attachments,
            engine,
            networks: Mutex::new(networks.into_iter().collect()),
            deferred: Mutex::new(deferred),
        }
    }

    /// Records that docker network `id` joins overlay network `network`, in the agent's store
    /// (Docker never replays CreateNetwork after a restart) and in memory.
    fn join_network(&self, id: &str, network: &str) -> Result<(), String> {
        self.attachments.put_docker_network(id, network).map_err(text)?;
        self.networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), network.to_string());
        tracing::info!(docker_network = %id, %network, "docker network joined to overlay network");
        Ok(())
    }

    /// Records what placeholder `cidr` stands for (`None`: not known yet) in memory and in
    /// the agent's store, so that releases and new picks survive an agent restart.
    fn keep_placeholder(&self, cidr: Ipv4Network, network: Option<&str>) -> Result<(), String> {
        self.attachments
            .put_docker_network(&format!("{STORED_PLACEHOLDER}{cidr}"), network.unwrap_or(""))
            .map_err(text)?;
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cidr, network.map(str::to_string));
        Ok(())
    }

    /// `ReleasePool`: a placeholder is free again once its docker network is gone.
    pub fn release_pool(&self, body: &[u8]) -> Reply {
        ipam((|| {
            let req: api::ReleasePool = parse(body)?;
            if let Ok(Pool::Deferred(cidr)) = pool_of(&req.pool_id) {
                self.attachments
                    .remove_docker_network(&format!("{STORED_PLACEHOLDER}{cidr}"))
                    .map_err(text)?;
                self.deferred
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&cidr);
            }
            Ok(json!({}))
        })())
    }

    /// A placeholder pool no other network of this agent's holds. Which of the 65,535 comes
    /// from the clock: two docker networks given the same one (across an agent restart) are
    /// told apart when resolved, and refused with a clear message if they cannot be.
    fn new_placeholder(&self) -> Result<Ipv4Network, String> {
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let start = (seed % 65_535) as u16;
        let pick = (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .filter(|k| *k != 0)
            .map(|k| {
                let [a, b] = k.to_be_bytes();
                Ipv4Network::new(Ipv4Addr::new(0, a, b, 0), 24).ok()
            })
            .find_map(|c| c.filter(|c| !deferred.contains_key(c)))
            .ok_or("every placeholder pool is in use: remove a docker network created without --subnet")?;
        deferred.insert(pick, None);
        drop(deferred);
        if let Err(e) = self.keep_placeholder(pick, None) {
            self.deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pick);
            return Err(e);
        }
        Ok(pick)
    }

    /// The overlay network behind placeholder pool `cidr`: dockerd's inspect of the docker
    /// network holding it says (see [`DEFERRED_PREFIX`]). Remembered, and the docker network's
    /// id recorded like one created with `--subnet`.
    async fn resolve(&self, cidr: Ipv4Network) -> Result<String, String> {
        let known = self
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cidr)
            .cloned()
            .flatten();
        if let Some(network) = known {
            return Ok(network);
        }
        let engine = self.engine.as_ref().ok_or_else(|| {
            format!(
                "pool {cidr} waits for dockerd to say its network's name, and the agent has no --docker-api"
            )
        })?;
        let listed = engine.overlay_networks().await.map_err(|e| e.to_string())?;
        let holding: Vec<&Value> = listed.iter().filter(|n| ipam_subnet(n) == Some(cidr)).collect();
        let inspect = match holding.as_slice() {
            [one] => *one,
            [] => return Err(format!("no docker network holds pool {cidr} (yet)")),
            _ => {
                return Err(format!(
                    "{} docker networks hold placeholder pool {cidr}: remove all but one and create them again",
                    holding.len()
                ));
            }
        };
        let network = meant_network(inspect)
            .ok_or_else(|| format!("dockerd lists the network of pool {cidr} without a name"))?;
        self.attachments.leased_network(&network).map_err(|e| {
            format!(
                "docker network {:?} means overlay network {network:?}: {} (name another with --opt network=NAME)",
                inspect["Name"].as_str().unwrap_or_default(),
                e.message
            )
        })?;
        let id = inspect["Id"]
            .as_str()
            .filter(|id| super::engine::is_docker_id(id))
            .ok_or_else(|| format!("dockerd lists the network of pool {cidr} without a valid id"))?;
        self.join_network(id, &network)?;
        self.keep_placeholder(cidr, Some(&network))?;
        tracing::info!(pool = %cidr, %network, "placeholder pool resolved through dockerd");
        Ok(network)
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
            local_default_address_space: ADDRESS_SPACE,
            global_default_address_space: ADDRESS_SPACE,
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
                (None, None) if self.engine.is_some() => {
                    // Which overlay network is learnt once the docker network exists.
                    let cidr = self.new_placeholder()?;
                    return Ok(json!(api::PoolAnswer {
                        pool_id: format!("{DEFERRED_PREFIX}{cidr}"),
                        pool: cidr.to_string(),
                        data: BTreeMap::from([(
                            api::GATEWAY_REQUEST.to_string(),
                            format!("{}/24", placeholder_gateway(cidr)),
                        )]),
                    }));
                }
                (None, None) => {
                    return Err(
                        "say which overlay network: --subnet <its CIDR> (what docker run --ip needs) or --ipam-opt network=NAME (Docker does not tell IPAM plugins a network's name, and this agent has no --docker-api to ask dockerd)"
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
    pub fn request_address<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move { ipam(self.address_for(body).await) })
    }

    async fn address_for(&self, body: &[u8]) -> Result<Value, String> {
        let req: api::RequestAddress = parse(body)?;
        let gateway_asked = req
            .options
            .as_ref()
            .and_then(|o| o.get(api::REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == api::GATEWAY_REQUEST);
        let network = match pool_of(&req.pool_id)? {
            // The placeholder's own gateway, while the network is being created.
            Pool::Deferred(cidr) if gateway_asked => {
                return Ok(json!(api::AddressAnswer {
                    address: format!("{}/24", placeholder_gateway(cidr)),
                    data: BTreeMap::new(),
                }));
            }
            Pool::Deferred(cidr) => self.resolve(cidr).await?,
            Pool::Network(n) => n.to_string(),
        };
        let network = network.as_str();
        let n = self.attachments.leased_network(network).map_err(text)?;
        let prefix = n.lease.subnet.prefix();
        let wanted = match req.address.as_str() {
            "" => None,
            a => Some(ipv4("address", a)?),
        };
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
    }

    pub fn release_address<'a>(&'a self, body: &'a [u8]) -> Pending<'a> {
        Box::pin(async move {
            let result = async {
                let req: api::ReleaseAddress = parse(body)?;
                let ip = ipv4("address", &req.address)?;
                let network = match pool_of(&req.pool_id)? {
                    // The placeholder's gateway was never anybody's.
                    Pool::Deferred(cidr) if ip == placeholder_gateway(cidr) => return Ok(json!({})),
                    Pool::Deferred(cidr) => self.resolve(cidr).await?,
                    Pool::Network(n) => n.to_string(),
                };
                self.attachments
                    .release_reserved(&network, ip, OWNER)
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
            if !super::engine::is_docker_id(&req.network_id) {
                return Err(format!("network id {:?} is not one Docker makes", req.network_id));
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
            if is_placeholder(subnet) {
                // Created without --subnet: with --opt network= the overlay network is known
                // now; otherwise it is the docker network's own name, which dockerd lists
                // once this call returns (see DEFERRED_PREFIX). Only a placeholder this
                // agent handed out, and not one that already stands for another network.
                let known = self
                    .deferred
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&subnet)
                    .cloned();
                match (known, &opt) {
                    // Docker's own IPAM could hand out the same prefix: ours have our space.
                    _ if pool.address_space != ADDRESS_SPACE => {
                        return Err(format!(
                            "pool {subnet} comes from address space {:?}, not overlay-net's: use --ipam-driver overlay-net",
                            pool.address_space
                        ));
                    }
                    (None, _) => {
                        return Err(format!(
                            "pool {subnet} is not one overlay-net handed out: use --ipam-driver overlay-net"
                        ));
                    }
                    (Some(Some(held)), Some(named)) if held != *named => {
                        return Err(format!(
                            "pool {subnet} already stands for overlay network {held:?}, not {named:?}"
                        ));
                    }
                    _ => {}
                }
                if let Some(named) = &opt {
                    self.attachments.leased_network(named).map_err(text)?;
                    // The placeholder first: Docker frees it if this call fails, and sends
                    // no DeleteNetwork for a network it never made.
                    self.keep_placeholder(subnet, Some(named))?;
                    self.join_network(&req.network_id, named)?;
                }
                return Ok(json!({}));
            }
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
            self.join_network(&req.network_id, &network)?;
            Ok(json!({}))
        })())
    }

    pub fn delete_network(&self, body: &[u8]) -> Reply {
        driver((|| {
            let req: api::NetworkRef = parse(body)?;
            if !super::engine::is_docker_id(&req.network_id) {
                return Err(format!("network id {:?} is not one Docker makes", req.network_id));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_name_a_network_or_a_placeholder_and_nothing_else() {
        assert!(matches!(pool_of("overlay-net/blue"), Ok(Pool::Network("blue"))));
        let Ok(Pool::Deferred(cidr)) = pool_of("overlay-net/deferred/0.12.34.0/24") else {
            panic!("a placeholder pool id");
        };
        assert_eq!(placeholder_gateway(cidr), Ipv4Addr::new(0, 12, 34, 1));
        // Only placeholders defer: a real prefix under the deferred id is not ours.
        for bad in [
            "overlay-net/deferred/10.0.0.0/24",
            "overlay-net/deferred/0.1.2.0/16",
            "overlay-net/deferred/0.1.2.5/24",
            "overlay-net/deferred/",
            "overlay-net/",
            "default/blue",
        ] {
            assert!(pool_of(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_meant_network_is_the_opt_or_else_the_docker_network_name() {
        let named = json!({"Name": "b2", "Options": {"network": "blue"}});
        assert_eq!(meant_network(&named).as_deref(), Some("blue"));
        let plain = json!({"Name": "blue", "Options": {}});
        assert_eq!(meant_network(&plain).as_deref(), Some("blue"));
        assert_eq!(meant_network(&json!({"Name": ""})), None);
        let ipam = json!({"IPAM": {"Config": [{"Subnet": "0.7.9.0/24", "Gateway": "0.7.9.1"}]}});
        assert_eq!(ipam_subnet(&ipam), "0.7.9.0/24".parse().ok());
        assert_eq!(ipam_subnet(&json!({"IPAM": {"Config": null}})), None);
    }
}
