//! Mutual TLS between every component of overlay.
//!
//! One private CA (made by `overlayctl certs`) signs every certificate, and a certificate says
//! who holds it in its subject: the common name is the holder's name (an agent's is its host
//! name) and the organizational unit is its [`Role`]. TLS proves that the CA signed the
//! certificate; the controller then reads [`PeerIdentity`] from the verified client
//! certificate of each connection and decides from it what the caller may do.
//!
//! Every binary takes the same options ([`TlsArgs`]): the three files turn mutual TLS on;
//! plaintext needs `--insecure`, asked for by name, because a plaintext port makes anyone who
//! reaches it cluster admin. Neither, both, or only some of the files: refused at start.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Logs that a daemon runs on plaintext. Called once the daemon has started, so that a
/// configuration error stays the one line on stderr.
pub fn warn_insecure() {
    tracing::warn!(
        "running insecure (--insecure): plaintext, no peer authenticated; anyone who reaches \
         this component can read and forge its calls. Only on a trusted lab network"
    );
}

/// How long a server waits for a client to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a certificate's holder is, and so what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A replica: speaks Raft with the others and serves everyone.
    Controller,
    /// A node agent: may register, watch and report for its own host only.
    Agent,
    /// An operator: every call of the `Overlay` API.
    Admin,
    /// A monitoring user or script: the read-only calls of the `Overlay` API.
    Reader,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Controller, Role::Agent, Role::Admin, Role::Reader];

    /// The text in a certificate's organizational unit, and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.label() == label)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// The subject's common name: a host name for agents, a replica or person otherwise.
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "refusing to {0} without TLS: pass --tls-ca, --tls-cert and --tls-key (make them with \
         `overlayctl certs`), or --insecure on a trusted lab network"
    )]
    NotConfigured(Purpose),
    #[error(
        "--insecure (OVERLAY_INSECURE) contradicts {0} (OVERLAY_TLS_*): drop --insecure to run \
         on mutual TLS, or the TLS options to run on plaintext"
    )]
    Contradictory(&'static str),
    #[error("--tls-ca, --tls-cert and --tls-key go together: {0} is missing")]
    Incomplete(&'static str),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what}: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{path} is not valid now: {why}")]
    NotValidNow { path: PathBuf, why: String },
    #[error("this {component} needs a {expected} certificate, but {path} is for {found}")]
    WrongRole {
        component: &'static str,
        expected: Role,
        found: PeerIdentity,
        path: PathBuf,
    },
}

impl PeerIdentity {
    /// Reads role and name from a DER certificate's subject. Only for certificates the TLS
    /// layer has verified against the CA: this checks the subject, not the signature.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        Self::of(&parse_der(der)?)
    }

    fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Self, TlsError> {
        let bad = bad_peer;
        let subject = cert.subject();
        let single = |mut values: Vec<&str>, field: &str| match values.len() {
            1 => Ok(values.remove(0).to_string()),
            0 => Err(bad(format!("subject has no {field}"))),
            _ => Err(bad(format!("subject has {} {field} values", values.len()))),
        };
        // Every value counts: one in an encoding we cannot read must not vanish from the
        // "exactly one" check below.
        let names: Vec<&str> = subject
            .iter_common_name()
            .map(|a| {
                a.as_str()
                    .map_err(|e| bad(format!("unreadable common name: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let units: Vec<&str> = subject
            .iter_organizational_unit()
            .map(|a| {
                a.as_str()
                    .map_err(|e| bad(format!("unreadable organizational unit: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let name = single(names, "common name (CN)")?;
        let unit = single(units, "organizational unit (OU, the role)")?;
        let role = Role::from_label(&unit).ok_or_else(|| {
            bad(format!(
                "role (OU) {unit:?} is none of controller, agent, admin, reader"
            ))
        })?;
        if name.is_empty() {
            return Err(bad("empty common name".into()));
        }
        Ok(Self { role, name })
    }

    /// Reads the first certificate of a PEM file's contents.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, TlsError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| TlsError::BadCertificate {
            what: path.display().to_string(),
            reason: format!("no PEM certificate: {e}"),
        })?;
        Self::from_der(&block.contents).map_err(|e| match e {
            TlsError::BadCertificate { reason, .. } => TlsError::BadCertificate {
                what: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }
}

/// What a component is about to do with its [`TlsArgs`]: only changes how a refusal reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A daemon starting (controller, agent).
    Run,
    /// A client about to call a controller (overlayctl).
    Connect,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Run => "run",
            Purpose::Connect => "connect",
        })
    }
}

/// The names a certificate is valid for: its subject alternative names (what
/// `overlayctl certs issue --san` writes). A controller certificate's names bind it to a
/// member's address; an agent's IP names are the underlay addresses it may register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertNames {
    pub ips: Vec<std::net::IpAddr>,
    /// DNS names, lower case.
    pub dns: Vec<String>,
}

impl CertNames {
    /// Reads the subject alternative names of a DER certificate (none: empty lists). Like
    /// [`PeerIdentity::from_der`], only for certificates TLS has verified.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        Self::of(&parse_der(der)?)
    }

    fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Self, TlsError> {
        use x509_parser::extensions::GeneralName;
        let bad = bad_peer;
        let mut names = Self::default();
        let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("unreadable subject alternative names: {e}")))?
        else {
            return Ok(names);
        };
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.ips.push(std::net::IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    16 => names.ips.push(std::net::IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    n => return Err(bad(format!("IP address name of {n} bytes"))),
                },
                // Other kinds (e-mail, URI ...) name nothing overlay dials.
                _ => {}
            }
        }
        Ok(names)
    }

    /// Whether `host` (an IP address, or a DNS name matched as TLS does, with a wildcard
    /// allowed in the leftmost label) is one of these names.
    pub fn contains_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return self.ips.iter().any(|i| i.to_canonical() == ip.to_canonical());
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.dns.iter().any(|name| match name.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *name == host,
        })
    }
}

