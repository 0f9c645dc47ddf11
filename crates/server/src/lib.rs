//! The Weir server: configuration, listeners and their wiring to the broker.
//!
//! One path through it, top to bottom: [`Server::bind`] validates the [`Config`], opens
//! the [`Broker`] (metadata replay and log recovery) and binds the native listener;
//! [`Server::run`] accepts connections (`native::accept_loop`, capped by a semaphore), each
//! served by `native::serve` (frames checked and bounded before their bodies are read),
//! whose requests `handler::handle` turns into broker calls. The Kafka listener
//! (`weir_kafka`, bound unless `kafka_addr` is empty) runs beside it over the same broker.
//! When the shutdown future
//! completes, the server stops accepting and reading, lets in-flight requests finish
//! (bounded by `shutdown_timeout_ms`), then syncs and closes every log.
#![deny(missing_docs)]

pub mod config;
mod handler;
mod native;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::{Broker, BrokerError};

pub use config::{Config, ConfigError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker could not open its data.
    #[error("cannot open the data directory: {0}")]
    Broker(#[from] BrokerError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A bound, ready server.
#[derive(Debug)]
pub struct Server {
    config: Config,
    broker: Broker,
    native: TcpListener,
    native_addr: SocketAddr,
    /// The Kafka protocol listener, unless disabled.
    kafka: Option<weir_kafka::KafkaListener>,
}

impl Server {
    /// Validates `config`, opens the data directory and binds the listeners: clients can
    /// connect once it returns. Prints nothing on stdout (an embedding program owns it);
    /// `weir server` announces [`Server::native_addr`] and [`Server::kafka_addr`].
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let broker = Broker::open(config.broker_config()?).await?;
        let native = TcpListener::bind(&config.native_addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.native_addr.clone(),
                source,
            })?;
        let native_addr = native.local_addr().map_err(|source| ServerError::Bind {
            addr: config.native_addr.clone(),
            source,
        })?;
        let kafka = if config.kafka_addr.is_empty() {
            None
        } else {
            Some(
                weir_kafka::KafkaListener::bind(&config.kafka_addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: config.kafka_addr.clone(),
                        source,
                    })?,
            )
        };
        tracing::info!(%native_addr, kafka_addr = ?kafka.as_ref().map(|k| k.local_addr()), data_dir = %config.data_dir.display(), "weir server ready");
        Ok(Server {
            config,
            broker,
            native,
            native_addr,
            kafka,
        })
    }

    /// Address of the native listener (useful when bound to port 0).
    pub fn native_addr(&self) -> SocketAddr {
        self.native_addr
    }

    /// Address of the Kafka listener, if enabled (useful when bound to port 0).
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().map(|k| k.local_addr())
    }

    /// The broker, for embedding and tests.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let kafka_config = self
            .kafka
            .as_ref()
            .map(|listener| self.kafka_config(listener.local_addr()));
        let advertised_host = self.config.advertised_host.clone().unwrap_or_else(|| {
            if self.native_addr.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                self.native_addr.ip().to_string()
            }
        });
        let stop = CancellationToken::new();
        let shared = Arc::new(native::Shared {
            broker: self.broker.clone(),
            limits: self.config.limits.clone(),
            node_id: self.config.node_id,
            advertised_host,
            advertised_port: self.native_addr.port(),
            stop: stop.clone(),
        });
        let connections = TaskTracker::new();
        let accept = tokio::spawn(native::accept_loop(
            self.native,
            shared,
            connections.clone(),
        ));
        let kafka = self.kafka.zip(kafka_config).map(|(listener, config)| {
            tokio::spawn(listener.run(
                self.broker.clone(),
                config,
                stop.clone(),
                connections.clone(),
            ))
        });
        shutdown.await;
        tracing::info!("shutting down: no new connections or requests");
        stop.cancel();
        self.broker.begin_shutdown();
        let _ = accept.await;
        if let Some(kafka) = kafka {
            let _ = kafka.await;
        }
        connections.close();
        let grace = Duration::from_millis(self.config.shutdown_timeout_ms);
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = self.config.shutdown_timeout_ms,
                "in-flight requests did not finish in time; closing anyway"
            );
        }
        self.broker.shutdown().await;
        Ok(())
    }
}

impl Server {
    fn kafka_config(&self, bound: SocketAddr) -> weir_kafka::KafkaConfig {
        let c = &self.config;
        let host = c
            .kafka_advertised_host
            .clone()
            .or_else(|| c.advertised_host.clone())
            .unwrap_or_else(|| {
                if bound.ip().is_unspecified() {
                    "localhost".to_owned()
                } else {
                    bound.ip().to_string()
                }
            });
        let mut k = weir_kafka::KafkaConfig::new(host);
        k.node_id = c.node_id;
        k.advertised_port = c.kafka_advertised_port.unwrap_or(bound.port());
        k.frame_bytes_max = c.limits.frame_bytes_max;
        k.connections_max = c.limits.connections_max;
        k.inflight_requests_max = c.limits.inflight_requests_max;
        k.connection_buffer_bytes_max = c.limits.connection_buffer_bytes_max;
        k.auto_create_topics = c.kafka_auto_create_topics;
        k
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => {
            if r.is_ok() {
                tracing::info!("SIGINT received");
            }
        }
    }
}

/// Sets up structured logs on stderr: `RUST_LOG` if set, else `level`.
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
