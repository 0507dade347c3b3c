//! Calling overlay-cni as a container runtime does: `CNI_*` in the environment, the network
//! configuration on stdin, the answer (a result or a spec error object) on stdout.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::{Result, bins};

/// One plugin's configuration, as a runtime hands it over from a conflist.
pub fn plugin_conf(network: &str, socket: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "overlay-cni",
        "agentSocket": socket,
        "capabilities": {"portMappings": true, "aliases": true},
    })
}

/// The conflist shipped in `deploy/cni/` for network `blue`, with `agentSocket` pointed at
/// `socket` and `name` set to `network`: the lab's podman runs on the file operators install.
pub fn conflist(network: &str, socket: &Path) -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-overlay-blue.conflist");
    let text = std::fs::read_to_string(&path).map_err(crate::io("read deploy/cni conflist"))?;
    let mut list: Value = serde_json::from_str(&text)
        .map_err(|e| crate::LabError::Setup(format!("{}: {e}", path.display())))?;
    list["name"] = json!(network);
    match list["plugins"].get_mut(0) {
        Some(plugin) => plugin["agentSocket"] = json!(socket),
        None => return Err(crate::LabError::Setup(format!("{}: no plugins", path.display()))),
    }
    Ok(list)
}

/// What one invocation answered.
#[derive(Debug)]
pub struct Answer {
    pub ok: bool,
    /// stdout as JSON (`Null` when empty or not JSON).
    pub json: Value,
    pub stdout: String,
}

impl Answer {
    /// The spec error code (0 for success).
    pub fn code(&self) -> u64 {
        if self.ok {
            0
        } else {
            self.json["code"].as_u64().unwrap_or(0)
        }
    }
}

/// Runs `overlay-cni` with `command` for container `container` / `ifname` in `netns`,
/// `conf` on stdin; `args` is `CNI_ARGS`.
pub fn invoke(
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    args: &str,
    conf: &Value,
) -> Result<Answer> {
    let bin = bins::bin("overlay-cni")?;
    let mut child = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(crate::io("spawn overlay-cni"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(crate::io("wait for overlay-cni"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Ok(Answer {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
    })
}

/// A directory holding `overlay-cni` (a link to the built binary), for a runtime's plugin path.
pub fn plugin_dir(dir: &Path) -> Result<std::path::PathBuf> {
    let plugins = dir.join("cni-bin");
    std::fs::create_dir_all(&plugins).map_err(crate::io("mkdir cni-bin"))?;
    let link = plugins.join("overlay-cni");
    if !link.exists() {
        std::os::unix::fs::symlink(bins::bin("overlay-cni")?, &link)
            .map_err(crate::io("link overlay-cni"))?;
    }
    Ok(plugins)
}
