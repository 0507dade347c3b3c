//! A test CA and its certificates, made the way an operator makes them: with
//! `overlayctl certs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use overlay_proto::tls::{Tls, TlsArgs};

use crate::{LabError, Result, bins};

/// The three files a component is started with.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// As `OVERLAY_TLS_*` environment variables.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("OVERLAY_TLS_CA", &self.ca),
            ("OVERLAY_TLS_CERT", &self.cert),
            ("OVERLAY_TLS_KEY", &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
    }

    /// As command-line options.
    pub fn args(&self) -> Vec<String> {
        [
            ("--tls-ca", &self.ca),
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v.display().to_string()])
        .collect()
    }

    /// Loaded, for an in-process client.
    pub fn load(&self) -> Result<Tls> {
        TlsArgs::files(self.ca.clone(), self.cert.clone(), self.key.clone())
            .load()
            .map_err(|e| LabError::Setup(e.to_string()))?
            .ok_or_else(|| LabError::Setup("no TLS files".into()))
    }
}

/// A CA in a directory.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Runs `overlayctl certs ca --dir DIR`.
    pub fn create(dir: &Path) -> Result<Self> {
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        pki.overlayctl(&["certs", "ca", "--dir", &dir.display().to_string()])?;
        Ok(pki)
    }

    /// Runs `overlayctl certs issue` (unless the files exist) and returns the files.
    pub fn issue(&self, role: &str, name: &str, sans: &[&str]) -> Result<CertFiles> {
        let files = CertFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{role}-{name}.pem")),
            key: self.dir.join(format!("{role}-{name}-key.pem")),
        };
        if files.cert.exists() && files.key.exists() {
            return Ok(files);
        }
        let dir = self.dir.display().to_string();
        let mut args = vec!["certs", "issue", "--dir", &dir, "--role", role, "--name", name];
        let san = sans.join(",");
        if !sans.is_empty() {
            args.extend(["--san", &san]);
        }
        self.overlayctl(&args)?;
        Ok(files)
    }

    /// The certificates issued so far, as `role name` (the CA excluded), sorted.
    pub fn issued(&self) -> Result<Vec<String>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(crate::io(format!("read {}", self.dir.display())))?;
        let mut issued: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let stem = name.strip_suffix(".pem")?;
                if stem == "ca" || stem.ends_with("-key") {
                    return None;
                }
                Some(stem.replacen('-', " ", 1))
            })
            .collect();
        issued.sort();
        Ok(issued)
    }

    fn overlayctl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(bins::bin("overlayctl")?)
            .args(args)
            .output()
            .map_err(crate::io("overlayctl certs"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("overlayctl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}
