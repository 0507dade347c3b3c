//! The host-local endpoint API (proto `overlay.local.v1`), served on the agent's unix socket
//! ([`crate::local_socket`]) for the CNI plugin, the Docker plugin and a local overlayctl.
//!
//! Everything a caller sends is checked here before [`Attachments`] acts on it: keys, names,
//! interface names, addresses and ports, with sizes bounded. Errors carry their kind
//! ([`ErrorKind`]) so clients map them without reading messages.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use overlay_proto::local::local_endpoints_server::{LocalEndpoints, LocalEndpointsServer};
use overlay_proto::local::{self as api};
use overlay_proto::local_socket::ErrorKind;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attachments::Attachments;
use crate::book::NewEndpoint;
use crate::local_socket::LocalSocket;
use crate::store::Record;
use overlay_proto::ports::PublishedPort;

/// Longest key a caller may give: a CNI container id (up to 256) and an interface name.
const MAX_KEY: usize = 300;
const MAX_NAMES: usize = overlay_proto::validate::MAX_ENDPOINT_NAMES;
const MAX_PORTS: usize = 64;
/// Largest request: a few hundred bytes of fields, generously bounded.
const MAX_REQUEST: usize = 64 << 10;
/// Most connections served at once: every CNI ADD is one short connection.
const MAX_CONNECTIONS: usize = 256;

fn bad(message: impl Into<String>) -> Status {
    ErrorKind::BadRequest.status(message)
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(bad(format!("key must be 1 to {MAX_KEY} characters")));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("key must not contain whitespace or control characters"));
    }
    Ok(())
}

fn check_network(network: &str) -> Result<(), Status> {
    if network.is_empty() || network.len() > 64 {
        return Err(bad("network must be 1 to 64 characters"));
    }
    Ok(())
}

/// DNS labels: what the controller records (see its endpoint checks).
fn check_names(names: &[String]) -> Result<(), Status> {
    if names.len() > MAX_NAMES {
        return Err(bad(format!("at most {MAX_NAMES} names per endpoint")));
    }
    for n in names {
        overlay_proto::validate::endpoint_name(n)
            .map_err(|why| bad(format!("name {:?} {why}", n.chars().take(64).collect::<String>())))?;
    }
    Ok(())
}

