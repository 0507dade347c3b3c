//! The `CNI_*` environment a runtime passes, checked before anything is sent to the agent.

use std::collections::BTreeMap;

use crate::error::{CniError, code};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "" => return Err(CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "unknown CNI_COMMAND {other:?} (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
                    ),
                ));
            }
        })
    }
}

/// What one invocation is about. For VERSION, STATUS and GC only `command` is meaningful.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime gave none (allowed for DEL).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// The endpoint's key on the agent: unique per container interface, stable across retries.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    /// Reads the invocation from `get` (the process environment, or a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let var = |name: &str| get(name).unwrap_or_default();
        let command = Command::parse(&var("CNI_COMMAND"))?;
        let mut inv = Invocation {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_args(&var("CNI_ARGS"))?,
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            container_id(&inv.container_id)?;
            if inv.ifname.is_empty() {
                return Err(CniError::new(code::INVALID_ENVIRONMENT, "CNI_IFNAME is not set"));
            }
            overlay_proto::validate::ifname(&inv.ifname).map_err(|r| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_IFNAME {:?} {r}", inv.ifname),
                )
            })?;
            if command != Command::Del {
                netns_path(&inv.netns)?;
            } else if !inv.netns.is_empty() && netns_path(&inv.netns).is_err() {
                // DEL cleans up by key; a namespace it cannot use is not needed.
                inv.netns.clear();
            }
        }
        Ok(inv)
    }
}

/// The spec: alphanumeric first, then alphanumerics, '_', '.' or '-'.
fn container_id(id: &str) -> Result<(), CniError> {
    let bad = |why: &str| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_CONTAINERID {id:?} {why}"));
    if id.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_CONTAINERID is not set",
        ));
    }
    if id.len() > 256 {
        return Err(bad("is longer than 256 characters"));
    }
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad(
            "must start with a letter or digit and hold only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

/// CNI_NETNS must be an absolute path; the agent checks it is a real network namespace.
fn netns_path(path: &str) -> Result<(), CniError> {
    if path.is_empty() {
        return Err(CniError::new(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"));
    }
    if !path.starts_with('/') {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {path:?} is not an absolute path"),
        ));
    }
    overlay_proto::validate::netns(path)
        .map_err(|r| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS {path:?}: {r}")))
}

/// `K1=V1;K2=V2`. Empty parts are skipped; a part without '=' is an error.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS part {part:?} is not KEY=VALUE"),
            )
        })?;
        args.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_pairs() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web-0; IP=10.1.0.7 ;").unwrap();
        assert_eq!(a["K8S_POD_NAME"], "web-0");
        assert_eq!(a["IP"], "10.1.0.7");
        assert!(parse_args("novalue").is_err());
        assert!(parse_args("").unwrap().is_empty());
    }

    #[test]
    fn del_without_a_usable_namespace_still_runs() {
        let env = |netns: &'static str| {
            move |k: &str| {
                Some(
                    match k {
                        "CNI_COMMAND" => "DEL",
                        "CNI_CONTAINERID" => "abc",
                        "CNI_IFNAME" => "eth0",
                        "CNI_NETNS" => netns,
                        _ => return None,
                    }
                    .to_string(),
                )
            }
        };
        let inv = Invocation::from_env(env("")).unwrap();
        assert_eq!(inv.key(), "abc/eth0");
        assert_eq!(Invocation::from_env(env("relative")).unwrap().netns, "");
    }
}