impl fmt::Display for CertNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ips.is_empty() && self.dns.is_empty() {
            return f.write_str("no subject alternative names");
        }
        let all: Vec<String> = self
            .ips
            .iter()
            .map(ToString::to_string)
            .chain(self.dns.iter().cloned())
            .collect();
        f.write_str(&all.join(", "))
    }
}

/// Who a verified peer certificate names, and the names it is valid for, from one parse.
pub fn peer_of(der: &[u8]) -> Result<(PeerIdentity, CertNames), TlsError> {
    let cert = parse_der(der)?;
    Ok((PeerIdentity::of(&cert)?, CertNames::of(&cert)?))
}

fn bad_peer(reason: String) -> TlsError {
    TlsError::BadCertificate {
        what: "peer certificate".into(),
        reason,
    }
}

fn parse_der(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, TlsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| bad_peer(format!("not X.509: {e}")))
}

/// The host part of a `host:port` address (`[v6]:port`, a scheme in front tolerated).
pub fn address_host(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => rest,
    }
}

/// The TLS options every overlay binary takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed every overlay certificate. With --tls-cert and
    /// --tls-key it turns on mutual TLS; plaintext peers are then refused.
    #[arg(long, global = true, env = "OVERLAY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This component's certificate (PEM, signed by --tls-ca; made by `overlayctl certs`).
    #[arg(long, global = true, env = "OVERLAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "OVERLAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Run on plaintext, without TLS: no peer is authenticated, anyone who reaches a port can
    /// read and forge everything. Only on a trusted lab network; refused with --tls-*.
    #[arg(
        long,
        global = true,
        env = "OVERLAY_INSECURE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    pub insecure: bool,
}

impl TlsArgs {
    /// Mutual TLS from these three files (for a client built in code).
    pub fn files(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            tls_ca: Some(ca),
            tls_cert: Some(cert),
            tls_key: Some(key),
            insecure: false,
        }
    }

    /// Plaintext, asked for (for a client built in code).
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// A daemon's TLS at start ([`Purpose::Run`]); see [`load_for`](Self::load_for).
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        self.load_for(Purpose::Run)
    }

    /// Reads the three files; `None` only when plaintext was asked for with `--insecure` (the
    /// daemon says so with [`warn_insecure`] once it has started). No option at all, or `--insecure` with any TLS option, is
    /// refused: both are more likely a mistake in a unit or an environment than a choice.
    pub fn load_for(&self, purpose: Purpose) -> Result<Option<Tls>, TlsError> {
        let given = [
            ("--tls-ca", self.tls_ca.is_some()),
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        match (self.insecure, given) {
            (true, Some(option)) => return Err(TlsError::Contradictory(option)),
            (true, None) => return Ok(None),
            (false, None) => return Err(TlsError::NotConfigured(purpose)),
            (false, Some(_)) => {}
        }
        let (ca, cert, key) = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, _, _) => return Err(TlsError::Incomplete("--tls-ca")),
            (_, None, _) => return Err(TlsError::Incomplete("--tls-cert")),
            (_, _, None) => return Err(TlsError::Incomplete("--tls-key")),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        let ca_pem = read(ca)?;
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        // The CA must parse too: a wrong file here would otherwise surface as a handshake
        // failure on the first connection, far from its cause.
        x509_parser::pem::parse_x509_pem(&ca_pem).map_err(|e| TlsError::BadCertificate {
            what: ca.display().to_string(),
            reason: format!("no PEM certificate: {e}"),
        })?;
        let identity = PeerIdentity::from_pem(&cert_pem, cert)?;
        let not_after = validity_end(&cert_pem, cert)?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(TlsError::BadCertificate {
                what: key.display().to_string(),
                reason: "no PEM private key".into(),
            });
        }
        Ok(Some(Tls {
            ca_pem,
            cert_pem,
            key_pem,
            cert_path: cert.clone(),
            identity,
            not_after,
        }))
    }
}

