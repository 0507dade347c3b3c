//! What the plugin asks dockerd itself: the Docker plugin API never says which container an
//! endpoint belongs to, so its names (container name, `--network-alias`) come from the Engine
//! API on dockerd's own socket, once the container has joined. Read-only GETs, each bounded in
//! time and size; dockerd is root's daemon, but its answers are still checked before use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::attachments::Attachments;

/// Where dockerd serves its API on a standard install (`/var/run/docker.sock` links here).
pub const DEFAULT_SOCKET: &str = "/run/docker.sock";
/// One call, connect to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A network's or a container's inspect is a few kB; anything past this is not an answer.
const MAX_ANSWER: usize = 4 << 20;
/// How long after a Join the container may take to appear in dockerd's view, and how often
/// to look (dockerd lists it once the sandbox is set up, right after the Join returns).
const LOOK_FOR: Duration = Duration::from_secs(30);
const LOOK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("dockerd API {socket}: {why}")]
    Call { socket: String, why: String },
    #[error("dockerd API {path}: status {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
}

/// dockerd's Engine API on a unix socket.
#[derive(Clone, Debug)]
pub struct Engine {
    socket: PathBuf,
}

impl Engine {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// `GET path`, the answer as JSON.
    async fn get(&self, path: &str) -> Result<Value, EngineError> {
        let call = |why: String| EngineError::Call {
            socket: self.socket.display().to_string(),
            why,
        };
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| call(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| call(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let request = hyper::Request::get(path)
                .header(hyper::header::HOST, "docker")
                .body(Empty::<Bytes>::new())
                .map_err(|e| call(e.to_string()))?;
            let answer = sender.send_request(request).await;
            let result = match answer {
                Ok(response) => {
                    let status = response.status();
                    let body = Limited::new(response.into_body(), MAX_ANSWER)
                        .collect()
                        .await
                        .map_err(|e| call(format!("reading the answer: {e}")))?
                        .to_bytes();
                    Ok((status, body))
                }
                Err(e) => Err(call(e.to_string())),
            };
            driver.abort();
            result
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| call(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))??;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| call(format!("{path}: not JSON: {e}")))?;
        if !status.is_success() {
            return Err(EngineError::Status {
                path: path.to_string(),
                status: status.as_u16(),
                message: value["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }

    /// The docker networks of driver `overlay-net` as dockerd lists them (their inspect
    /// objects: Id, Name, Options, IPAM).
    pub async fn overlay_networks(&self) -> Result<Vec<Value>, EngineError> {
        // filters={"driver":{"overlay-net":true}}, URL-encoded.
        let listed = self
            .get("/networks?filters=%7B%22driver%22%3A%7B%22overlay-net%22%3Atrue%7D%7D")
            .await?;
        Ok(listed.as_array().cloned().unwrap_or_default())
    }

    /// The names of the container holding endpoint `endpoint_id` of docker network
    /// `network_id`, once dockerd lists it there (`None`: not yet).
    pub async fn names_of(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<Vec<String>>, EngineError> {
        // Ids come from dockerd's own request, but they go into a path: hex only.
        if !is_docker_id(network_id) || !is_docker_id(endpoint_id) {
            return Ok(None);
        }
        let network = self.get(&format!("/networks/{network_id}")).await?;
        let Some((container, _)) = network["Containers"].as_object().and_then(|c| {
            c.iter()
                .find(|(_, v)| v["EndpointID"].as_str() == Some(endpoint_id))
        }) else {
            return Ok(None);
        };
        if !is_docker_id(container) {
            return Ok(None);
        }
        let inspect = self.get(&format!("/containers/{container}/json")).await?;
        Ok(Some(names_in(&inspect, container, endpoint_id)))
    }
}

/// Docker's ids: 64 hex digits.
pub fn is_docker_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container's names on one of its networks: its name, then that network's aliases and DNS
/// names (Docker ≥ 25 lists the name there too), without the short container id Docker adds
/// (an id is no name to publish cluster-wide), without duplicates, each a valid DNS label,
/// at most [`overlay_proto::validate::MAX_ENDPOINT_NAMES`].
pub fn names_in(inspect: &Value, container: &str, endpoint_id: &str) -> Vec<String> {
    let name = inspect["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/');
    let on_network = inspect["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|n| n.values().find(|v| v["EndpointID"].as_str() == Some(endpoint_id)));
    let listed = |key: &str| -> Vec<String> {
        on_network
            .and_then(|v| v[key].as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<String> = Vec::new();
    for n in std::iter::once(name.to_string())
        .chain(listed("Aliases"))
        .chain(listed("DNSNames"))
    {
        let is_id = n.len() >= 12 && container.starts_with(n.as_str());
        if is_id || overlay_proto::validate::endpoint_name(&n).is_err() {
            continue;
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
            out.push(n);
        }
    }
    out.truncate(overlay_proto::validate::MAX_ENDPOINT_NAMES);
    out
}

/// After a Join: waits for dockerd to list the container on the network, then records its
/// names on the endpoint (the book, then the controller with the next sync). Gives up quietly
/// when the endpoint is gone first; logs when dockerd cannot be asked.
pub async fn learn_names(
    engine: Engine,
    attachments: Arc<Attachments>,
    network_id: String,
    endpoint_id: String,
) {
    let deadline = tokio::time::Instant::now() + LOOK_FOR;
    loop {
        if attachments.runtime_endpoint(&endpoint_id).is_none() {
            return;
        }
        match engine.names_of(&network_id, &endpoint_id).await {
            Ok(Some(names)) => {
                match attachments.set_runtime_names(&endpoint_id, names.clone()) {
                    Ok(()) => {
                        tracing::info!(endpoint = %short(&endpoint_id), ?names, "docker container names recorded")
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %short(&endpoint_id), error = %e.message, "docker container names not recorded")
                    }
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot learn a docker container's names: it is reachable by address only");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(endpoint = %short(&endpoint_id), "dockerd never listed the container of this endpoint; no names");
            return;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_the_container_name_and_aliases_without_the_id() {
        let container = "3f1c2a9b8d7e".to_string() + &"0".repeat(52);
        let inspect = json!({
            "Name": "/web",
            "NetworkSettings": {"Networks": {
                "other": {"EndpointID": "e2", "Aliases": ["nope"]},
                "blue": {
                    "EndpointID": "e1",
                    "Aliases": ["api", "3f1c2a9b8d7e", "WEB"],
                    "DNSNames": ["web", "api", "3f1c2a9b8d7e", "bad name", "-x"]
                }
            }}
        });
        assert_eq!(names_in(&inspect, &container, "e1"), vec!["web", "api"]);
        assert_eq!(names_in(&inspect, &container, "e9"), vec!["web"]);
        assert!(is_docker_id(&container) && !is_docker_id("../containers") && !is_docker_id("abc"));
    }
}
