//! `overlayctl certs`: the cluster CA and its members' certificates, made from local files
//! only ([`crate::certs`] does the cryptography), so it works before any controller runs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use overlay_proto::tls::Role;
use serde_json::json;

use crate::certs::{self, Shown};
use crate::failure::Failure;
use crate::output::{Out, or_dash, table};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca-key.pem (keep the key offline).
    Ca {
        /// Directory to write to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by DIR's CA: DIR/ROLE-NAME.pem and DIR/ROLE-NAME-key.pem.
    Issue {
        /// controller (Raft peer and server), agent (its own host only), admin (every call),
        /// reader (read-only calls).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The holder: an agent's host name, a replica's or a person's name.
        #[arg(long)]
        name: String,
        /// Addresses and DNS names the holder is dialled by (controllers): repeat or
        /// comma-separate.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// Directory holding ca.pem and ca-key.pem, and where the files go.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show whom a certificate names: role, name, addresses, expiry.
    Show { file: PathBuf },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Controller,
    Agent,
    Admin,
    Reader,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Controller => Role::Controller,
            RoleArg::Agent => Role::Agent,
            RoleArg::Admin => Role::Admin,
            RoleArg::Reader => Role::Reader,
        }
    }
}

/// Local files only: needs no controller, and none of the TLS files it makes.
pub fn run(out: &mut Out, cmd: CertsCmd) -> Result<(), Failure> {
    let fail = |e: certs::CertError| Failure::Message(e.to_string());
    match cmd {
        CertsCmd::Ca { dir, days } => {
            let pair = certs::new_ca(days).map_err(fail)?;
            let (cert, key) = (dir.join(certs::CA_CERT), dir.join(certs::CA_KEY));
            certs::write(&pair, &cert, &key, false).map_err(fail)?;
            print_written(out, "ca", "overlay cluster CA", &cert, &key)?;
        }
        CertsCmd::Issue {
            role,
            name,
            san,
            dir,
            days,
            force,
        } => {
            let role = Role::from(role);
            let ca = certs::read_ca(&dir).map_err(fail)?;
            let pair = certs::issue(&ca, role, &name, &san, days).map_err(fail)?;
            let (cert, key) = certs::paths(&dir, role, &name);
            certs::write(&pair, &cert, &key, force).map_err(fail)?;
            print_written(out, role.label(), &name, &cert, &key)?;
        }
        CertsCmd::Show { file } => {
            let shown = certs::show(&file).map_err(fail)?;
            print_shown(out, &shown)?;
        }
    }
    Ok(())
}

fn print_written(out: &mut Out, role: &str, name: &str, cert: &Path, key: &Path) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json!({
            "role": role,
            "name": name,
            "cert": cert.display().to_string(),
            "key": key.display().to_string(),
        }));
    }
    writeln!(
        out,
        "wrote {} and {} ({role} {name:?})",
        cert.display(),
        key.display()
    )?;
    Ok(())
}

fn print_shown(out: &mut Out, s: &Shown) -> io::Result<()> {
    let (role, name) = match &s.identity {
        Some(id) => (id.role.label().to_string(), id.name.clone()),
        None => ("-".to_string(), "-".to_string()),
    };
    if out.json() {
        return out.print_json(&json!({
            "role": s.identity.as_ref().map(|i| i.role.label()),
            "name": s.identity.as_ref().map(|i| i.name.clone()),
            "subject": s.subject,
            "issuer": s.issuer,
            "sans": s.sans,
            "not_after": s.not_after,
        }));
    }
    let rows = vec![
        vec!["role".to_string(), role],
        vec!["name".to_string(), name],
        vec!["subject".to_string(), s.subject.clone()],
        vec!["issuer".to_string(), s.issuer.clone()],
        vec!["addresses".to_string(), or_dash(&s.sans.join(", "))],
        vec!["expires".to_string(), s.not_after.clone()],
    ];
    table(out, &["FIELD", "VALUE"], rows)?;
    Ok(())
}
