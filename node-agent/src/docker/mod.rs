//! The Docker network and IPAM plugin (`overlay-agent --docker-plugin`): Docker's legacy
//! plugin API over `/run/docker/plugins/overlay-net.sock`, so that
//! `docker network create --driver overlay-net --ipam-driver overlay-net NAME` joins a Docker
//! network to overlay network NAME and `docker run --network NAME` wires containers into it on
//! any host.
//!
//! Everything goes through the host's endpoint book ([`crate::attachments`]): IPAM hands out
//! addresses of this host's lease, durably, and the network driver creates the veth pair that
//! Docker moves into the container (see [`crate::attachments::runtime`]). The plugin keeps only
//! which Docker network joins which overlay network, in the agent's store, since Docker never
//! tells a plugin about its networks again after a restart.
//!
//! Docker never tells a plugin which container an endpoint is for: after each Join the plugin
//! asks dockerd's Engine API ([`engine`]) for the container's name and network aliases, which
//! become the endpoint's names in the network's DNS on every host.
//!
//! The socket is root only (mode 0600, peer credentials checked per connection): dockerd runs
//! as root, and whoever can talk to it can make the agent wire interfaces.

pub mod api;
pub mod engine;
mod plugin;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::UnixStream;

use crate::attachments::Attachments;
use crate::local_socket::{LocalSocket, SocketError};
pub use plugin::Plugin;

/// Where Docker looks for the plugin named `overlay-net`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/overlay-net.sock";
/// The driver name in `docker network create --driver` and `--ipam-driver`.
pub const DRIVER: &str = "overlay-net";
/// Largest request body: Docker's are a few hundred bytes.
const MAX_BODY: usize = 256 << 10;

/// Binds the plugin socket (root only).
pub async fn bind(path: &Path) -> Result<LocalSocket, SocketError> {
    LocalSocket::bind(path).await
}

/// Serves Docker on `socket` until the process ends.
pub async fn serve(
    socket: LocalSocket,
    attachments: Arc<Attachments>,
    engine: Option<engine::Engine>,
) -> std::io::Result<()> {
    let plugin = Arc::new(Plugin::new(attachments, engine));
    axum::serve(RootOnly(socket), router(plugin)).await
}

/// The routes Docker calls; any other path is 404 (Docker reads that as "not implemented").
pub fn router(plugin: Arc<Plugin>) -> Router {
    let r = |f: fn(&Plugin, &[u8]) -> Reply| {
        post(move |State(p): State<Arc<Plugin>>, body: Bytes| async move { f(&p, &body) })
    };
    let a = |f: for<'a> fn(&'a Plugin, &'a [u8]) -> plugin::Pending<'a>| {
        post(move |State(p): State<Arc<Plugin>>, body: Bytes| async move { f(&p, &body).await })
    };
    Router::new()
        .route("/Plugin.Activate", r(Plugin::activate))
        .route("/NetworkDriver.GetCapabilities", r(Plugin::capabilities))
        .route("/NetworkDriver.CreateNetwork", r(Plugin::create_network))
        .route("/NetworkDriver.DeleteNetwork", r(Plugin::delete_network))
        .route("/NetworkDriver.AllocateNetwork", r(Plugin::nothing))
        .route("/NetworkDriver.FreeNetwork", r(Plugin::nothing))
        .route("/NetworkDriver.CreateEndpoint", r(Plugin::create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", r(Plugin::endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", a(Plugin::delete_endpoint))
        .route("/NetworkDriver.Join", a(Plugin::join))
        .route("/NetworkDriver.Leave", r(Plugin::nothing))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            a(Plugin::program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            a(Plugin::revoke_external),
        )
        .route("/NetworkDriver.DiscoverNew", r(Plugin::nothing))
        .route("/NetworkDriver.DiscoverDelete", r(Plugin::nothing))
        .route("/IpamDriver.GetCapabilities", r(Plugin::ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", r(Plugin::address_spaces))
        .route("/IpamDriver.RequestPool", r(Plugin::request_pool))
        .route("/IpamDriver.ReleasePool", r(Plugin::release_pool))
        .route("/IpamDriver.RequestAddress", a(Plugin::request_address))
        .route("/IpamDriver.ReleaseAddress", a(Plugin::release_address))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(plugin)
}

/// An answer: JSON on success; on failure the error object of the API it belongs to (the
/// network driver's `Err`, IPAM's `Error`), still with status 200 as Docker expects.
pub enum Reply {
    Ok(serde_json::Value),
    DriverError(String),
    IpamError(String),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = match self {
            Reply::Ok(v) => v,
            Reply::DriverError(msg) => serde_json::json!({ "Err": msg }),
            Reply::IpamError(msg) => serde_json::json!({ "Error": msg }),
        };
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/vnd.docker.plugins.v1.2+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The socket, accepting root's connections only.
struct RootOnly(LocalSocket);

impl axum::serve::Listener for RootOnly {
    type Io = UnixStream;
    type Addr = ();

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(stream) => return (stream, ()),
                Err(e) => {
                    tracing::warn!(error = %e, "docker plugin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(())
    }
}
