//! Rust SDK for Weir, speaking its native protocol over one multiplexed TCP connection.
//!
//! # Layout
//!
//! - [`Client`] (`client.rs`, `conn.rs`): the connection. A writer task and a reader
//!   task share it; every request registers a oneshot under a fresh correlation id, so
//!   many requests are in flight at once (bounded by `inflight_requests_max`) and their
//!   responses may arrive in any order. The handshake negotiates the protocol version
//!   and learns the server's limits. Each request has a timeout; when the connection
//!   dies, every pending request fails with a retriable error and the next one
//!   reconnects. Response frames are bounded by `frame_bytes_max`.
//! - [`Admin`] (`admin.rs`): create, delete, list and describe topics; metadata.
//! - [`Producer`] (`producer/`): batching per partition (`linger_ms`,
//!   `batch_bytes_max`) into Kafka RecordBatch v2 bytes, Kafka-compatible key hashing
//!   ([`partition_for_key`]), acks, bounded retries with backoff, back-pressure on
//!   `buffer_bytes_max`, interceptors ([`ProducerInterceptor`]).
//! - [`Consumer`] (`consumer.rs`): assignment, [`SeekTo`] seeks, long-poll fetches over
//!   all assigned partitions, and a push mode ([`Consumer::run`]).
//! - [`GroupConsumer`] (`group.rs`, `assignor.rs`): consumer groups with rebalancing
//!   (range, round-robin, cooperative sticky), static membership, committed offsets
//!   (sync, async, automatic; at least once or at most once), a rebalance listener, and
//!   broadcast consumption with positions on the broker or in a local file.
//! - [`ClientError`] (`error.rs`): one small error enum with
//!   [`is_retriable`](ClientError::is_retriable).
//!
//! Every setting has a default and a checked range (`config.rs`).
//!
//! # Producing
//!
//! ```no_run
//! use std::sync::Arc;
//! use weir_client::{
//!     BatchAckHandler, BatchAcks, Client, ClientConfig, ProducerConfig, ProducerRecord, Topic,
//! };
//! # async fn f() -> Result<(), weir_client::ClientError> {
//! let client = Client::connect("127.0.0.1:6086", ClientConfig::default()).await?;
//! let producer = client.producer(ProducerConfig::default())?;
//!
//! // Sync: wait for the acknowledgement.
//! let md = producer.send(ProducerRecord::new("orders").with_key("o-1").with_value("paid")).await?;
//! println!("written at {}/{}", md.partition, md.offset);
//!
//! // Async: enqueue many, then await the acknowledgements.
//! let acks: Vec<_> = (0..100)
//!     .map(|i| producer.send_async(ProducerRecord::new("orders").with_value(format!("v{i}"))))
//!     .collect();
//! for ack in acks {
//!     ack.await?;
//! }
//!
//! // Callback and one-way.
//! producer
//!     .send_with_callback(ProducerRecord::new("orders").with_value("x"), |r| {
//!         if let Err(e) = r {
//!             eprintln!("lost: {e}");
//!         }
//!     })
//!     .await;
//! producer.send_oneway(ProducerRecord::new("metrics").with_value("cpu=3")).await?;
//! producer.close().await;
//!
//! // Many records to one topic, their outcomes a batch at a time: clone one `Topic`
//! // (no copy of the name) and tag each record instead of giving it a callback.
//! struct Log;
//! impl BatchAckHandler for Log {
//!     fn on_batch(&self, acks: &BatchAcks<'_>) {
//!         println!("{} records to {}: {:?}", acks.records.len(), acks.topic, acks.result);
//!     }
//! }
//! let config = ProducerConfig::default().batch_ack_handler(Arc::new(Log));
//! let producer = client.producer(config)?;
//! let topic = Topic::from("orders");
//! for i in 0..1000u64 {
//!     producer.send_tagged(ProducerRecord::new(topic.clone()).with_value("x"), i).await?;
//! }
//! producer.close().await;
//! # Ok(()) }
//! ```
//!
//! # Consuming
//!
//! ```no_run
//! use std::time::Duration;
//! use weir_client::{Client, ClientConfig, ConsumerConfig, SeekTo};
//! # async fn f() -> Result<(), weir_client::ClientError> {
//! let client = Client::connect("127.0.0.1:6086", ClientConfig::default()).await?;
//! let mut consumer = client.consumer(ConsumerConfig::default())?;
//! for p in consumer.assign_all("orders").await? {
//!     consumer.seek("orders", p, SeekTo::Beginning).await?;
//! }
//! // Pull: returns as soon as records arrive, or empty after the timeout.
//! for r in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{}/{}@{}: {:?}", r.topic, r.partition, r.offset, r.value);
//! }
//! // Push: the next fetch waits for the handler; stops when the token is cancelled.
//! let stop = weir_client::CancellationToken::new();
//! consumer
//!     .run(stop.clone(), |batch| async move {
//!         println!("{} records", batch.len());
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Administering
//!
//! ```no_run
//! use std::collections::HashMap;
//! use weir_client::{Client, ClientConfig};
//! # async fn f() -> Result<(), weir_client::ClientError> {
//! let client = Client::connect("127.0.0.1:6086", ClientConfig::default()).await?;
//! let admin = client.admin();
//! let configs = HashMap::from([("fsync".to_owned(), "always".to_owned())]);
//! admin.create_topic("orders", 3, configs).await?;
//! for t in admin.list_topics().await? {
//!     println!("{} ({} partitions)", t.name, t.partition_count);
//! }
//! let info = admin.describe_topic("orders").await?;
//! for p in &info.partitions {
//!     println!("{}: {}..{}", p.partition, p.log_start_offset, p.log_end_offset);
//! }
//! admin.delete_topic("orders").await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod admin;
mod assignor;
mod client;
mod config;
mod conn;
mod consumer;
mod error;
mod group;
mod partitioner;
mod producer;
mod record;

pub use admin::Admin;
pub use assignor::{MemberSubscription, Strategy, TopicPartition};
pub use client::Client;
pub use config::{
    Acks, AutoOffsetReset, BATCH_BYTES_MIN, ClientConfig, ConsumerConfig, FRAME_BYTES_MIN,
    INFLIGHT_REQUESTS_MAX_LIMIT, LINGER_MS_LIMIT, POLL_RECORDS_MAX_LIMIT, Partitioning,
    ProducerConfig, RETRIES_MAX_LIMIT, TIMEOUT_MS_LIMIT,
};
pub use conn::{ServerInfo, ServerLimits};
pub use consumer::{Consumer, SeekTo};
pub use error::{ClientError, Result};
pub use group::{
    Delivery, GroupConfig, GroupConsumer, GroupMode, OffsetStore, RebalanceListener, StartFrom,
};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{BatchAckHandler, BatchAcks, Producer, ProducerInterceptor, TaggedAck};
pub use record::{ConsumerRecord, ProducerRecord, RecordMetadata, Topic};
/// The cancellation token [`Consumer::run`] stops on (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;
/// Protocol types returned by [`Admin`] (topic info, metadata, error codes).
pub use weir_proto::v1;