/// The end of a PEM certificate's validity (Unix seconds); refuses one that is not valid now,
/// which would otherwise fail every handshake with a less direct message.
fn validity_end(pem: &[u8], path: &Path) -> Result<i64, TlsError> {
    let not_valid = |why: String| TlsError::NotValidNow {
        path: path.to_path_buf(),
        why,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| not_valid(format!("no PEM certificate: {e}")))?;
    let cert = block
        .parse_x509()
        .map_err(|e| not_valid(format!("not X.509: {e}")))?;
    let validity = cert.validity();
    let now = unix_now();
    if now < validity.not_before.timestamp() {
        return Err(not_valid(format!(
            "valid only from {} (is this machine's clock right?)",
            validity.not_before
        )));
    }
    if now > validity.not_after.timestamp() {
        return Err(not_valid(format!(
            "expired {}; issue a new one with `overlayctl certs issue --force`",
            validity.not_after
        )));
    }
    let days_left = (validity.not_after.timestamp() - now) / 86400;
    if days_left < 30 {
        tracing::warn!(cert = %path.display(), days_left, "TLS certificate expires soon; reissue it");
    }
    Ok(validity.not_after.timestamp())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A component's loaded TLS material and the identity its own certificate gives it.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    cert_path: PathBuf,
    pub identity: PeerIdentity,
    /// When our certificate expires (Unix seconds).
    pub not_after: i64,
}

