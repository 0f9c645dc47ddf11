//! Topic names and per-topic settings.

use std::collections::BTreeMap;

use weir_storage::{FsyncPolicy, LogConfig};

use crate::BrokerError;

/// Longest topic name (Kafka's limit, so names move between the two unchanged).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Settings one topic may carry.
pub const TOPIC_CONFIGS_MAX: usize = 64;

/// Setting keys a topic accepts, in the order `describe` lists them.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "fsync",
    "fsync_interval_ms",
    "segment_bytes_max",
    "segment_age_ms_max",
    "retention_ms_max",
    "retention_bytes_max",
    "index_interval_bytes",
    "batch_bytes_max",
];

/// Checks a topic name: 1 to 249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let bad = |why: &str| Err(BrokerError::InvalidTopicName(format!("{name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn parse_u64(key: &str, value: &str) -> Result<u64, BrokerError> {
    value
        .parse()
        .map_err(|_| BrokerError::InvalidConfig(format!("{key}={value:?}: not a number")))
}

fn parse_limit(key: &str, value: &str) -> Result<Option<u64>, BrokerError> {
    match value {
        "-1" | "none" | "unlimited" => Ok(None),
        v => parse_u64(key, v).map(Some),
    }
}

fn parse_u32(key: &str, value: &str) -> Result<u32, BrokerError> {
    parse_u64(key, value)?
        .try_into()
        .map_err(|_| BrokerError::InvalidConfig(format!("{key}={value:?}: too large")))
}

/// Applies `overrides` on top of `defaults` and validates the result.
pub fn resolve_log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, BrokerError> {
    if overrides.len() > TOPIC_CONFIGS_MAX {
        return Err(BrokerError::InvalidConfig(format!(
            "{} settings exceed {TOPIC_CONFIGS_MAX}",
            overrides.len()
        )));
    }
    let mut c = defaults.clone();
    let mut fsync_mode = None;
    let mut fsync_interval_ms = match defaults.fsync {
        FsyncPolicy::IntervalMs(ms) => ms,
        _ => 1000,
    };
    for (k, v) in overrides {
        match k.as_str() {
            "fsync" => fsync_mode = Some(v.as_str()),
            "fsync_interval_ms" => fsync_interval_ms = parse_u64(k, v)?,
            "segment_bytes_max" => c.segment_bytes_max = parse_u64(k, v)?,
            "segment_age_ms_max" => c.segment_age_ms_max = parse_u64(k, v)?,
            "retention_ms_max" => c.retention_ms_max = parse_limit(k, v)?,
            "retention_bytes_max" => c.retention_bytes_max = parse_limit(k, v)?,
            "index_interval_bytes" => c.index_interval_bytes = parse_u32(k, v)?,
            "batch_bytes_max" => c.batch_bytes_max = parse_u32(k, v)?,
            other => {
                return Err(BrokerError::InvalidConfig(format!(
                    "unknown setting {other:?}; known: {}",
                    TOPIC_CONFIG_KEYS.join(", ")
                )));
            }
        }
    }
    c.fsync = match fsync_mode {
        None => match defaults.fsync {
            FsyncPolicy::IntervalMs(_) => FsyncPolicy::IntervalMs(fsync_interval_ms),
            other => other,
        },
        Some("always") => FsyncPolicy::Always,
        Some("never") => FsyncPolicy::Never,
        Some("interval") => FsyncPolicy::IntervalMs(fsync_interval_ms),
        Some(other) => {
            return Err(BrokerError::InvalidConfig(format!(
                "fsync={other:?}: expected always, interval or never"
            )));
        }
    };
    if let FsyncPolicy::IntervalMs(0) = c.fsync {
        return Err(BrokerError::InvalidConfig(
            "fsync_interval_ms must be at least 1".into(),
        ));
    }
    c.validate()
        .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
    Ok(c)
}

/// The effective settings of a topic as strings, every key present.
pub fn describe_log_config(c: &LogConfig) -> BTreeMap<String, String> {
    let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
    let (mode, interval) = match c.fsync {
        FsyncPolicy::Always => ("always", None),
        FsyncPolicy::Never => ("never", None),
        FsyncPolicy::IntervalMs(ms) => ("interval", Some(ms)),
    };
    let mut m = BTreeMap::new();
    m.insert("fsync".into(), mode.into());
    if let Some(ms) = interval {
        m.insert("fsync_interval_ms".into(), ms.to_string());
    }
    m.insert("segment_bytes_max".into(), c.segment_bytes_max.to_string());
    m.insert(
        "segment_age_ms_max".into(),
        c.segment_age_ms_max.to_string(),
    );
    m.insert("retention_ms_max".into(), limit(c.retention_ms_max));
    m.insert("retention_bytes_max".into(), limit(c.retention_bytes_max));
    m.insert(
        "index_interval_bytes".into(),
        c.index_interval_bytes.to_string(),
    );
    m.insert("batch_bytes_max".into(), c.batch_bytes_max.to_string());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overrides_apply_and_bad_values_are_refused() {
        let d = LogConfig::default();
        let mut o = BTreeMap::new();
        o.insert("fsync".to_owned(), "interval".to_owned());
        o.insert("fsync_interval_ms".to_owned(), "250".to_owned());
        o.insert("retention_bytes_max".to_owned(), "1000000000".to_owned());
        let c = resolve_log_config(&d, &o).expect("valid");
        assert_eq!(c.fsync, FsyncPolicy::IntervalMs(250));
        assert_eq!(c.retention_bytes_max, Some(1_000_000_000));
        let described = describe_log_config(&c);
        assert_eq!(described["fsync"], "interval");
        assert_eq!(described["fsync_interval_ms"], "250");
        for (k, v) in [
            ("fsync", "sometimes"),
            ("nope", "1"),
            ("segment_bytes_max", "-5"),
            ("fsync_interval_ms", "0"),
            ("batch_bytes_max", "99999999999"),
        ] {
            let mut o = BTreeMap::new();
            o.insert(k.to_owned(), v.to_owned());
            if k == "fsync_interval_ms" {
                o.insert("fsync".to_owned(), "interval".to_owned());
            }
            assert!(resolve_log_config(&d, &o).is_err(), "{k}={v}");
        }
    }
}