fn ports(list: &[api::PortMapping]) -> Result<Vec<PublishedPort>, Status> {
    if list.len() > MAX_PORTS {
        return Err(bad(format!("at most {MAX_PORTS} port mappings per endpoint")));
    }
    let ports = list
        .iter()
        .map(|p| {
            PublishedPort::from_parts(p.host_port, p.container_port, &p.protocol, &p.host_ip)
                .map_err(|why| bad(format!("port mapping: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    overlay_proto::ports::check_list(&ports).map_err(|why| bad(format!("port mappings: {why}")))?;
    Ok(ports)
}

fn owner(o: &str) -> Result<String, Status> {
    match o {
        "" => Ok("local".into()),
        o if o.len() <= 32 && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => Ok(o.to_string()),
        _ => Err(bad("owner must be up to 32 letters, digits or '-'")),
    }
}

pub struct LocalApi {
    attachments: Arc<Attachments>,
}

impl LocalApi {
    fn attachment(&self, r: &Record) -> api::Attachment {
        let (state, message) = self.attachments.state_of(r.id);
        let (mtu, cidr) = self.attachments.network_view(&r.network);
        // The namespace's default route, or only the network's CIDR when another network's
        // endpoint has the default (what the agent programs inside).
        let route = api::Route {
            dst: if r.default_route || cidr.is_empty() {
                "0.0.0.0/0".into()
            } else {
                cidr
            },
            gateway: r.gateway.to_string(),
        };
        let v6 = self.attachments.v6_view(&r.network, r.ip);
        let mut routes = vec![route];
        if let Some((_, gateway6, cidr6)) = &v6 {
            routes.push(api::Route {
                dst: if r.default_route {
                    "::/0".into()
                } else {
                    cidr6.clone()
                },
                gateway: gateway6.to_string(),
            });
        }
        api::Attachment {
            key: r.key.clone(),
            network: r.network.clone(),
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            address: format!("{}/{}", r.ip, r.prefix_len),
            gateway: r.gateway.to_string(),
            mac: r.mac.to_string(),
            mtu,
            routes,
            // The agent's DNS server on the gateway, with the network's domain to search.
            dns: self
                .attachments
                .dns_of(&r.network)
                .map(|(server, domain)| api::Dns {
                    nameservers: vec![server.to_string()],
                    search: vec![domain.clone()],
                    domain,
                }),
            host_ifname: format!("{}{:x}", overlay_proto::names::ENDPOINT_PREFIX, r.id),
            names: r.names.clone(),
            ports: r
                .ports
                .iter()
                .map(|p| api::PortMapping {
                    host_port: u32::from(p.host_port),
                    container_port: u32::from(p.container_port),
                    protocol: p.protocol.as_str().to_string(),
                    host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                })
                .collect(),
            owner: r.owner.clone(),
            state,
            message,
            address6: v6.as_ref().map(|(a, _, _)| a.to_string()).unwrap_or_default(),
            gateway6: v6.as_ref().map(|(_, g, _)| g.to_string()).unwrap_or_default(),
            reported: r.reported,
        }
    }
}

#[tonic::async_trait]
impl LocalEndpoints for LocalApi {
    async fn attach(
        &self,
        req: Request<api::AttachRequest>,
    ) -> Result<Response<api::AttachResponse>, Status> {
        let req = req.into_inner();
        check_key(&req.key)?;
        check_network(&req.network)?;
        check_names(&req.names)?;
        if req.netns.is_empty() {
            return Err(bad("netns is required"));
        }
        let ip = match req.ip.as_str() {
            "" => None,
            text => Some(
                text.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("requested address {text:?} is not IPv4")))?,
            ),
        };
        let new = NewEndpoint {
            key: req.key,
            network: req.network,
            netns: req.netns,
            ifname: if req.ifname.is_empty() {
                "eth0".into()
            } else {
                req.ifname
            },
            ip,
            names: req.names,
            ports: ports(&req.ports)?,
            owner: owner(&req.owner)?,
            default_route: req.default_route,
        };
        let record = self.attachments.attach(new).await.map_err(|e| e.status())?;
        Ok(Response::new(api::AttachResponse {
            attachment: Some(self.attachment(&record)),
        }))
    }

    async fn detach(
        &self,
        req: Request<api::DetachRequest>,
    ) -> Result<Response<api::DetachResponse>, Status> {
        let req = req.into_inner();
        check_key(&req.key)?;
        let network = (!req.network.is_empty()).then_some(req.network.as_str());
        let removed = self
            .attachments
            .detach(&req.key, network)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(api::DetachResponse {
            existed: removed.is_some(),
        }))
    }

    async fn check(&self, req: Request<api::CheckRequest>) -> Result<Response<api::CheckResponse>, Status> {
        let req = req.into_inner();
        check_key(&req.key)?;
        let record = self
            .attachments
            .get(&req.key)
            .filter(|r| req.network.is_empty() || r.network == req.network)
            .ok_or_else(|| {
                ErrorKind::UnknownEndpoint.status(format!("no endpoint with key {:?}", req.key))
            })?;
        let att = self.attachment(&record);
        match att.state.as_str() {
            "ready" => Ok(Response::new(api::CheckResponse {
                attachment: Some(att),
            })),
            "pending" => Err(ErrorKind::WiringFailed.status("the endpoint is not wired yet")),
            state => Err(ErrorKind::WiringFailed.status(format!("the endpoint is {state}: {}", att.message))),
        }
    }

    async fn list(&self, req: Request<api::ListRequest>) -> Result<Response<api::ListResponse>, Status> {
        let network = req.into_inner().network;
        Ok(Response::new(api::ListResponse {
            attachments: self
                .attachments
                .list(&network)
                .iter()
                .map(|r| self.attachment(r))
                .collect(),
        }))
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let network = req.into_inner().network;
        check_network(&network)?;
        self.attachments.ready(&network).map_err(|e| e.status())?;
        Ok(Response::new(api::StatusResponse {}))
    }

    async fn gc(&self, req: Request<api::GcRequest>) -> Result<Response<api::GcResponse>, Status> {
        let req = req.into_inner();
        check_network(&req.network)?;
        let owner = owner(&req.owner)?;
        if req.keep.len() > 65_536 {
            return Err(bad("at most 65536 attachments to keep"));
        }
        let keep: BTreeSet<String> = req.keep.into_iter().collect();
        let removed = self
            .attachments
            .gc(&req.network, &owner, &keep)
            .await
            .map_err(|e| e.status())?;
        for key in &removed {
            tracing::info!(%key, network = %req.network, "garbage-collected endpoint");
        }
        Ok(Response::new(api::GcResponse { removed }))
    }
}

/// Serves the local API on `socket` until the process ends.
pub async fn serve(socket: LocalSocket, attachments: Arc<Attachments>) {
    let service = LocalEndpointsServer::new(LocalApi { attachments })
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(16 << 20);
    // Connections pass the peer-credential check in `LocalSocket::accept` before a byte is read.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            match socket.accept().await {
                Ok(stream) => {
                    let stream = CountedStream {
                        inner: stream,
                        _permit: permit,
                    };
                    if tx.send(Ok::<_, std::io::Error>(stream)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(ReceiverStream::new(rx))
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "local API stopped");
    }
}

/// A connection holding one of the server's connection slots until it is dropped.
struct CountedStream {
    inner: tokio::net::UnixStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for CountedStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
