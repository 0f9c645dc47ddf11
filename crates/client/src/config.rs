//! Settings for the client, producers and consumers, and the limits that bound them.
//!
//! Every setting has a working default. Limits are named with their unit last
//! (`linger_ms`, `batch_bytes_max`) and checked when a client, producer or consumer is
//! created, so a bad value fails early with [`ClientError::InvalidArgument`].

use std::fmt;
use std::sync::Arc;

use crate::error::{ClientError, Result};
use crate::producer::{BatchAckHandler, ProducerInterceptor};

/// Largest `inflight_requests_max` accepted.
pub const INFLIGHT_REQUESTS_MAX_LIMIT: u32 = 65_536;
/// Largest timeout accepted for any `*_timeout_ms` setting (one hour).
pub const TIMEOUT_MS_LIMIT: u32 = 3_600_000;
/// Largest `linger_ms` accepted (one minute).
pub const LINGER_MS_LIMIT: u32 = 60_000;
/// Largest `partition_inflight_batches_max` accepted.
pub(crate) const PARTITION_INFLIGHT_BATCHES_LIMIT: u32 = 64;
/// Largest `retries_max` accepted.
pub const RETRIES_MAX_LIMIT: u32 = 1_000;
/// Smallest `frame_bytes_max` accepted: room for any non-data response.
pub const FRAME_BYTES_MIN: u32 = 64 * 1024;
/// Smallest `batch_bytes_max` accepted: a batch header plus a small record.
pub const BATCH_BYTES_MIN: u32 = 1024;
/// Largest `max_poll_records` accepted.
pub const POLL_RECORDS_MAX_LIMIT: u32 = 1_000_000;
/// Bytes a fetch response may add around its record batches (headers, statuses, names).
pub(crate) const FETCH_OVERHEAD_BYTES: u32 = 64 * 1024;

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<()> {
    if value < min || value > max {
        return Err(ClientError::InvalidArgument(format!(
            "{name} = {value} is outside {min}..={max}"
        )));
    }
    Ok(())
}

/// Settings of a [`Client`](crate::Client): the connection and its requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Sent in the handshake so the server's logs can name this client.
    pub client_id: String,
    /// How long to wait for TCP connect plus handshake.
    pub connect_timeout_ms: u32,
    /// How long to wait for the response to one request (a fetch adds its long-poll wait).
    pub request_timeout_ms: u32,
    /// Requests in flight on the connection at once; callers beyond it wait. The server's
    /// own limit from the handshake lowers it further.
    pub inflight_requests_max: u32,
    /// Largest response frame body accepted; a larger frame closes the connection.
    pub frame_bytes_max: u32,
    /// How long cached partition counts are trusted before they are asked for again.
    pub metadata_max_age_ms: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: "weir-client".into(),
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            inflight_requests_max: 256,
            frame_bytes_max: weir_proto::FRAME_BYTES_MAX_DEFAULT,
            metadata_max_age_ms: 300_000,
        }
    }
}

impl ClientConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        check_range("client_id length", self.client_id.len() as u64, 0, 256)?;
        check_range(
            "connect_timeout_ms",
            self.connect_timeout_ms.into(),
            1,
            TIMEOUT_MS_LIMIT.into(),
        )?;
        check_range(
            "request_timeout_ms",
            self.request_timeout_ms.into(),
            1,
            TIMEOUT_MS_LIMIT.into(),
        )?;
        check_range(
            "inflight_requests_max",
            self.inflight_requests_max.into(),
            1,
            INFLIGHT_REQUESTS_MAX_LIMIT.into(),
        )?;
        check_range(
            "frame_bytes_max",
            self.frame_bytes_max.into(),
            FRAME_BYTES_MIN.into(),
            u32::MAX.into(),
        )?;
        check_range(
            "metadata_max_age_ms",
            self.metadata_max_age_ms.into(),
            0,
            TIMEOUT_MS_LIMIT.into(),
        )
    }
}

/// How many acknowledgements a produce request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Durable: written (and fsynced per the topic's policy) before the ack.
    #[default]
    All,
    /// Acknowledged once the leader has appended it.
    Leader,
    /// Fire and forget: the server sends no response; offsets are unknown (-1).
    None,
}

