//! Text forms shared by the controller, the agent and the CLI, so that every tool spells a
//! state the same way (modes: [`crate::modes`]).

use crate::v1::EndpointState;

/// Metadata key the controller sets on every status it produces itself. A status without it
/// came from the transport (connection refused, reset, h2 error): the client may try another
/// replica.
pub const SERVER_ERROR_KEY: &str = "x-overlay-error";

impl EndpointState {
    pub fn label(self) -> &'static str {
        match self {
            EndpointState::Pending => "pending",
            EndpointState::Ready => "ready",
            EndpointState::Failed => "failed",
            EndpointState::Gone => "gone",
            EndpointState::Requested => "requested",
            EndpointState::Unspecified => "unspecified",
        }
    }
}

/// Every device the agent creates starts with one of these, so a reconcile can tell its own
/// devices from the host's and remove what is no longer desired without touching anything else.
pub const BRIDGE_PREFIX: &str = "ovb-";
pub const VXLAN_PREFIX: &str = "ovx-";
pub const ENDPOINT_PREFIX: &str = "ovv-";
/// Temporary name of the peer end of a veth before it moves into the workload namespace.
pub const PEER_PREFIX: &str = "ovp-";
/// The workload end of a runtime-wired endpoint (Docker), waiting in the host namespace for
/// the runtime to move it into its sandbox.
pub const RUNTIME_PEER_PREFIX: &str = "ovr-";
