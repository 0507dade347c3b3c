//! CNI error results: `{"cniVersion", "code", "msg", "details"}` on stdout and a non-zero exit.

use serde::Serialize;

/// The spec's well-known codes, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot attach containers now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The network's address pool has no free address on this host.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The requested address (or interface) cannot be given to this container.
    pub const ADDRESS_REFUSED: u32 = 101;
    /// The agent refused the namespace or could not wire it.
    pub const WIRING_FAILED: u32 = 102;
    /// Any other failure the agent reported.
    pub const AGENT_ERROR: u32 = 103;
    /// A port mapping's host port is already published on this host.
    pub const PORT_IN_USE: u32 = 104;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error as the spec's JSON, in `version`.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"1.0.0\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }

    /// Maps a status from the agent onto the spec's codes.
    pub fn from_status(status: &tonic::Status) -> Self {
        use overlay_proto::local_socket::ErrorKind;
        let msg = status
            .message()
            .lines()
            .next()
            .unwrap_or("request failed")
            .to_string();
        let code = match ErrorKind::of(status) {
            Some(ErrorKind::BadRequest | ErrorKind::UnknownNetwork) => code::INVALID_NETWORK_CONFIG,
            Some(ErrorKind::UnknownEndpoint) => code::UNKNOWN_CONTAINER,
            Some(ErrorKind::PoolExhausted) => code::POOL_EXHAUSTED,
            Some(ErrorKind::AddressRefused) => code::ADDRESS_REFUSED,
            Some(ErrorKind::PortInUse) => code::PORT_IN_USE,
            Some(ErrorKind::NamespaceRefused | ErrorKind::WiringFailed) => code::WIRING_FAILED,
            Some(ErrorKind::NotReady) => code::TRY_AGAIN_LATER,
            Some(ErrorKind::Internal) => code::AGENT_ERROR,
            // Not from the agent's handlers: the connection broke or timed out.
            None => code::TRY_AGAIN_LATER,
        };
        Self::new(code, msg)
    }
}
