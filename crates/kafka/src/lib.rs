//! Weir's Kafka wire protocol listener: existing Kafka clients (librdkafka and kcat,
//! kafka-python, the Java client, …) produce to and consume from the Weir broker unchanged.
//!
//! Weir stores Kafka RecordBatch v2 byte for byte, so produce and fetch carry record
//! batches straight between the socket and the log: nothing here decodes a record.
//! Request and response types come from the `kafka-protocol` crate; this crate maps them
//! onto the same [`weir_broker::Broker`] operations the native protocol uses.
//!
//! One path through it, top to bottom:
//! [`KafkaListener::run`] accepts connections (capped by a semaphore) →
//! `conn::serve`: the reader splits frames (`codec::split_frame`, size checked against
//! `frame_bytes_max` before the body is buffered) and decodes them (`codec::decode`) →
//! the dispatcher starts each request in arrival order (produce appends happen right
//! here, one after the other, so a connection's batches reach each partition in order) →
//! per-request tasks (`handler::handle`, then `produce`, `fetch`, `metadata`, `offsets`,
//! `admin`, `groups` — the last mapped onto the broker's group coordinator) → the writer, which sends responses in request order, as Kafka
//! clients require.
//!
//! A malformed or unsupported request closes that connection only. Which APIs and
//! versions are served is in `versions::SUPPORTED` and `docs/kafka.md`.
#![deny(missing_docs)]

mod admin;
mod codec;
mod configs;
mod conn;
mod errors;
mod fetch;
mod groups;
mod handler;
mod metadata;
mod offsets;
mod produce;
mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::Broker;

/// Settings of the Kafka listener, filled by the server from its configuration.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// This broker's node id in metadata and coordinator answers.
    pub node_id: i32,
    /// Host clients are told to connect to.
    pub advertised_host: String,
    /// Port clients are told to connect to; 0 means the port the listener is bound to.
    pub advertised_port: u16,
    /// Cluster id reported in metadata.
    pub cluster_id: String,
    /// Largest request a client may send (bytes after the size prefix).
    pub frame_bytes_max: u32,
    /// Most client connections at once; more are closed right after accept.
    pub connections_max: u32,
    /// Most requests read from one connection and not yet answered; the listener stops
    /// reading that connection until answers are written.
    pub inflight_requests_max: u32,
    /// Most bytes one connection holds in requests being served and answers not yet
    /// written (a fetch counts the bytes it may answer with); the listener stops reading
    /// that connection until answers go out.
    pub connection_buffer_bytes_max: u32,
    /// Whether a metadata request that names an unknown topic creates it (with the
    /// broker's default partition count), as Kafka's `auto.create.topics.enable` does.
    pub auto_create_topics: bool,
}

impl KafkaConfig {
    /// Defaults matching the server's, for tests and embedding.
    pub fn new(advertised_host: impl Into<String>) -> Self {
        Self {
            node_id: 0,
            advertised_host: advertised_host.into(),
            advertised_port: 0,
            cluster_id: "weir".to_owned(),
            frame_bytes_max: 16 * 1024 * 1024,
            connections_max: 1024,
            inflight_requests_max: 256,
            connection_buffer_bytes_max: 64 * 1024 * 1024,
            auto_create_topics: true,
        }
    }
}

/// A bound Kafka listener.
#[derive(Debug)]
pub struct KafkaListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl KafkaListener {
    /// Binds `addr` (`HOST:PORT`; port 0 picks a free port).
    pub async fn bind(addr: &str) -> std::io::Result<KafkaListener> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(KafkaListener {
            listener,
            local_addr,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `stop` is cancelled; each connection runs on
    /// `connections`, stops reading new requests when `stop` is cancelled, and closes once
    /// the requests it already read are answered.
    pub async fn run(
        self,
        broker: Broker,
        mut config: KafkaConfig,
        stop: CancellationToken,
        connections: TaskTracker,
    ) {
        if config.advertised_port == 0 {
            config.advertised_port = self.local_addr.port();
        }
        let shared = Arc::new(conn::Shared {
            broker,
            config,
            stop,
        });
        conn::accept_loop(self.listener, shared, connections).await;
    }
}

/// Splits `bytes` into request frames and decodes each the way a connection does, until
/// the bytes run out or a frame would close the connection; returns how many decoded.
/// The entry point for fuzzing the request decoders: no input may panic it.
#[doc(hidden)]
pub fn decode_requests(bytes: &[u8], frame_bytes_max: u32) -> usize {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Some(frame)) = codec::split_frame(&mut buf, frame_bytes_max) {
        if codec::decode(frame).is_err() {
            break;
        }
        decoded += 1;
    }
    decoded
}
