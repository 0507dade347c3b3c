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
//!
//! ## What a certificate is bound to
//!
//! A certificate's subject alternative names ([`CallerNames`], what `overlayctl certs issue
//! --san` writes) bind it to addresses:
//!
//! - **Controller → member id.** A controller certificate speaks for member X when X's
//!   address in the Raft membership (host part, as in `--peers` and `cluster add-member`) is
//!   one of its IP or DNS names: the same names a replica's server certificate must carry for
//!   the others to dial it at all. Every `Raft` call but `Info` needs the certificate of a
//!   *current* member ([`member_refusal`]); `AppendEntries`, `Vote` and `InstallSnapshot`,
//!   which say which member sent them, need that member's. A replica that has not joined a
//!   cluster yet takes its `--peers` for the membership. `Info` (id, term, leader: nothing
//!   secret) answers any controller certificate, so a replica can be checked before it is
//!   added. Replicas that share one address (a single test machine) share one identity: run
//!   one replica per address where this matters.
//! - **Agent → underlay address.** An agent registers its host (the CN) with an underlay
//!   address that is one of its certificate's IP names or the address its connection comes
//!   from ([`require_underlay`]), so it cannot put another host's address in the peers' FDB
//!   or lock that host out by taking its address first.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use overlay_proto::tls::{CertNames, PeerIdentity, Role, address_host};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Status};

use crate::api::status;
use crate::raft::NodeId;

/// The caller of a request, as handlers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The controller runs without TLS: nobody is authenticated, nothing is refused.
    Plaintext,
    /// The verified certificate of a mutual-TLS connection.
    Verified(PeerIdentity),
}

/// The subject alternative names of a verified caller's certificate (set with
/// [`Caller::Verified`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallerNames(pub CertNames);

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

/// For `Raft` handlers: why the caller may not make this call, or `None` when it may. It
/// must hold the certificate of one of `members` (id, address); when the message says it
/// comes from member `claimed`, that member's. Without TLS, nothing is refused.
pub fn member_refusal<T>(
    req: &Request<T>,
    members: &[(NodeId, String)],
    claimed: Option<NodeId>,
) -> Option<String> {
    let who = match req.extensions().get::<Caller>() {
        Some(Caller::Plaintext) => return None,
        Some(Caller::Verified(who)) => who,
        None => return Some("permission denied: caller unknown".into()),
    };
    let default = CallerNames::default();
    let names = &req.extensions().get::<CallerNames>().unwrap_or(&default).0;
    let speaks_for: Vec<NodeId> = members
        .iter()
        .filter(|(_, addr)| names.contains_host(address_host(addr)))
        .map(|(id, _)| *id)
        .collect();
    match claimed {
        Some(id) if speaks_for.contains(&id) => None,
        None if !speaks_for.is_empty() => None,
        Some(id) if !speaks_for.is_empty() => {
            let theirs = members
                .iter()
                .find(|(m, _)| *m == id)
                .map(|(_, a)| format!("member {id}'s address is {a}"))
                .unwrap_or_else(|| format!("{id} is not a member"));
            Some(format!(
                "permission denied: {who} may not speak for member {id}: its certificate names {names}, and {theirs}"
            ))
        }
        _ => Some(format!(
            "permission denied: {who} is not a member of this cluster: no member's address is among its certificate's names ({names}); `overlayctl cluster add-member` makes it one"
        )),
    }
}

/// For `Register`: an agent (mutual TLS) registers an underlay address that is one of its
/// certificate's IP names or the address it connects from; without TLS anything goes.
/// Either family: the source is compared in canonical form (an IPv4 agent reaching a
/// dual-stack listener shows as `::ffff:a.b.c.d` until canonicalized), and the certificate's
/// names by [`CertNames::contains_host`], which canonicalizes both sides too.
pub fn require_underlay<T>(req: &Request<T>, underlay: IpAddr) -> Result<(), Status> {
    let who = match req.extensions().get::<Caller>() {
        Some(Caller::Plaintext) => return Ok(()),
        Some(Caller::Verified(who)) => who,
        None => {
            return Err(status(
                Code::PermissionDenied,
                "permission denied: caller unknown",
            ));
        }
    };
    let default = CallerNames::default();
    let names = &req.extensions().get::<CallerNames>().unwrap_or(&default).0;
    let source = req.remote_addr().map(|a| a.ip().to_canonical());
    if names.contains_host(&underlay.to_string()) || source == Some(underlay.to_canonical()) {
        return Ok(());
    }
    let from = source.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    Err(status(
        Code::PermissionDenied,
        format!(
            "permission denied: {who} may not register underlay address {underlay}: it is neither an IP address of its certificate ({names}) nor the address it connects from ({from}); behind NAT, issue its certificate with --san {underlay}"
        ),
    ))
}

