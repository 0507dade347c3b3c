//! `overlayctl certs`: a cluster CA and the certificates of its members, without openssl.
//!
//! Every certificate names its holder in the subject, as [`overlay_proto::tls`] reads it back:
//! CN = name (an agent's host name), OU = role. Controllers get `serverAuth` and `clientAuth`
//! (they serve, and dial each other); everyone else only `clientAuth`, so an agent's or an
//! operator's certificate can never pass for a controller's. Keys are ECDSA P-256, written
//! with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use overlay_proto::tls::{PeerIdentity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} exists; refusing to overwrite it (remove it first, or pass --force)")]
    Exists(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("invalid name {0:?}: use 1 to 64 letters, digits, '.', '-' or '_'")]
    Name(String),
    #[error("invalid --san {0:?}: not an IP address or DNS name")]
    San(String),
    #[error(
        "a controller certificate needs --san: every address or DNS name agents, overlayctl and the other replicas dial it by"
    )]
    NoSan,
    #[error("--days must be 1 to 36500")]
    Days,
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A PEM certificate and its PEM private key.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Names become file names and certificate subjects: keep them plain.
fn check_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(CertError::Name(name.to_string()))
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if !(1..=36500).contains(&days) {
        return Err(CertError::Days);
    }
    let now = OffsetDateTime::now_utc();
    // A little slack before now for clocks that lag the one issuing.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

fn ca_params(days: u32) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "overlay");
    params
        .distinguished_name
        .push(DnType::CommonName, "overlay cluster CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days)?;
    Ok(params)
}

/// A new self-signed CA.
pub fn new_ca(days: u32) -> Result<Pair, CertError> {
    let params = ca_params(days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `role` `name`, signed by the CA given as PEM.
pub fn issue(ca: &Pair, role: Role, name: &str, sans: &[String], days: u32) -> Result<Pair, CertError> {
    check_name(name)?;
    if role == Role::Controller && sans.is_empty() {
        return Err(CertError::NoSan);
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "overlay");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.label());
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if is_dns_name(s) => s
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| CertError::San(s.clone())),
            Err(_) => Err(CertError::San(s.clone())),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Controller => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A host name as TLS clients match it: dot-separated labels of letters, digits and '-'.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Where `issue` writes a holder's files: `<dir>/<role>-<name>.pem` and `...-key.pem`.
pub fn paths(dir: &Path, role: Role, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{role}-{name}.pem")),
        dir.join(format!("{role}-{name}-key.pem")),
    )
}

pub fn read_ca(dir: &Path) -> Result<Pair, CertError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| CertError::Read { path, source })
    };
    Ok(Pair {
        cert_pem: read(CA_CERT)?,
        key_pem: read(CA_KEY)?,
    })
}

/// Writes `pair` to `cert`/`key`; the key only readable by its owner. Both are written to
/// temporary files first and then put in place, so a failure never leaves a new key beside an
/// old certificate. Without `force`, an existing file is never replaced (not even one created
/// while this runs: the final step is a hard link, which refuses to replace).
pub fn write(pair: &Pair, cert: &Path, key: &Path, force: bool) -> Result<(), CertError> {
    if !force {
        for path in [cert, key] {
            if path.exists() {
                return Err(CertError::Exists(path.to_path_buf()));
            }
        }
    }
    if let Some(dir) = cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let staged = [
        (stage(key, &pair.key_pem, 0o600)?, key),
        (stage(cert, &pair.cert_pem, 0o644)?, cert),
    ];
    let mut result = Ok(());
    for (tmp, path) in &staged {
        if result.is_ok() {
            result = place(tmp, path, force);
        }
    }
    for (tmp, _) in &staged {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// `path` + `.tmp`, written fresh with `mode` (set at creation: never readable by others).
fn stage(path: &Path, text: &str, mode: u32) -> Result<PathBuf, CertError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |source| CertError::Write {
        path: tmp.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(tmp)
}

fn place(tmp: &Path, path: &Path, force: bool) -> Result<(), CertError> {
    let placed = if force {
        std::fs::rename(tmp, path)
    } else {
        std::fs::hard_link(tmp, path)
    };
    placed.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
        _ => CertError::Write {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// What a certificate file says: who it names, what it is valid for, and until when.
pub struct Shown {
    pub identity: Option<PeerIdentity>,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_after: String,
}

pub fn show(path: &Path) -> Result<Shown, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| CertError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&bytes).map_err(|e| bad(format!("no PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(b) => ip_text(b),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Shown {
        identity: PeerIdentity::from_der(&pem.contents).ok(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_after: cert.validity().not_after.to_string(),
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
            std::net::Ipv4Addr::from(b).to_string()
        }
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => format!("{bytes:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_and_role() -> Result<(), Box<dyn std::error::Error>> {
        let ca = new_ca(30)?;
        for role in Role::ALL {
            let sans = vec!["192.0.2.10".to_string(), "ctl1.example".to_string()];
            let pair = issue(&ca, role, "h1", &sans, 30)?;
            let id = PeerIdentity::from_pem(pair.cert_pem.as_bytes(), Path::new("test"))?;
            assert_eq!(
                id,
                PeerIdentity {
                    role,
                    name: "h1".into()
                }
            );
        }
        Ok(())
    }

    #[test]
    fn bad_requests_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = new_ca(30)?;
        for name in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(
                matches!(issue(&ca, Role::Agent, name, &[], 30), Err(CertError::Name(_))),
                "{name:?}"
            );
        }
        assert!(matches!(
            issue(&ca, Role::Controller, "c1", &[], 30),
            Err(CertError::NoSan)
        ));
        let bad_san = vec!["not a name!".to_string()];
        assert!(matches!(
            issue(&ca, Role::Agent, "h1", &bad_san, 30),
            Err(CertError::San(_))
        ));
        assert!(matches!(
            issue(&ca, Role::Agent, "h1", &[], 0),
            Err(CertError::Days)
        ));
        Ok(())
    }

    #[test]
    fn keys_are_private_and_files_not_overwritten() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let ca = new_ca(30)?;
        let (cert, key) = (dir.path().join(CA_CERT), dir.path().join(CA_KEY));
        write(&ca, &cert, &key, false)?;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        assert!(matches!(
            write(&ca, &cert, &key, false),
            Err(CertError::Exists(_))
        ));
        let again = read_ca(dir.path())?;
        assert_eq!(again.cert_pem, ca.cert_pem);
        let shown = show(&cert)?;
        assert!(shown.subject.contains("overlay cluster CA"), "{}", shown.subject);
        assert!(shown.identity.is_none(), "a CA is nobody's identity");
        Ok(())
    }
}
