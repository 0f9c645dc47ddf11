//! Topic settings under their Kafka names.
//!
//! Kafka clients create topics with Kafka's config names (`retention.ms`, `segment.bytes`
//! …). Those with a Weir equivalent are translated; a few that describe what Weir always
//! does are accepted when they ask for exactly that (`cleanup.policy=delete`,
//! `compression.type=producer` …); Weir's own keys (`fsync`, …) are accepted as they are.
//! Anything else is `INVALID_CONFIG` rather than silently ignored.

use std::collections::BTreeMap;

/// Kafka name → Weir name, for settings with the same meaning and unit.
pub(crate) const TRANSLATED: &[(&str, &str)] = &[
    ("retention.ms", "retention_ms_max"),
    ("retention.bytes", "retention_bytes_max"),
    ("segment.bytes", "segment_bytes_max"),
    ("segment.ms", "segment_age_ms_max"),
    ("index.interval.bytes", "index_interval_bytes"),
    ("max.message.bytes", "batch_bytes_max"),
];

/// Kafka settings Weir has no knob for, with the one value that describes what it does
/// (`None`: any value is accepted because it cannot matter on one node).
pub(crate) const FIXED: &[(&str, Option<&str>)] = &[
    ("cleanup.policy", Some("delete")),
    ("compression.type", Some("producer")),
    ("message.timestamp.type", Some("CreateTime")),
    ("min.insync.replicas", Some("1")),
    ("preallocate", Some("false")),
    ("unclean.leader.election.enable", None),
    ("message.downconversion.enable", None),
];

/// Translates the settings of a Kafka CreateTopics request into Weir's. `Err` names the
/// first setting Weir cannot honour.
pub(crate) fn to_weir<'a>(
    configs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (key, value) in configs {
        let Some(value) = value else {
            // A null value means "the default".
            continue;
        };
        if let Some((_, weir)) = TRANSLATED.iter().find(|(k, _)| *k == key) {
            out.insert((*weir).to_owned(), value.to_owned());
        } else if let Some((_, fixed)) = FIXED.iter().find(|(k, _)| *k == key) {
            if let Some(want) = fixed
                && !value.eq_ignore_ascii_case(want)
            {
                return Err(format!(
                    "{key}={value} is not supported by weir (only {want})"
                ));
            }
        } else if weir_broker::topic::TOPIC_CONFIG_KEYS.contains(&key) {
            out.insert(key.to_owned(), value.to_owned());
        } else {
            return Err(format!("unknown or unsupported topic config {key:?}"));
        }
    }
    Ok(out)
}

/// A topic's effective settings under Kafka names (those that have one), then Weir's
/// own keys that have no Kafka name, then the fixed Kafka settings.
pub(crate) fn describe(weir: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (kafka, w) in TRANSLATED {
        if let Some(v) = weir.get(*w) {
            out.push(((*kafka).to_owned(), v.clone()));
        }
    }
    for (k, v) in weir {
        if !TRANSLATED.iter().any(|(_, w)| w == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in FIXED {
        if let Some(v) = v {
            out.push(((*k).to_owned(), (*v).to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_translate_and_unsupported_values_are_refused() {
        let w = to_weir([
            ("retention.ms", Some("60000")),
            ("cleanup.policy", Some("delete")),
            ("fsync", Some("never")),
            ("segment.bytes", None),
        ])
        .expect("valid");
        assert_eq!(w["retention_ms_max"], "60000");
        assert_eq!(w["fsync"], "never");
        assert_eq!(w.len(), 2);
        assert!(to_weir([("cleanup.policy", Some("compact"))]).is_err());
        assert!(to_weir([("no.such.thing", Some("1"))]).is_err());
        let d = describe(&w);
        assert!(d.contains(&("retention.ms".to_owned(), "60000".to_owned())));
        assert!(d.contains(&("fsync".to_owned(), "never".to_owned())));
        assert!(d.contains(&("cleanup.policy".to_owned(), "delete".to_owned())));
    }
}
