//! [`Client`]: the shared handle that owns the connection and the metadata cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weir_proto::{Request, Response, v1};

use crate::admin::Admin;
use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::conn::{Conn, ServerInfo};
use crate::consumer::Consumer;
use crate::error::{ClientError, Result};
use crate::producer::Producer;

/// Topics whose partition counts are cached at most; the cache is cleared beyond it.
const METADATA_TOPICS_MAX: usize = 100_000;

/// A handle to one Weir server over one multiplexed TCP connection.
///
/// Cloning is cheap and shares the connection. Requests from all clones, producers and
/// consumers are in flight at once (up to `inflight_requests_max`) and matched to their
/// responses by correlation id. If the connection fails, the requests pending on it fail
/// with a retriable error and the next request connects again.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where to (re)connect.
    addr: String,
    config: ClientConfig,
    /// The live connection, if any. Held briefly; never across an await.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Serialises reconnects so that concurrent callers share one new connection.
    connect_lock: tokio::sync::Mutex<()>,
    /// Partition counts by topic, with the time they were learnt.
    partitions: Mutex<HashMap<String, (u32, Instant)>>,
    /// Set by [`Client::close`].
    closed: AtomicBool,
}

impl Client {
    /// Connects to the server at `addr` (`host:port`) and performs the handshake.
    pub async fn connect(addr: impl Into<String>, config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let addr = addr.into();
        let conn = Conn::connect(&addr, &config).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                addr,
                config,
                conn: Mutex::new(Some(Arc::new(conn))),
                connect_lock: tokio::sync::Mutex::new(()),
                partitions: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The address this client connects to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// What the server said in the latest handshake, connecting first if needed.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        Ok(self.conn().await?.server.clone())
    }

    /// What the server said in the handshake of the live connection, if there is one.
    pub(crate) fn cached_server_info(&self) -> Option<ServerInfo> {
        self.live().map(|c| c.server.clone())
    }

    /// Topic administration and metadata.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// A batching producer. Must be called inside a tokio runtime (it starts a task).
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::new(self.clone(), config)
    }

    /// A consumer of manually assigned partitions.
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer> {
        Consumer::new(self.clone(), config)
    }

    /// A member of a consumer group subscribed to `topics` (see [`GroupConsumer`](crate::GroupConsumer)). It
    /// joins on its first poll.
    pub fn group_consumer(
        &self,
        config: crate::GroupConfig,
        topics: Vec<String>,
    ) -> Result<crate::GroupConsumer> {
        crate::GroupConsumer::new(self.clone(), config, topics)
    }

    /// Closes the connection: pending requests fail with [`ClientError::Closed`], and so
    /// does every later request from any clone.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(conn) = self.inner.conn.lock().take() {
            conn.close(ClientError::Closed);
        }
    }

    /// The live connection, reconnecting if the last one failed.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _serial = self.inner.connect_lock.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        tracing::debug!(addr = %self.inner.addr, "reconnecting");
        let conn = Arc::new(Conn::connect(&self.inner.addr, &self.inner.config).await?);
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        *self.inner.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn live(&self) -> Option<Arc<Conn>> {
        self.inner
            .conn
            .lock()
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// The default per-request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms.into())
    }

    /// Sends one request and waits for its response.
    pub(crate) async fn request(&self, request: &Request, timeout: Duration) -> Result<Response> {
        self.conn().await?.request(request, timeout).await
    }

    /// Sends a request that gets no response.
    pub(crate) async fn send_oneway(&self, request: &Request, timeout: Duration) -> Result<()> {
        self.conn().await?.send_oneway(request, timeout).await
    }

    /// Metadata for `topics` (all topics when empty).
    pub(crate) async fn metadata(&self, topics: Vec<String>) -> Result<v1::MetadataResponse> {
        let req = Request::Metadata(v1::MetadataRequest { topics });
        match self.request(&req, self.request_timeout()).await? {
            Response::Metadata(r) => {
                crate::error::check(r.status.as_ref())?;
                Ok(r)
            }
            other => Err(crate::conn::unexpected("Metadata", &other)),
        }
    }

    /// The partition count of `topic`, from the cache or the server.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.cached_partition_count(topic) {
            return Ok(n);
        }
        let md = self.metadata(vec![topic.to_owned()]).await?;
        let t = md
            .topics
            .iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| ClientError::Server {
                code: v1::ErrorCode::UnknownTopic,
                message: format!("topic {topic:?} not in metadata"),
            })?;
        crate::error::check(t.status.as_ref())?;
        let n = u32::try_from(t.partitions.len()).unwrap_or(u32::MAX);
        if n == 0 {
            return Err(ClientError::Protocol(format!(
                "topic {topic:?} has no partitions in metadata"
            )));
        }
        let mut cache = self.inner.partitions.lock();
        if cache.len() >= METADATA_TOPICS_MAX {
            cache.clear();
        }
        cache.insert(topic.to_owned(), (n, Instant::now()));
        Ok(n)
    }

    /// The cached partition count of `topic`, if fresh.
    pub(crate) fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms.into());
        self.inner
            .partitions
            .lock()
            .get(topic)
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(n, _)| *n)
    }

    /// Forgets the cached partition count of `topic` (after an unknown topic or partition).
    pub(crate) fn invalidate_metadata(&self, topic: &str) {
        self.inner.partitions.lock().remove(topic);
    }
}
