//! Who may call what, when the controller runs with mutual TLS.
//!
//! TLS has already checked that the caller's certificate was signed by the cluster CA.
//! [`AuthLayer`] reads the caller's [`PeerIdentity`] from that certificate, refuses a call its
//! role does not allow before the request is even decoded, and hands the identity on to the
//! handlers (as a [`Caller`] extension), which check what only they can: an agent acts for
//! its own host only ([`require_host`]).
//!
//! | role       | may call |
//! |------------|----------|
//! | controller | the replica-to-replica `Raft` service |
//! | agent      | the `Agent` service, for the host its certificate names |
//! | admin      | the whole `Overlay` API |
//! | reader     | the read-only calls of the `Overlay` API |
//!
//! Without TLS every caller is [`Caller::Plaintext`] and everything is allowed: a plaintext
//! cluster is one whose network is trusted.

use std::pin::Pin;
use std::task::{Context, Poll};

use overlay_proto::tls::{PeerIdentity, Role};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Status};

use crate::api::status;

/// The caller of a request, as handlers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The controller runs without TLS: nobody is authenticated, nothing is refused.
    Plaintext,
    /// The verified certificate of a mutual-TLS connection.
    Verified(PeerIdentity),
}

/// What a gRPC method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Replica-to-replica traffic: votes, log, snapshots, forwarded writes.
    Raft,
    /// An agent's calls about its own host.
    Agent,
    /// Looking at the cluster.
    Read,
    /// Changing the cluster, or making it do something (a probe sends packets).
    Write,
}

/// The `Overlay` methods a reader may call: they change nothing and send nothing.
const READ_ONLY: &[&str] = &[
    "ClusterStatus",
    "ListNetworks",
    "InspectNetwork",
    "ListHosts",
    "InspectHost",
    "ListEndpoints",
    "Doctor",
];

/// Classifies a gRPC path (`/package.Service/Method`). Unknown services get `None` and are
/// refused: a new service must be placed here before anyone may call it.
pub fn access(path: &str) -> Option<Access> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "overlay.raft.v1.Raft" => Some(Access::Raft),
        "overlay.v1.Agent" => Some(Access::Agent),
        "overlay.v1.Overlay" if READ_ONLY.contains(&method) => Some(Access::Read),
        "overlay.v1.Overlay" => Some(Access::Write),
        _ => None,
    }
}

pub fn permits(role: Role, access: Access) -> bool {
    matches!(
        (role, access),
        (Role::Controller, Access::Raft)
            | (Role::Agent, Access::Agent)
            | (Role::Admin, Access::Read | Access::Write)
            | (Role::Reader, Access::Read)
    )
}

/// The refusal for `who` calling `path`, or `None` when the call is allowed.
pub fn refusal(who: &PeerIdentity, path: &str) -> Option<String> {
    let method = path.rsplit('/').next().unwrap_or(path);
    match access(path) {
        Some(a) if permits(who.role, a) => None,
        Some(Access::Raft) => Some(format!(
            "permission denied: {who} may not call {method} (replica-to-replica traffic needs a controller certificate)"
        )),
        Some(Access::Agent) => Some(format!(
            "permission denied: {who} may not call {method} (agent calls need an agent certificate)"
        )),
        Some(Access::Write) if who.role == Role::Reader => Some(format!(
            "permission denied: {who} is read-only and may not call {method}"
        )),
        Some(_) => Some(format!("permission denied: {who} may not call {method}")),
        None => Some(format!("permission denied: unknown method {path}")),
    }
}

/// For `Agent` handlers: an agent may register, watch and report only for the host its
/// certificate names; without TLS anything goes.
pub fn require_host<T>(req: &Request<T>, host: &str) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller::Plaintext) => Ok(()),
        Some(Caller::Verified(who)) if who.role == Role::Agent && who.name == host => Ok(()),
        Some(Caller::Verified(who)) => Err(status(
            Code::PermissionDenied,
            format!("permission denied: {who} may not act for host {host:?}"),
        )),
        // The layer always sets a caller; a request without one did not pass it.
        None => Err(status(
            Code::PermissionDenied,
            "permission denied: caller unknown",
        )),
    }
}

/// Tower layer in front of every service; `tls` says whether the server runs mutual TLS.
#[derive(Clone, Copy, Debug)]
pub struct AuthLayer {
    pub tls: bool,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, tls: self.tls }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    tls: bool,
}

/// Who called, from the verified client certificate of the request's connection.
fn caller_of<B>(req: &http::Request<B>) -> Result<PeerIdentity, String> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .ok_or("unauthenticated: no client certificate")?;
    let leaf = certs.first().ok_or("unauthenticated: no client certificate")?;
    PeerIdentity::from_der(leaf).map_err(|e| format!("unauthenticated: {e}"))
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !self.tls {
            req.extensions_mut().insert(Caller::Plaintext);
            return Box::pin(self.inner.call(req));
        }
        let refused = match caller_of(&req) {
            Err(why) => Some(status(Code::Unauthenticated, why)),
            Ok(who) => match refusal(&who, req.uri().path()) {
                Some(why) => {
                    tracing::warn!(caller = %who, method = req.uri().path(), "call refused");
                    Some(status(Code::PermissionDenied, why))
                }
                None => {
                    req.extensions_mut().insert(Caller::Verified(who));
                    None
                }
            },
        };
        match refused {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, name: &str) -> PeerIdentity {
        PeerIdentity {
            role,
            name: name.into(),
        }
    }

    #[test]
    fn roles_reach_exactly_their_services() {
        let admin = who(Role::Admin, "alice");
        let reader = who(Role::Reader, "grafana");
        let agent = who(Role::Agent, "h1");
        let ctl = who(Role::Controller, "c1");
        let cases = [
            ("/overlay.v1.Overlay/ListNetworks", [true, true, false, false]),
            ("/overlay.v1.Overlay/Doctor", [true, true, false, false]),
            ("/overlay.v1.Overlay/CreateNetwork", [true, false, false, false]),
            ("/overlay.v1.Overlay/Probe", [true, false, false, false]),
            ("/overlay.v1.Overlay/AddMember", [true, false, false, false]),
            ("/overlay.v1.Agent/Register", [false, false, true, false]),
            ("/overlay.v1.Agent/Watch", [false, false, true, false]),
            ("/overlay.raft.v1.Raft/AppendEntries", [false, false, false, true]),
            ("/overlay.raft.v1.Raft/Forward", [false, false, false, true]),
            ("/grpc.reflection.v1.ServerReflection/Info", [false; 4]),
            ("garbage", [false; 4]),
        ];
        for (path, allowed) in cases {
            for (id, ok) in [&admin, &reader, &agent, &ctl].into_iter().zip(allowed) {
                assert_eq!(refusal(id, path).is_none(), ok, "{id} calling {path}");
            }
        }
        let msg = refusal(&reader, "/overlay.v1.Overlay/CreateNetwork").unwrap_or_default();
        assert!(
            msg.contains("read-only") && msg.contains("CreateNetwork"),
            "{msg}"
        );
    }

    #[test]
    fn an_agent_acts_for_its_own_host_only() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(Caller::Verified(who(Role::Agent, "h1")));
        assert!(require_host(&req, "h1").is_ok());
        let err = require_host(&req, "h2").err().map(|s| s.code());
        assert_eq!(err, Some(Code::PermissionDenied));

        let mut plain = Request::new(());
        plain.extensions_mut().insert(Caller::Plaintext);
        assert!(require_host(&plain, "h2").is_ok());
        assert!(
            require_host(&Request::new(()), "h1").is_err(),
            "no caller, no access"
        );
    }
}
