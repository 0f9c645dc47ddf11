//! Server configuration: built-in defaults, then a TOML file, then `WEIR_*` environment
//! variables (nested keys joined by `__`, e.g. `WEIR_LIMITS__CONNECTIONS_MAX=100`), then
//! command-line flags applied by the caller. Every setting has a working default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use weir_broker::BrokerConfig;
use weir_storage::{FsyncPolicy, LogConfig};

/// Largest configuration file accepted.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Headroom a frame needs beyond the largest batch: the protobuf fields around it.
const FRAME_OVERHEAD_BYTES: u32 = 64 * 1024;
/// Smallest per-connection buffer budget: room for a few small requests and answers.
const CONNECTION_BUFFER_BYTES_MIN: u64 = 64 * 1024;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is too large to be a configuration file.
    #[error("config file {path} is {len} bytes; at most {CONFIG_FILE_BYTES_MAX} are accepted")]
    TooLarge {
        /// File.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// A value has the wrong type, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Limits that protect the server from its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame body a client may send.
    pub frame_bytes_max: u32,
    /// Most client connections at once; more are refused with TOO_MANY_CONNECTIONS.
    pub connections_max: u32,
    /// Most unanswered requests per connection; more get TOO_MANY_INFLIGHT_REQUESTS.
    pub inflight_requests_max: u32,
    /// Most bytes one connection holds in requests being served and answers not yet
    /// written (a fetch counts the bytes it may answer with); when they are spent the
    /// server stops reading that connection until answers go out. Applies to the Kafka
    /// listener too.
    pub connection_buffer_bytes_max: u32,
    /// Longest a fetch may wait for data.
    pub fetch_wait_ms_max: u32,
    /// Most record bytes in one fetch response.
    pub fetch_bytes_max: u32,
    /// Most partitions one fetch may name.
    pub fetch_partitions_max: u32,
    /// Most topics.
    pub topics_max: u32,
    /// Most partitions per topic.
    pub topic_partitions_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: 16 * 1024 * 1024,
            connections_max: 1024,
            inflight_requests_max: 256,
            connection_buffer_bytes_max: 64 * 1024 * 1024,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 16 * 1024 * 1024,
            fetch_partitions_max: 4096,
            topics_max: 10_000,
            topic_partitions_max: 4096,
        }
    }
}

/// Settings of topics that do not override them, and the default partition count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Partitions of a topic created without a count.
    pub partitions: u32,
    /// `always`, `interval` or `never`.
    pub fsync: String,
    /// Period of `interval` fsync.
    pub fsync_interval_ms: u64,
    /// Segment size that triggers a roll.
    pub segment_bytes_max: u64,
    /// Segment age that triggers a roll.
    pub segment_age_ms_max: u64,
    /// Age after which sealed segments are deleted; -1 keeps them forever.
    pub retention_ms_max: i64,
    /// Partition size above which the oldest sealed segments are deleted; -1 for none.
    pub retention_bytes_max: i64,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// Largest record batch accepted.
    pub batch_bytes_max: u32,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        let log = LogConfig::default();
        let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        Self {
            partitions: 1,
            fsync: "always".into(),
            fsync_interval_ms: 1000,
            segment_bytes_max: log.segment_bytes_max,
            segment_age_ms_max: log.segment_age_ms_max,
            retention_ms_max: limit(log.retention_ms_max),
            retention_bytes_max: limit(log.retention_bytes_max),
            index_interval_bytes: log.index_interval_bytes,
            batch_bytes_max: log.batch_bytes_max,
            retention_check_interval_ms: 60_000,
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id.
    pub node_id: i32,
    /// Where topics and metadata live.
    pub data_dir: PathBuf,
    /// Address of the native protocol listener.
    pub native_addr: String,
    /// Host clients are told to connect to; defaults to the listener's address, or
    /// `localhost` when it listens on all interfaces.
    pub advertised_host: Option<String>,
    /// Address of the Kafka protocol listener; an empty string disables it.
    pub kafka_addr: String,
    /// Host Kafka clients are told to connect to (metadata, FindCoordinator); defaults to
    /// `advertised_host`, then to the Kafka listener's address, or `localhost` when it
    /// listens on all interfaces.
    pub kafka_advertised_host: Option<String>,
    /// Port Kafka clients are told to connect to; defaults to the Kafka listener's port.
    pub kafka_advertised_port: Option<u16>,
    /// Whether a Kafka metadata request naming an unknown topic creates it with
    /// `topic_defaults.partitions` partitions (Kafka's `auto.create.topics.enable`).
    pub kafka_auto_create_topics: bool,
    /// Log filter (`info`, `debug`, `weir_storage=debug,info` …); `RUST_LOG` wins if set.
    pub log_level: String,
    /// Longest graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// Protective limits.
    pub limits: Limits,
    /// Topic defaults.
    pub topic_defaults: TopicDefaults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 0,
            data_dir: PathBuf::from("./weir-data"),
            native_addr: "0.0.0.0:6086".into(),
            advertised_host: None,
            kafka_addr: "0.0.0.0:9092".into(),
            kafka_advertised_host: None,
            kafka_advertised_port: None,
            kafka_auto_create_topics: true,
            log_level: "info".into(),
            shutdown_timeout_ms: 30_000,
            limits: Limits::default(),
            topic_defaults: TopicDefaults::default(),
        }
    }
}

