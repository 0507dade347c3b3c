//! Why a command failed, in one type every noun returns, so the binary reports all the same way.

/// Why a command failed: exit code 1 and one line on stderr.
pub enum Failure {
    /// The cause, for the user.
    Message(String),
    /// The answer could not be written (a full disk; a closed pipe never gets here, see
    /// [`crate::output::ReaderGone`]).
    Output(std::io::Error),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Message(s.message().lines().next().unwrap_or("request failed").to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}