impl Acks {
    pub(crate) fn to_wire(self) -> weir_proto::v1::Acks {
        match self {
            Acks::All => weir_proto::v1::Acks::All,
            Acks::Leader => weir_proto::v1::Acks::Leader,
            Acks::None => weir_proto::v1::Acks::None,
        }
    }
}

/// How records without an explicit partition are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioning {
    /// Keyed records go to `toPositive(murmur2(key)) % partitions`, as Kafka's default
    /// partitioner puts them; records without a key stick to one partition per batch
    /// and move round-robin to the next when the batch is sealed.
    #[default]
    KeyHash,
    /// Every record sticks to one partition per batch, round-robin; keys are ignored.
    RoundRobin,
}

/// Settings of a [`Producer`](crate::Producer).
#[derive(Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Acknowledgement level of [`send`](crate::Producer::send) and friends.
    pub acks: Acks,
    /// How long a batch may wait for more records before it is sent.
    pub linger_ms: u32,
    /// Largest batch; a batch is sent as soon as the next record would not fit. The
    /// server's own limit from the handshake lowers it further.
    pub batch_bytes_max: u32,
    /// Memory for records not yet acknowledged; senders wait when it is used up.
    pub buffer_bytes_max: u64,
    /// How long the server and the client wait for one produce request.
    pub request_timeout_ms: u32,
    /// Retries of a batch after a retriable error; 0 disables retries. A retry after a
    /// lost response (timeout, dropped connection) may write the batch twice: delivery
    /// is at least once.
    pub retries_max: u32,
    /// Pause before the first retry; it doubles per retry up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u32,
    /// Longest pause between retries.
    pub retry_backoff_max_ms: u32,
    /// Placement of records without an explicit partition.
    pub partitioning: Partitioning,
    /// Produce requests of one partition in flight at once (1 to 64; Kafka's
    /// `max.in.flight.requests.per.connection`). With 1 (the default) a partition's
    /// records are appended in send order even across retries. Above 1 the next batches
    /// are sent while earlier ones wait for the disk, which keeps a partition busy under
    /// `acks = All` and fsync `always`; they are still appended in send order, but a
    /// batch that is retried lands after the ones sent behind it.
    pub partition_inflight_batches_max: u32,
    /// Hooks called before each record is batched and after it is acknowledged.
    pub interceptors: Vec<Arc<dyn ProducerInterceptor>>,
    /// Where the outcomes of records sent with
    /// [`send_tagged`](crate::Producer::send_tagged) go, a batch at a time.
    pub batch_ack_handler: Option<Arc<dyn BatchAckHandler>>,
}

impl fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("acks", &self.acks)
            .field("linger_ms", &self.linger_ms)
            .field("batch_bytes_max", &self.batch_bytes_max)
            .field("buffer_bytes_max", &self.buffer_bytes_max)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retries_max", &self.retries_max)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("retry_backoff_max_ms", &self.retry_backoff_max_ms)
            .field("partitioning", &self.partitioning)
            .field(
                "partition_inflight_batches_max",
                &self.partition_inflight_batches_max,
            )
            .field("interceptors", &self.interceptors.len())
            .field("batch_ack_handler", &self.batch_ack_handler.is_some())
            .finish()
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes_max: 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            request_timeout_ms: 30_000,
            retries_max: 5,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 5_000,
            partitioning: Partitioning::KeyHash,
            partition_inflight_batches_max: 1,
            interceptors: Vec::new(),
            batch_ack_handler: None,
        }
    }
}

impl ProducerConfig {
    /// Adds an interceptor; interceptors run in the order they were added.
    pub fn interceptor(mut self, interceptor: Arc<dyn ProducerInterceptor>) -> Self {
        self.interceptors.push(interceptor);
        self
    }