const ENV_KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "native_addr",
    "advertised_host",
    "kafka_",
    "log_level",
    "shutdown_timeout_ms",
    "limits__",
    "topic_defaults__",
];

impl Config {
    /// Defaults, then the file at `path` (if any), then `WEIR_*` environment variables.
    /// The result is validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            let read_err = |source| ConfigError::Read {
                path: path.to_owned(),
                source,
            };
            let len = std::fs::metadata(path).map_err(read_err)?.len();
            if len > CONFIG_FILE_BYTES_MAX {
                return Err(ConfigError::TooLarge {
                    path: path.to_owned(),
                    len,
                });
            }
            let text = std::fs::read_to_string(path).map_err(read_err)?;
            fig = fig.merge(Toml::string(&text));
        }
        // Only keys Weir knows: other WEIR_* variables (the CLI's WEIR_ADDR) are not ours.
        let env = Env::prefixed("WEIR_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                ENV_KEYS.iter().any(|p| k.starts_with(p))
            })
            .split("__");
        let config: Config = fig
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relationships between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        let ranges: [(&str, u64, u64, u64); 8] = [
            (
                "limits.connection_buffer_bytes_max",
                l.connection_buffer_bytes_max.into(),
                CONNECTION_BUFFER_BYTES_MIN,
                u32::MAX.into(),
            ),
            (
                "limits.connections_max",
                l.connections_max.into(),
                1,
                1_000_000,
            ),
            (
                "limits.inflight_requests_max",
                l.inflight_requests_max.into(),
                1,
                65_536,
            ),
            (
                "limits.fetch_wait_ms_max",
                l.fetch_wait_ms_max.into(),
                0,
                3_600_000,
            ),
            (
                "limits.fetch_partitions_max",
                l.fetch_partitions_max.into(),
                1,
                1_000_000,
            ),
            ("limits.topics_max", l.topics_max.into(), 1, 1_000_000),
            (
                "limits.topic_partitions_max",
                l.topic_partitions_max.into(),
                1,
                1_000_000,
            ),
            (
                "topic_defaults.partitions",
                self.topic_defaults.partitions.into(),
                1,
                l.topic_partitions_max.into(),
            ),
        ];
        for (name, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return bad(format!("{name} = {v} is not between {lo} and {hi}"));
            }
        }
        let batch = self.topic_defaults.batch_bytes_max;
        let frame_min = batch.saturating_add(FRAME_OVERHEAD_BYTES);
        if l.frame_bytes_max < frame_min || l.frame_bytes_max > 1024 * 1024 * 1024 {
            return bad(format!(
                "limits.frame_bytes_max = {} must be between topic_defaults.batch_bytes_max + 64 KiB ({frame_min}) and 1 GiB",
                l.frame_bytes_max
            ));
        }
        if l.fetch_bytes_max < batch {
            return bad(format!(
                "limits.fetch_bytes_max = {} must be at least topic_defaults.batch_bytes_max ({batch})",
                l.fetch_bytes_max
            ));
        }
        if self.native_addr.parse::<std::net::SocketAddr>().is_err()
            && !self.native_addr.contains(':')
        {
            return bad(format!(
                "native_addr = {:?} is not HOST:PORT",
                self.native_addr
            ));
        }
        if !self.kafka_addr.is_empty()
            && self.kafka_addr.parse::<std::net::SocketAddr>().is_err()
            && !self.kafka_addr.contains(':')
        {
            return bad(format!(
                "kafka_addr = {:?} is not HOST:PORT (or empty, to disable the Kafka listener)",
                self.kafka_addr
            ));
        }
        self.log_config()?;
        Ok(())
    }

    /// The storage settings topics get by default.
    pub fn log_config(&self) -> Result<LogConfig, ConfigError> {
        let d = &self.topic_defaults;
        let base = LogConfig {
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        };
        let mut m = BTreeMap::new();
        m.insert("fsync".to_owned(), d.fsync.clone());
        m.insert(
            "fsync_interval_ms".to_owned(),
            d.fsync_interval_ms.to_string(),
        );
        m.insert(
            "segment_bytes_max".to_owned(),
            d.segment_bytes_max.to_string(),
        );
        m.insert(
            "segment_age_ms_max".to_owned(),
            d.segment_age_ms_max.to_string(),
        );
        m.insert(
            "retention_ms_max".to_owned(),
            d.retention_ms_max.to_string(),
        );
        m.insert(
            "retention_bytes_max".to_owned(),
            d.retention_bytes_max.to_string(),
        );
        m.insert(
            "index_interval_bytes".to_owned(),
            d.index_interval_bytes.to_string(),
        );
        m.insert("batch_bytes_max".to_owned(), d.batch_bytes_max.to_string());
        weir_broker::topic::resolve_log_config(&base, &m)
            .map_err(|e| ConfigError::Invalid(format!("topic_defaults: {e}")))
    }

    /// The broker's part of the configuration.
    pub fn broker_config(&self) -> Result<BrokerConfig, ConfigError> {
        let mut b = BrokerConfig::new(self.data_dir.clone());
        b.node_id = self.node_id;
        b.topic_defaults = self.log_config()?;
        b.topics_max = self.limits.topics_max;
        b.topic_partitions_max = self.limits.topic_partitions_max;
        b.topic_partitions_default = self.topic_defaults.partitions;
        b.fetch_wait_ms_max = self.limits.fetch_wait_ms_max;
        b.fetch_bytes_max = self.limits.fetch_bytes_max;
        b.fetch_partitions_max = self.limits.fetch_partitions_max;
        b.retention_check_interval_ms = self.topic_defaults.retention_check_interval_ms.max(1);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        // Config::default() reads no environment, so no jail is needed here.
        Config::default().validate().expect("defaults valid");
    }

    #[test]
    // The closure's error type is figment's, fixed by `Jail::expect_with`.
    #[allow(clippy::result_large_err)]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "data_dir = \"/tmp/x\"\n[limits]\nconnections_max = 7\n[topic_defaults]\nfsync = \"never\"\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("WEIR_LIMITS__CONNECTIONS_MAX", "9");
            jail.set_env("WEIR_ADDR", "127.0.0.1:1");
            let c = Config::load(Some(&path)).expect("loads");
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.limits.connections_max, 9);
            assert_eq!(c.log_config().expect("valid").fsync, FsyncPolicy::Never);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn kafka_listener_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(
                Config::load(None).expect("loads").kafka_addr,
                "0.0.0.0:9092"
            );
            jail.set_env("WEIR_KAFKA_ADDR", "127.0.0.1:0");
            jail.set_env("WEIR_KAFKA_ADVERTISED_PORT", "19092");
            jail.set_env("WEIR_KAFKA_AUTO_CREATE_TOPICS", "false");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.kafka_addr, "127.0.0.1:0");
            assert_eq!(c.kafka_advertised_port, Some(19092));
            assert!(!c.kafka_auto_create_topics);
            jail.set_env("WEIR_KAFKA_ADDR", "");
            assert_eq!(Config::load(None).expect("loads").kafka_addr, "");
            jail.set_env("WEIR_KAFKA_ADDR", "nonsense");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn bad_files_are_refused_with_a_reason() {
        // Inside a jail: it holds the lock that keeps other tests' WEIR_* variables out.
        figment::Jail::expect_with(|_| {
            bad_files();
            Ok(())
        });
    }

    fn bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weir.toml");
        for (text, needle) in [
            ("no_such_key = 1\n", "no_such_key"),
            ("[limits]\nconnections_max = \"many\"\n", "connections_max"),
            ("[limits]\nconnections_max = 0\n", "connections_max"),
            ("[topic_defaults]\nfsync = \"sometimes\"\n", "fsync"),
            ("[limits]\nframe_bytes_max = 10\n", "frame_bytes_max"),
            (
                "[limits]\nconnection_buffer_bytes_max = 100\n",
                "connection_buffer_bytes_max",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Config::load(Some(&path)).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
        }
        let missing = Config::load(Some(&dir.path().join("missing.toml")));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