/// Where a call came from, for the record of a refusal ("" when unknown).
pub fn source<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.ip().to_canonical().to_string())
        .unwrap_or_default()
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
fn caller_of<B>(req: &http::Request<B>) -> Result<(PeerIdentity, CertNames), String> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .ok_or("unauthenticated: no client certificate")?;
    let leaf = certs.first().ok_or("unauthenticated: no client certificate")?;
    overlay_proto::tls::peer_of(leaf).map_err(|e| format!("unauthenticated: {e}"))
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
            Ok((who, names)) => match refusal(&who, req.uri().path()) {
                Some(why) => {
                    tracing::warn!(caller = %who, method = req.uri().path(), "call refused");
                    Some(status(Code::PermissionDenied, why))
                }
                None => {
                    req.extensions_mut().insert(Caller::Verified(who));
                    req.extensions_mut().insert(CallerNames(names));
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

    fn with_cert(role: Role, name: &str, ips: &[&str], dns: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller::Verified(who(role, name)));
        req.extensions_mut().insert(CallerNames(CertNames {
            ips: ips.iter().filter_map(|i| i.parse().ok()).collect(),
            dns: dns.iter().map(|d| d.to_string()).collect(),
        }));
        req
    }

    #[test]
    fn raft_callers_are_bound_to_member_addresses() {
        let members = vec![
            (1, "192.0.2.101:7400".to_string()),
            (2, "192.0.2.102:7400".to_string()),
            (3, "ctl3.example:7400".to_string()),
        ];
        let c1 = with_cert(Role::Controller, "c1", &["192.0.2.101"], &[]);
        let c3 = with_cert(Role::Controller, "c3", &[], &["ctl3.example"]);
        assert_eq!(member_refusal(&c1, &members, None), None);
        assert_eq!(member_refusal(&c1, &members, Some(1)), None);
        assert_eq!(member_refusal(&c3, &members, Some(3)), None);
        // Member 1's certificate claiming to be member 2, or a member that does not exist.
        let forged = member_refusal(&c1, &members, Some(2)).unwrap_or_default();
        assert!(
            forged.contains("may not speak for member 2") && forged.contains("192.0.2.102:7400"),
            "{forged}"
        );
        let ghost = member_refusal(&c1, &members, Some(9)).unwrap_or_default();
        assert!(ghost.contains("9 is not a member"), "{ghost}");
        // A controller certificate of the CA that names no member's address.
        let rogue = with_cert(Role::Controller, "c9", &["192.0.2.199"], &["ctl9.example"]);
        for claimed in [None, Some(1), Some(9)] {
            let why = member_refusal(&rogue, &members, claimed).unwrap_or_default();
            assert!(why.contains("is not a member of this cluster"), "{why}");
        }
        let bare = with_cert(Role::Controller, "c1", &[], &[]);
        assert!(member_refusal(&bare, &members, None).is_some());
        let mut plain = Request::new(());
        plain.extensions_mut().insert(Caller::Plaintext);
        assert_eq!(member_refusal(&plain, &members, Some(9)), None);
        assert!(member_refusal(&Request::new(()), &members, None).is_some());
    }

    #[test]
    fn an_agent_registers_its_own_underlay_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 4]));
        let h1 = with_cert(Role::Agent, "h1", &["192.0.2.11"], &[]);
        assert!(require_underlay(&h1, ip("192.0.2.11")).is_ok());
        let err = require_underlay(&h1, ip("192.0.2.12")).err();
        assert_eq!(err.as_ref().map(|s| s.code()), Some(Code::PermissionDenied));
        let msg = err.map(|s| s.message().to_string()).unwrap_or_default();
        assert!(msg.contains("192.0.2.12") && msg.contains("--san"), "{msg}");
        // No IP names and no known source: nothing to match.
        let bare = with_cert(Role::Agent, "h1", &[], &[]);
        assert!(require_underlay(&bare, ip("192.0.2.11")).is_err());
        let mut plain = Request::new(());
        plain.extensions_mut().insert(Caller::Plaintext);
        assert!(require_underlay(&plain, ip("192.0.2.12")).is_ok());
    }

    /// An IPv6 underlay is matched like an IPv4 one: against the certificate's IP names
    /// (whatever the spelling) and against the canonical source address.
    #[test]
    fn an_ipv6_underlay_is_matched_by_name_or_source() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 4]));
        let h1 = with_cert(Role::Agent, "h1", &["2001:db8::11"], &[]);
        assert!(require_underlay(&h1, ip("2001:db8:0:0::11")).is_ok());
        let msg = require_underlay(&h1, ip("2001:db8::12"))
            .err()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("2001:db8::12") && msg.contains("--san 2001:db8::12"),
            "{msg}"
        );
        // No IP names: the address it connects from decides, of either family; an IPv4 agent
        // on a dual-stack listener arrives as an IPv4-mapped source.
        let from = |source: &str| {
            let mut req = with_cert(Role::Agent, "h1", &[], &[]);
            req.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: source.parse().ok(),
            });
            req
        };
        assert!(require_underlay(&from("[2001:db8::11]:40000"), ip("2001:db8::11")).is_ok());
        assert!(require_underlay(&from("[::ffff:192.0.2.11]:40000"), ip("192.0.2.11")).is_ok());
        assert!(require_underlay(&from("192.0.2.11:40000"), ip("2001:db8::11")).is_err());
        let msg = require_underlay(&from("[2001:db8::11]:40000"), ip("2001:db8::12"))
            .err()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("connects from (2001:db8::11)"), "{msg}");
    }
}
