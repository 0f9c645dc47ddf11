//! Error kinds → exit codes and one-line messages (the table is in `weir --help`).

use weir_client::{ClientError, v1::ErrorCode};

/// Exit codes; see `EXIT_CODES` in `args.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Unexpected: server or protocol failure.
    Failure = 1,
    /// Bad flags, values or server configuration.
    Usage = 2,
    /// The server is unreachable or the connection was lost.
    Unreachable = 3,
    /// The server did not answer in time.
    Timeout = 4,
    /// Unknown topic or partition.
    NotFound = 5,
    /// The topic exists.
    AlreadyExists = 6,
    /// Rejected as invalid.
    Invalid = 7,
    /// A local file could not be read, or the server could not bind or open its data.
    LocalIo = 8,
}

/// An error the CLI itself diagnoses (bad input), with its exit code.
#[derive(Debug)]
pub struct UserError {
    /// Exit code.
    pub exit: Exit,
    /// Message.
    pub message: String,
}

impl std::error::Error for UserError {}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An error with `exit` and `message`.
pub fn user_error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError {
        exit,
        message: message.into(),
    })
}

/// The error and its causes on one line, `outer: inner: …`, skipping a cause whose text
/// an outer message already includes (many errors display their source too).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace(['\n', '\r'], " ")
}

/// Whether the error is stdout (or another pipe) having been closed by the reader.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn client_exit(e: &ClientError) -> Exit {
    match e {
        ClientError::Connect { .. } | ClientError::Disconnected(_) | ClientError::Io(_) => {
            Exit::Unreachable
        }
        ClientError::Timeout(_) => Exit::Timeout,
        ClientError::InvalidArgument(_) => Exit::Invalid,
        ClientError::Server { code, .. } => match code {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::GroupNotFound => {
                Exit::NotFound
            }
            ErrorCode::TopicAlreadyExists => Exit::AlreadyExists,
            ErrorCode::InvalidTopicName
            | ErrorCode::InvalidPartitionCount
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidRequest
            | ErrorCode::BatchTooLarge
            | ErrorCode::OffsetOutOfRange
            | ErrorCode::TooManyTopics
            | ErrorCode::InvalidGroupId
            | ErrorCode::NonEmptyGroup
            | ErrorCode::InvalidSessionTimeout
            | ErrorCode::InconsistentGroupProtocol => Exit::Invalid,
            ErrorCode::RequestTimedOut => Exit::Timeout,
            ErrorCode::ShuttingDown | ErrorCode::TooManyConnections => Exit::Unreachable,
            _ => Exit::Failure,
        },
        _ => Exit::Failure,
    }
}

/// The exit code for an error, from the first error in its chain that has one.
pub fn classify(err: &anyhow::Error) -> Exit {
    for e in err.chain() {
        if let Some(u) = e.downcast_ref::<UserError>() {
            return u.exit;
        }
        if let Some(c) = e.downcast_ref::<ClientError>() {
            return client_exit(c);
        }
        if let Some(s) = e.downcast_ref::<weir_server::ServerError>() {
            return match s {
                weir_server::ServerError::Config(_) => Exit::Usage,
                weir_server::ServerError::Bind { .. } | weir_server::ServerError::Broker(_) => {
                    Exit::LocalIo
                }
                _ => Exit::Failure,
            };
        }
        if e.downcast_ref::<weir_server::ConfigError>().is_some() {
            return Exit::Usage;
        }
    }
    Exit::Failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_distinct_codes() {
        let server = |code| {
            anyhow::Error::new(ClientError::Server {
                code,
                message: String::new(),
            })
        };
        assert_eq!(classify(&server(ErrorCode::UnknownTopic)), Exit::NotFound);
        assert_eq!(
            classify(&server(ErrorCode::TopicAlreadyExists)),
            Exit::AlreadyExists
        );
        assert_eq!(
            classify(&server(ErrorCode::InvalidTopicName)),
            Exit::Invalid
        );
        assert_eq!(
            classify(&server(ErrorCode::StorageError).context("producing")),
            Exit::Failure
        );
        assert_eq!(
            classify(&user_error(Exit::LocalIo, "gone").context("reading")),
            Exit::LocalIo
        );
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen: {0}")]
        struct Listen(#[source] std::io::Error);
        let e = anyhow::Error::new(Listen(io)).context("cannot start\nthe server");
        assert_eq!(
            one_line(&e),
            "cannot start the server: cannot listen: in use"
        );
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe.context("writing")));
    }
}
