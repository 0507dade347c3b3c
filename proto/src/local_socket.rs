//! The client side of the agent's host-local endpoint API: a gRPC channel over the agent's unix
//! socket (`--local-socket`, default [`DEFAULT_SOCKET`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::local::local_endpoints_client::LocalEndpointsClient;

/// Where the agent serves the local API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/overlay/agent.sock";

#[derive(Debug, thiserror::Error)]
#[error("overlay-agent is not answering on {}: {reason}; is it running on this host?", path.display())]
pub struct LocalConnectError {
    pub path: PathBuf,
    pub reason: String,
}

/// Connects to the local API at `path` within `connect_timeout`; each call then may take up to
/// `request_timeout`. The connection is made now (not on first call), so a missing agent is
/// reported here, with one line.
pub async fn connect(
    path: &Path,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<LocalEndpointsClient<Channel>, LocalConnectError> {
    let socket = path.to_path_buf();
    let fail = |reason: String| LocalConnectError {
        path: path.to_path_buf(),
        reason,
    };
    // The URI is a placeholder: the connector below dials the socket whatever it says.
    let endpoint = Endpoint::from_static("http://agent.local")
        .connect_timeout(connect_timeout)
        .timeout(request_timeout);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = s.to_string();
                source = s.source();
            }
            fail(reason)
        })?;
    Ok(LocalEndpointsClient::new(channel))
}

/// Metadata key on every error status the local API produces: what kind of failure it is, so a
/// client (the CNI plugin maps these onto the CNI spec's error codes) need not parse messages.
pub const ERROR_KIND_KEY: &str = "x-overlay-error-kind";

/// The kinds of failure the local API reports, as carried under [`ERROR_KIND_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed (key, interface name, address syntax).
    BadRequest,
    UnknownNetwork,
    /// No endpoint with that key.
    UnknownEndpoint,
    PoolExhausted,
    /// The requested address or interface is taken, or outside this host's lease.
    AddressRefused,
    /// The namespace is not one the agent may wire (not a network namespace, the host's own...).
    NamespaceRefused,
    /// A port to publish is already published on this host.
    PortInUse,
    /// Wiring failed in the kernel.
    WiringFailed,
    /// The agent cannot serve this network yet (no lease and no controller reachable).
    NotReady,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::BadRequest,
        ErrorKind::UnknownNetwork,
        ErrorKind::UnknownEndpoint,
        ErrorKind::PoolExhausted,
        ErrorKind::AddressRefused,
        ErrorKind::NamespaceRefused,
        ErrorKind::PortInUse,
        ErrorKind::WiringFailed,
        ErrorKind::NotReady,
        ErrorKind::Internal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::UnknownNetwork => "unknown-network",
            ErrorKind::UnknownEndpoint => "unknown-endpoint",
            ErrorKind::PoolExhausted => "pool-exhausted",
            ErrorKind::AddressRefused => "address-refused",
            ErrorKind::NamespaceRefused => "namespace-refused",
            ErrorKind::PortInUse => "port-in-use",
            ErrorKind::WiringFailed => "wiring-failed",
            ErrorKind::NotReady => "not-ready",
            ErrorKind::Internal => "internal",
        }
    }

    /// The gRPC code a status of this kind carries.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::BadRequest | ErrorKind::AddressRefused | ErrorKind::NamespaceRefused => {
                Code::InvalidArgument
            }
            ErrorKind::UnknownNetwork | ErrorKind::UnknownEndpoint => Code::NotFound,
            ErrorKind::PortInUse => Code::AlreadyExists,
            ErrorKind::PoolExhausted => Code::ResourceExhausted,
            ErrorKind::WiringFailed => Code::FailedPrecondition,
            ErrorKind::NotReady => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// A status of this kind with a one-line message.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message.into());
        if let Ok(value) = self.label().parse() {
            status.metadata_mut().insert(ERROR_KIND_KEY, value);
        }
        status
    }

    /// The kind a status says it is; `None` for statuses from the transport.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        let label = status.metadata().get(ERROR_KIND_KEY)?.to_str().ok()?;
        Self::ALL.into_iter().find(|k| k.label() == label)
    }
}
