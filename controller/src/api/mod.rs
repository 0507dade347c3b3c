//! The gRPC services a replica serves on its one listen address:
//! [`overlay::OverlayApi`] (CLI), [`agent::AgentApi`] (node agents) and
//! [`raft::RaftApi`] (other replicas).

pub mod agent;
pub mod convert;
pub mod overlay;
pub mod parse;
pub mod raft;

use overlay_proto::names::SERVER_ERROR_KEY;
use tonic::{Code, Status};

use crate::node::NodeError;
use crate::state::{ErrorKind, StateError};

/// A status produced by the controller itself (tagged, so clients do not mistake it for a
/// transport failure and retry elsewhere).
pub fn status(code: Code, message: impl Into<String>) -> Status {
    let mut s = Status::new(code, message.into());
    s.metadata_mut()
        .insert(SERVER_ERROR_KEY, tonic::metadata::MetadataValue::from_static("1"));
    s
}

pub fn invalid(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, message)
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        let code = match e.kind() {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
        };
        status(code, e.to_string())
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let code = match e {
            NodeError::NoQuorum(..) | NodeError::NoLeader(_) | NodeError::Fatal(_) => Code::Unavailable,
            NodeError::Internal(_) => Code::Internal,
            NodeError::Refused(_) => Code::FailedPrecondition,
        };
        status(code, e.to_string())
    }
}
