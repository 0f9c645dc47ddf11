//! Fetch: the broker's multi-partition long-poll, batches served exactly as stored.
//!
//! Fetch sessions (KIP-227) are not kept: every answer carries session id 0, which tells
//! the client that no session was created, so its next request is a full fetch again. A
//! request that names a session (incremental fetch) gets `FETCH_SESSION_ID_NOT_FOUND`,
//! on which clients fall back to full fetches.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use weir_broker::{FetchPartitionSpec, FetchSpec};

use crate::conn::Shared;
use crate::errors::kafka_error;

/// `isolation_level` of a read_committed consumer.
const READ_COMMITTED: i8 = 1;

/// Runs one fetch.
pub(crate) async fn fetch(shared: &Shared, r: FetchRequest) -> FetchResponse {
    let mut response = FetchResponse::default();
    if r.session_id != 0 {
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return response;
    }
    // Partitions the broker is asked for, and where each answer goes.
    let mut specs = Vec::new();
    let mut slots = Vec::new();
    for (t, topic) in r.topics.iter().enumerate() {
        let mut out = FetchableTopicResponse::default();
        out.topic = topic.topic.clone();
        out.topic_id = topic.topic_id;
        for (p, part) in topic.partitions.iter().enumerate() {
            let mut data = PartitionData::default();
            data.partition_index = part.partition;
            data.high_watermark = -1;
            data.aborted_transactions = (r.isolation_level == READ_COMMITTED).then(Vec::new);
            match u32::try_from(part.partition) {
                Ok(partition) => {
                    specs.push(FetchPartitionSpec {
                        topic: topic.topic.to_string(),
                        partition,
                        offset: part.fetch_offset,
                        max_bytes: u32::try_from(part.partition_max_bytes).unwrap_or(0),
                    });
                    slots.push((t, p));
                }
                Err(_) => data.error_code = ResponseError::UnknownTopicOrPartition.code(),
            }
            out.partitions.push(data);
        }
        response.responses.push(out);
    }
    let spec = FetchSpec {
        max_wait_ms: u32::try_from(r.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(r.min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(r.max_bytes).unwrap_or(0),
        partitions: specs,
    };
    match shared.broker.fetch(spec).await {
        Ok(results) => {
            for ((t, p), got) in slots.into_iter().zip(results) {
                let data = &mut response.responses[t].partitions[p];
                data.high_watermark = got.high_watermark;
                data.last_stable_offset = got.high_watermark;
                data.log_start_offset = got.log_start_offset;
                match got.error {
                    Some(e) => data.error_code = kafka_error(&e).code(),
                    None => data.records = Some(got.records),
                }
            }
        }
        Err(e) => {
            let code = kafka_error(&e).code();
            response.error_code = code;
            for (t, p) in slots {
                response.responses[t].partitions[p].error_code = code;
            }
        }
    }
    response
}
