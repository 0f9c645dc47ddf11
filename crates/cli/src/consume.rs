//! `weir consume`: print a topic's messages as text or JSON lines.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use serde::Serialize;
use weir_client::{AutoOffsetReset, Client, ConsumerConfig, ConsumerRecord, SeekTo};

use crate::args::{ConsumeArgs, ConsumeFormat};
use crate::exit::{Exit, user_error};

/// Long-poll wait per fetch; the server answers as soon as data arrives.
const POLL_WAIT: Duration = Duration::from_millis(1_000);
/// Records handed over per poll.
const POLL_RECORDS_MAX: u32 = 10_000;
/// Output buffer; flushed after each poll when following.
const OUTPUT_BUFFER_BYTES: usize = 256 * 1024;

pub async fn run(client: &Client, args: ConsumeArgs) -> Result<()> {
    if args.group.is_some() {
        return crate::group::consume(client, &args).await;
    }
    let topic = args.topic.as_str();
    let mut config = ConsumerConfig::default();
    config.max_poll_records = POLL_RECORDS_MAX;
    // An explicit offset that does not exist is an error, not a silent jump.
    config.auto_offset_reset = if args.offset.is_some() {
        AutoOffsetReset::Error
    } else {
        AutoOffsetReset::Earliest
    };
    let mut consumer = client.consumer(config)?;
    let partitions = match args.partition {
        Some(p) => {
            let n = client
                .admin()
                .describe_topic(topic)
                .await
                .with_context(|| format!("cannot consume {topic:?}"))?
                .partition_count;
            if p >= n {
                return Err(user_error(
                    Exit::NotFound,
                    format!("partition {p} does not exist: topic {topic:?} has {n} partition(s)"),
                ));
            }
            consumer
                .assign(topic, &[p])
                .await
                .with_context(|| format!("cannot consume {topic:?}"))?;
            vec![p]
        }
        None => consumer
            .assign_all(topic)
            .await
            .with_context(|| format!("cannot consume {topic:?}"))?,
    };
    let start = if let Some(o) = args.offset {
        SeekTo::Offset(o)
    } else if let Some(t) = args.from_time {
        SeekTo::Timestamp(t)
    } else if args.from_beginning || !args.follow {
        SeekTo::Beginning
    } else {
        SeekTo::End
    };
    // Without --follow, stop at the end offsets seen now.
    let mut ends: Option<BTreeMap<u32, i64>> = None;
    if !args.follow {
        let mut m = BTreeMap::new();
        for &p in &partitions {
            m.insert(p, consumer.offset_for(topic, p, SeekTo::End).await?);
        }
        ends = Some(m);
    }
    for &p in &partitions {
        consumer.seek(topic, p, start).await?;
    }
    if let Some(ends) = &mut ends {
        unassign_done(&mut consumer, topic, ends);
        if ends.is_empty() {
            return Ok(());
        }
    }

    let mut out = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, std::io::stdout());
    let mut printed: u64 = 0;
    loop {
        let records = consumer.poll(POLL_WAIT).await?;
        for r in &records {
            if let Some(ends) = &ends
                && ends.get(&r.partition).is_none_or(|&end| r.offset >= end)
            {
                continue;
            }
            write_record(&mut out, r, args.format, args.print_key)?;
            printed += 1;
            if args.max_messages.is_some_and(|max| printed >= max) {
                out.flush()?;
                return Ok(());
            }
        }
        if let Some(ends) = &mut ends {
            unassign_done(&mut consumer, topic, ends);
            if ends.is_empty() {
                break;
            }
        } else {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Drops the partitions whose position reached their end offset.
fn unassign_done(consumer: &mut weir_client::Consumer, topic: &str, ends: &mut BTreeMap<u32, i64>) {
    ends.retain(|&p, &mut end| {
        let done = consumer.position(topic, p).is_none_or(|pos| pos >= end);
        if done {
            consumer.unassign_partition(topic, p);
        }
        !done
    });
}

/// Prints one record in the chosen format.
pub fn write_record(
    out: &mut impl Write,
    r: &ConsumerRecord,
    format: ConsumeFormat,
    print_key: bool,
) -> Result<()> {
    match format {
        ConsumeFormat::Text => write_text(out, r, print_key)?,
        ConsumeFormat::Json => {
            serde_json::to_writer(&mut *out, &to_json(r))?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

fn write_text(out: &mut impl Write, r: &ConsumerRecord, print_key: bool) -> std::io::Result<()> {
    if print_key {
        if let Some(k) = &r.key {
            out.write_all(k)?;
        }
        out.write_all(b"\t")?;
    }
    if let Some(v) = &r.value {
        out.write_all(v)?;
    }
    out.write_all(b"\n")
}

/// One record as a JSON line. Bytes that are valid UTF-8 are strings as they are;
/// anything else is standard base64 with the matching `*_base64` flag set.
#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: u32,
    offset: i64,
    timestamp: i64,
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "is_false")]
    key_base64: bool,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "is_false")]
    value_base64: bool,
    headers: Vec<JsonHeader<'a>>,
}

#[derive(Debug, Serialize)]
struct JsonHeader<'a> {
    key: &'a str,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "is_false")]
    value_base64: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The bytes as text, and whether that text is base64.
fn text_of(bytes: Option<&[u8]>) -> (Option<Cow<'_, str>>, bool) {
    match bytes {
        None => (None, false),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Some(Cow::Borrowed(s)), false),
            Err(_) => (
                Some(Cow::Owned(
                    base64::engine::general_purpose::STANDARD.encode(b),
                )),
                true,
            ),
        },
    }
}

fn to_json(r: &ConsumerRecord) -> JsonRecord<'_> {
    let (key, key_base64) = text_of(r.key.as_deref());
    let (value, value_base64) = text_of(r.value.as_deref());
    JsonRecord {
        topic: &r.topic,
        partition: r.partition,
        offset: r.offset,
        timestamp: r.timestamp_ms,
        key,
        key_base64,
        value,
        value_base64,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                let (value, value_base64) = text_of(v.as_deref());
                JsonHeader {
                    key: k,
                    value,
                    value_base64,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn json_keeps_utf8_and_flags_base64() {
        let r = ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 9,
            timestamp_ms: 1_000,
            key: None,
            value: Some(Bytes::from_static(b"\xff\x00")),
            headers: vec![
                ("h".into(), Some(Bytes::from_static(b"v"))),
                ("n".into(), None),
            ],
        };
        assert_eq!(
            serde_json::to_value(to_json(&r)).unwrap(),
            serde_json::json!({
                "topic": "t", "partition": 2, "offset": 9, "timestamp": 1000,
                "key": null, "value": "/wA=", "value_base64": true,
                "headers": [{"key": "h", "value": "v"}, {"key": "n", "value": null}],
            })
        );
        let mut text = Vec::new();
        write_text(&mut text, &r, true).unwrap();
        assert_eq!(text, b"\t\xff\x00\n");
    }
}
