//! Produce: record batches go to the log as they came (the broker validates each batch's
//! header and CRC-32C, compressed or not, and patches only baseOffset and the leader
//! epoch), in two phases so that a connection's appends stay in order while their waits
//! for the disk overlap.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use weir_broker::{Acks, Appended, BrokerError};

use crate::codec::{Header, Request};
use crate::conn::{Reply, Shared};
use crate::errors::code_and_message;
use crate::handler;

/// Whether a request gets an answer: everything but a produce with acks=0.
pub(crate) fn expects_reply(request: &Request) -> bool {
    !matches!(request, Request::Produce(p) if p.acks == 0)
}

/// One partition of a started produce.
#[derive(Debug)]
struct PartitionStart {
    index: i32,
    appended: Result<Appended, PartitionError>,
}

/// Why a partition was not appended.
#[derive(Debug)]
enum PartitionError {
    Broker(BrokerError),
    Kafka(ResponseError, String),
}

/// A produce request whose batches are in the log (or were refused), not yet answered.
#[derive(Debug)]
pub(crate) struct Started {
    timeout_ms: u32,
    topics: Vec<(TopicName, Vec<PartitionStart>)>,
}

/// Validates the request and appends every partition's batches. Awaited in turn for the
/// produce requests of one connection. The partitions of one request are appended
/// concurrently: each partition's order only depends on the order of requests.
pub(crate) async fn start(shared: &Shared, r: ProduceRequest) -> Started {
    let request_error = match r.acks {
        -1..=1 if r.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) => Some((
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported by weir",
        )),
        -1..=1 => None,
        _ => Some((
            ResponseError::InvalidRequiredAcks,
            "acks must be -1 (all), 0 (none) or 1 (leader)",
        )),
    };
    let acks = match r.acks {
        -1 => Acks::All,
        0 => Acks::None,
        _ => Acks::Leader,
    };
    let broker = &shared.broker;
    let mut topics = Vec::with_capacity(r.topic_data.len());
    let mut appends = Vec::new();
    for (t, topic) in r.topic_data.into_iter().enumerate() {
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let refused = |e: ResponseError, m: &str| PartitionStart {
                index: p.index,
                appended: Err(PartitionError::Kafka(e, m.to_owned())),
            };
            if let Some((e, m)) = request_error {
                parts.push(refused(e, m));
                continue;
            }
            let Ok(partition) = u32::try_from(p.index) else {
                parts.push(refused(
                    ResponseError::UnknownTopicOrPartition,
                    "negative partition",
                ));
                continue;
            };
            let Some(records) = p.records else {
                parts.push(refused(ResponseError::InvalidRecord, "no records"));
                continue;
            };
            // The records stay a slice of the frame: the log writes patched headers from
            // copies.
            let name = topic.name.clone();
            appends.push((t, parts.len(), async move {
                broker.append(&name, partition, records, acks).await
            }));
            parts.push(PartitionStart {
                index: p.index,
                appended: Err(PartitionError::Kafka(
                    ResponseError::UnknownServerError,
                    String::new(),
                )),
            });
        }
        topics.push((topic.name, parts));
    }
    let slots: Vec<_> = appends.iter().map(|(t, p, _)| (*t, *p)).collect();
    let results = futures::future::join_all(appends.into_iter().map(|(_, _, f)| f)).await;
    for ((t, p), result) in slots.into_iter().zip(results) {
        topics[t].1[p].appended = result.map_err(PartitionError::Broker);
    }
    let timeout_ms = u32::try_from(r.timeout_ms).unwrap_or(0);
    Started { timeout_ms, topics }
}

/// Waits until every partition is as durable as acks asked, then encodes the answer.
pub(crate) async fn finish(header: &Header, started: Started) -> Reply {
    let timeout_ms = started.timeout_ms;
    let mut response = ProduceResponse::default();
    for (name, parts) in started.topics {
        let answers = futures::future::join_all(parts.into_iter().map(|p| async move {
            let mut out = PartitionProduceResponse::default();
            out.index = p.index;
            out.base_offset = -1;
            out.log_append_time_ms = -1;
            out.log_start_offset = -1;
            let failed = match p.appended {
                Ok(appended) => match appended.wait(timeout_ms).await {
                    Ok(info) => {
                        out.base_offset = info.base_offset;
                        return out;
                    }
                    Err(e) => PartitionError::Broker(e),
                },
                Err(e) => e,
            };
            let (code, message) = match failed {
                PartitionError::Broker(e) => code_and_message(&e),
                PartitionError::Kafka(e, m) => (e.code(), Some(StrBytes::from_string(m))),
            };
            out.error_code = code;
            out.error_message = message;
            out
        }))
        .await;
        let mut topic = TopicProduceResponse::default();
        topic.name = name;
        topic.partition_responses = answers;
        response.responses.push(topic);
    }
    handler::reply(header, &response)
}