impl fmt::Debug for Tls {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Exposes the certificate's expiry as `<prefix>_tls_certificate_expiry_timestamp_seconds`
    /// (alert on `... - time() < 30 * 86400`).
    pub fn register_expiry(&self, registry: &mut prometheus_client::registry::Registry) {
        let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        gauge.set(self.not_after);
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this component's TLS certificate expires (Unix time)",
            gauge,
        );
    }

    /// Refuses to start a component with another role's certificate (an agent with an admin
    /// certificate would be refused by the controller on every call, far from the cause).
    pub fn require_role(&self, component: &'static str, expected: Role) -> Result<(), TlsError> {
        if self.identity.role == expected {
            return Ok(());
        }
        Err(TlsError::WrongRole {
            component,
            expected,
            found: self.identity.clone(),
            path: self.cert_path.clone(),
        })
    }

    /// Server side: present our certificate, and require one signed by the CA from every
    /// client (no client certificate, no connection).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            // Without a bound, a client that connects and never finishes its handshake holds
            // a task and a socket forever.
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Client side: trust only our CA, and present our certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with(fields: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        // rcgen's default subject carries a CN of its own.
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in fields {
            params.distinguished_name.push(t.clone(), *v);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn identity_comes_from_cn_and_ou_only_when_unambiguous() {
        let ok = cert_with(&[
            (DnType::CommonName, "h1"),
            (DnType::OrganizationalUnitName, "agent"),
        ]);
        assert_eq!(
            PeerIdentity::from_der(&ok).ok(),
            Some(PeerIdentity {
                role: Role::Agent,
                name: "h1".into()
            })
        );
        let refused = [
            cert_with(&[(DnType::CommonName, "h1")]),
            cert_with(&[(DnType::OrganizationalUnitName, "admin")]),
            cert_with(&[
                (DnType::CommonName, "h1"),
                (DnType::OrganizationalUnitName, "root"),
            ]),
            cert_with(&[
                (DnType::CommonName, ""),
                (DnType::OrganizationalUnitName, "admin"),
            ]),
            b"not a certificate".to_vec(),
        ];
        for der in refused {
            assert!(PeerIdentity::from_der(&der).is_err());
        }
    }

    #[test]
    fn a_second_role_in_an_unreadable_encoding_is_not_overlooked() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "h1");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "agent");
        let teletex =
            rcgen::DnValue::TeletexString(rcgen::string::TeletexString::try_from("admin").expect("teletex"));
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 11]), teletex);
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        assert!(PeerIdentity::from_der(&der).is_err());
    }

    #[test]
    fn certificates_outside_their_validity_are_refused_at_start() {
        let key = KeyPair::generate().expect("key");
        let pem_for = |from: (i32, u8), to: (i32, u8)| {
            let mut params = CertificateParams::default();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, 1);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, 1);
            params.self_signed(&key).expect("cert").pem()
        };
        let path = Path::new("c.pem");
        let expired = validity_end(pem_for((2000, 1), (2001, 1)).as_bytes(), path);
        assert!(matches!(&expired, Err(TlsError::NotValidNow { why, .. }) if why.contains("expired")));
        let future = validity_end(pem_for((2100, 1), (2101, 1)).as_bytes(), path);
        assert!(matches!(&future, Err(TlsError::NotValidNow { why, .. }) if why.contains("clock")));
        let current = validity_end(pem_for((2000, 1), (4000, 1)).as_bytes(), path);
        assert_eq!(
            current.ok(),
            Some(rcgen::date_time_ymd(4000, 1, 1).unix_timestamp())
        );
    }

    #[test]
    fn certificate_names_come_from_the_subject_alternative_names() {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![
            "192.0.2.10".to_string(),
            "Ctl1.Example".to_string(),
            "*.ctl.example".to_string(),
            "2001:db8::1".to_string(),
        ])
        .expect("params");
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        let names = CertNames::from_der(&der).expect("names");
        assert_eq!(names.ips.len(), 2, "{names}");
        for host in [
            "192.0.2.10",
            "ctl1.example",
            "CTL1.example.",
            "c3.ctl.example",
            "[2001:db8::1]",
        ] {
            assert!(names.contains_host(host), "{host} not in {names}");
        }
        for host in [
            "192.0.2.11",
            "ctl2.example",
            "a.b.ctl.example",
            "ctl.example",
            "",
            "::ffff:192.0.2.11",
        ] {
            assert!(!names.contains_host(host), "{host} in {names}");
        }
        let bare = CertificateParams::default().self_signed(&key).expect("cert");
        assert_eq!(CertNames::from_der(bare.der()).ok(), Some(CertNames::default()));
    }

    #[test]
    fn address_hosts() {
        for (addr, host) in [
            ("192.0.2.10:7400", "192.0.2.10"),
            ("https://ctl1.example:7400", "ctl1.example"),
            ("[2001:db8::1]:7400", "2001:db8::1"),
            ("ctl1", "ctl1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            assert_eq!(address_host(addr), host, "{addr}");
        }
    }

    #[test]
    fn tls_options_are_all_or_nothing() {
        let partial = TlsArgs {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..TlsArgs::default()
        };
        assert!(matches!(partial.load(), Err(TlsError::Incomplete("--tls-cert"))));
        let missing = TlsArgs::files(
            "/nonexistent/ca.pem".into(),
            "/nonexistent/c.pem".into(),
            "/nonexistent/k.pem".into(),
        );
        assert!(matches!(missing.load(), Err(TlsError::Read { .. })));
    }

    #[test]
    fn plaintext_only_when_asked_for_and_never_with_tls_options() {
        assert!(matches!(TlsArgs::insecure().load(), Ok(None)));
        let refused = TlsArgs::default().load().map(|_| ()).unwrap_err().to_string();
        for way_out in [
            "--tls-ca, --tls-cert and --tls-key",
            "overlayctl certs",
            "--insecure",
        ] {
            assert!(refused.contains(way_out), "{refused:?} lacks {way_out:?}");
        }
        assert!(refused.starts_with("refusing to run without TLS"), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
        let client = TlsArgs::default().load_for(Purpose::Connect).map(|_| ());
        assert!(matches!(client, Err(TlsError::NotConfigured(Purpose::Connect))));
        // Any TLS option with --insecure: the operator wanted one or the other, not a guess.
        for (i, option) in ["--tls-ca", "--tls-cert", "--tls-key"].into_iter().enumerate() {
            let mut args = TlsArgs::insecure();
            let file = Some(PathBuf::from("/nonexistent/x.pem"));
            match i {
                0 => args.tls_ca = file,
                1 => args.tls_cert = file,
                _ => args.tls_key = file,
            }
            let result = args.load().map(|_| ());
            assert!(
                matches!(result, Err(TlsError::Contradictory(o)) if o == option),
                "{option}: {result:?}"
            );
        }
        let mut both = TlsArgs::files(
            "/nonexistent/ca.pem".into(),
            "/nonexistent/c.pem".into(),
            "/nonexistent/k.pem".into(),
        );
        both.insecure = true;
        assert!(matches!(both.load(), Err(TlsError::Contradictory("--tls-ca"))));
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    #[test]
    fn insecure_is_a_flag_without_a_value() {
        use clap::Parser;
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.tls.insecure);
        assert!(!parse(&["x"]).expect("no option"));
        assert!(parse(&["x", "--insecure"]).expect("flag"));
        // Not `--insecure=false` or `--insecure no`: a value would read as the opposite.
        assert!(parse(&["x", "--insecure=false"]).is_err());
        assert!(parse(&["x", "--insecure", "no"]).is_err());
    }
}