    /// Sets the handler of records sent with [`send_tagged`](crate::Producer::send_tagged).
    pub fn batch_ack_handler(mut self, handler: Arc<dyn BatchAckHandler>) -> Self {
        self.batch_ack_handler = Some(handler);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_range(
            "linger_ms",
            self.linger_ms.into(),
            0,
            LINGER_MS_LIMIT.into(),
        )?;
        check_range(
            "batch_bytes_max",
            self.batch_bytes_max.into(),
            BATCH_BYTES_MIN.into(),
            i32::MAX as u64,
        )?;
        check_range(
            "buffer_bytes_max",
            self.buffer_bytes_max,
            self.batch_bytes_max.into(),
            // The byte budget is a tokio semaphore, whose permits are capped.
            (usize::MAX >> 4) as u64,
        )?;
        check_range(
            "request_timeout_ms",
            self.request_timeout_ms.into(),
            1,
            TIMEOUT_MS_LIMIT.into(),
        )?;
        check_range(
            "partition_inflight_batches_max",
            self.partition_inflight_batches_max.into(),
            1,
            PARTITION_INFLIGHT_BATCHES_LIMIT.into(),
        )?;
        check_range(
            "retries_max",
            self.retries_max.into(),
            0,
            RETRIES_MAX_LIMIT.into(),
        )?;
        check_range(
            "retry_backoff_ms",
            self.retry_backoff_ms.into(),
            0,
            TIMEOUT_MS_LIMIT.into(),
        )?;
        check_range(
            "retry_backoff_max_ms",
            self.retry_backoff_max_ms.into(),
            self.retry_backoff_ms.into(),
            TIMEOUT_MS_LIMIT.into(),
        )
    }
}

/// Where a consumer starts when it has no valid position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// The oldest retained record.
    Earliest,
    /// Only records produced from now on.
    #[default]
    Latest,
    /// Fail the poll with the server's `OFFSET_OUT_OF_RANGE` (or an invalid-argument error
    /// when no position was ever set).
    Error,
}

/// Settings of a [`Consumer`](crate::Consumer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Most records one [`poll`](crate::Consumer::poll) returns; the rest wait for the next.
    pub max_poll_records: u32,
    /// Most bytes of record batches one fetch returns, over all partitions.
    pub fetch_bytes_max: u32,
    /// Most bytes of record batches one fetch returns for one partition.
    pub partition_fetch_bytes_max: u32,
    /// Bytes the server waits for (up to the poll timeout) before it answers a fetch.
    pub fetch_min_bytes: u32,
    /// What to do when there is no position or it is out of range.
    pub auto_offset_reset: AutoOffsetReset,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_poll_records: 500,
            fetch_bytes_max: 16 * 1024 * 1024,
            partition_fetch_bytes_max: 1024 * 1024,
            fetch_min_bytes: 1,
            auto_offset_reset: AutoOffsetReset::Latest,
        }
    }
}

impl ConsumerConfig {
    pub(crate) fn validate(&self, frame_bytes_max: u32) -> Result<()> {
        check_range(
            "max_poll_records",
            self.max_poll_records.into(),
            1,
            POLL_RECORDS_MAX_LIMIT.into(),
        )?;
        check_range(
            "fetch_bytes_max",
            self.fetch_bytes_max.into(),
            1,
            frame_bytes_max.saturating_sub(FETCH_OVERHEAD_BYTES).into(),
        )?;
        check_range(
            "partition_fetch_bytes_max",
            self.partition_fetch_bytes_max.into(),
            1,
            self.fetch_bytes_max.into(),
        )?;
        check_range(
            "fetch_min_bytes",
            self.fetch_min_bytes.into(),
            0,
            self.fetch_bytes_max.into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        ClientConfig::default().validate().unwrap();
        ProducerConfig::default().validate().unwrap();
        ConsumerConfig::default()
            .validate(weir_proto::FRAME_BYTES_MAX_DEFAULT)
            .unwrap();

        let p = ProducerConfig {
            linger_ms: LINGER_MS_LIMIT + 1,
            ..ProducerConfig::default()
        };
        assert!(matches!(p.validate(), Err(ClientError::InvalidArgument(_))));
        let p = ProducerConfig {
            buffer_bytes_max: 1024,
            ..ProducerConfig::default()
        };
        assert!(p.validate().is_err());
        let c = ConsumerConfig {
            fetch_bytes_max: weir_proto::FRAME_BYTES_MAX_DEFAULT,
            ..ConsumerConfig::default()
        };
        assert!(c.validate(weir_proto::FRAME_BYTES_MAX_DEFAULT).is_err());
        let cc = ClientConfig {
            inflight_requests_max: 0,
            ..ClientConfig::default()
        };
        assert!(cc.validate().is_err());
    }
}
