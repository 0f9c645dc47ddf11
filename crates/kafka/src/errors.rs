//! The one mapping from broker errors to Kafka error codes.
//!
//! Chosen so that Kafka clients react as they would to a Kafka broker: retriable
//! conditions (`NOT_LEADER_OR_FOLLOWER` while shutting down, `REQUEST_TIMED_OUT`,
//! `UNKNOWN_TOPIC_OR_PARTITION` while metadata catches up) are retried, the rest surface
//! to the application.

use kafka_protocol::ResponseError;
use kafka_protocol::protocol::StrBytes;
use weir_broker::BrokerError;

/// The wire value of an optional error: 0 for none.
pub(crate) fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

/// The Kafka error for a broker error.
pub(crate) fn kafka_error(e: &BrokerError) -> ResponseError {
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidTopicName(_) => ResponseError::InvalidTopicException,
        BrokerError::InvalidPartitionCount { .. } => ResponseError::InvalidPartitions,
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        BrokerError::TooManyTopics { .. } => ResponseError::PolicyViolation,
        BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest,
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::CorruptBatch(_) => ResponseError::CorruptMessage,
        BrokerError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        BrokerError::PartitionFailed { .. }
        | BrokerError::DiskFull { .. }
        | BrokerError::CorruptData { .. } => ResponseError::KafkaStorageError,
        BrokerError::Timeout(_) => ResponseError::RequestTimedOut,
        // Clients retry elsewhere (or here, after a restart) and refresh metadata.
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        BrokerError::Storage(_) | BrokerError::Metadata(_) => ResponseError::KafkaStorageError,
        BrokerError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        BrokerError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        BrokerError::PartitionsNotIncreased { .. } => ResponseError::InvalidPartitions,
        _ => ResponseError::UnknownServerError,
    }
}

/// The error code and message to put into a response.
pub(crate) fn code_and_message(e: &BrokerError) -> (i16, Option<StrBytes>) {
    (
        kafka_error(e).code(),
        Some(StrBytes::from_string(e.to_string())),
    )
}
