//! The SDK's error type.

use std::sync::Arc;
use std::time::Duration;

use weir_proto::v1::ErrorCode;

/// What went wrong with a request. Cheap to clone, so one failure can complete every
/// record of a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be made to the server.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The address that was tried.
        addr: String,
        /// Why the connection failed.
        error: Arc<std::io::Error>,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(Arc<std::io::Error>),
    /// The connection ended while the request was pending. The next request reconnects.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The peer broke the protocol (bad frame, unexpected response, undecodable body).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error status.
    #[error("server error {}: {message}", code.as_str_name())]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// No response arrived in time. The request may still have taken effect.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The producer, consumer or client was closed by the application.
    #[error("closed")]
    Closed,
    /// The caller passed a value the SDK or the server's limits do not allow.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A push consumer's handler returned an error.
    #[error("handler failed: {0}")]
    Handler(Arc<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// Whether trying the same request again (maybe after a pause or a metadata refresh)
    /// can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io(_)
            | ClientError::Disconnected(_)
            | ClientError::Timeout(_) => true,
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::TooManyInflightRequests
                    | ErrorCode::TooManyConnections
                    | ErrorCode::UnknownPartition
                    | ErrorCode::RequestTimedOut
                    | ErrorCode::ShuttingDown
                    | ErrorCode::NotLeader
            ),
            ClientError::Protocol(_)
            | ClientError::Closed
            | ClientError::InvalidArgument(_)
            | ClientError::Handler(_) => false,
        }
    }

    /// The server's error code, if this is a server error.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn server(status: &weir_proto::v1::Status) -> Self {
        ClientError::Server {
            code: status.error_code(),
            message: status.message.clone(),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

/// Result with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Turns a status into `Ok(())` or the matching [`ClientError::Server`].
pub(crate) fn check(status: Option<&weir_proto::v1::Status>) -> Result<()> {
    match status {
        Some(s) if !s.is_ok() => Err(ClientError::server(s)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_classification() {
        let server = |code| ClientError::Server {
            code,
            message: String::new(),
        };
        assert!(server(ErrorCode::NotLeader).is_retriable());
        assert!(server(ErrorCode::UnknownPartition).is_retriable());
        assert!(!server(ErrorCode::UnknownTopic).is_retriable());
        assert!(!server(ErrorCode::CorruptBatch).is_retriable());
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_retriable());
        assert!(!ClientError::Closed.is_retriable());
        assert_eq!(
            server(ErrorCode::UnknownTopic).to_string(),
            "server error UNKNOWN_TOPIC: "
        );
    }
}
