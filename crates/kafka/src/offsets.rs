//! ListOffsets (earliest, latest, by time) and OffsetForLeaderEpoch.
//!
//! A single node appends every batch in leader epoch 0, so the epoch answers are simple:
//! epoch 0 ends at the high watermark.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use weir_broker::{Broker, FetchPartitionSpec, FetchSpec, OffsetQuery};

use crate::conn::Shared;
use crate::errors::kafka_error;

/// Kafka's special timestamps in ListOffsets.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// The first ListOffsets version that carries a leader epoch.
const LIST_OFFSETS_LEADER_EPOCH_VERSION: i16 = 4;

/// Answers ListOffsets, one partition after the other.
pub(crate) async fn list_offsets(
    shared: &Shared,
    version: i16,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let epoch = if version >= LIST_OFFSETS_LEADER_EPOCH_VERSION {
        0
    } else {
        -1
    };
    let broker = &shared.broker;
    let mut response = ListOffsetsResponse::default();
    for t in r.topics {
        let mut topic = ListOffsetsTopicResponse::default();
        for p in &t.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = p.partition_index;
            let Ok(partition) = u32::try_from(p.partition_index) else {
                out.error_code = ResponseError::UnknownTopicOrPartition.code();
                topic.partitions.push(out);
                continue;
            };
            let query = match p.timestamp {
                LATEST_TIMESTAMP => OffsetQuery::Latest,
                EARLIEST_TIMESTAMP => OffsetQuery::Earliest,
                ts if ts >= 0 => OffsetQuery::Timestamp(ts),
                _ => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    topic.partitions.push(out);
                    continue;
                }
            };
            match broker.list_offsets(&t.name, partition, query).await {
                Ok((offset, found)) => match query {
                    OffsetQuery::Timestamp(_) if !found => {}
                    OffsetQuery::Timestamp(_) => {
                        out.offset = offset;
                        out.timestamp = record_timestamp(broker, &t.name, partition, offset)
                            .await
                            .unwrap_or(-1);
                        out.leader_epoch = epoch;
                    }
                    _ => {
                        out.offset = offset;
                        out.leader_epoch = epoch;
                    }
                },
                Err(e) => out.error_code = kafka_error(&e).code(),
            }
            topic.partitions.push(out);
        }
        topic.name = t.name;
        response.topics.push(topic);
    }
    response
}

/// The timestamp of the record at `offset`: decoded from an uncompressed batch, or the
/// batch's base timestamp for a compressed one (the broker then answers with the batch's
/// base offset, whose record carries that timestamp).
async fn record_timestamp(
    broker: &Broker,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Option<i64> {
    let spec = FetchSpec {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1,
        partitions: vec![FetchPartitionSpec {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes: 1,
        }],
    };
    let got = broker.fetch(spec).await.ok()?.pop()?;
    for batch in weir_record::BatchIter::new(&got.records) {
        let (header, bytes) = batch.ok()?;
        if header.last_offset() < offset {
            continue;
        }
        if header.compression() != weir_record::Compression::None {
            return Some(header.base_timestamp);
        }
        for record in weir_record::records(bytes).ok()? {
            let record = record.ok()?;
            if record.offset == offset {
                return Some(record.timestamp_ms);
            }
        }
        return None;
    }
    None
}

/// Answers OffsetForLeaderEpoch: epoch 0 is the only epoch, and it ends at the high
/// watermark; a newer epoch than the broker's is unknown to it.
pub(crate) async fn offset_for_leader_epoch(
    shared: &Shared,
    r: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let broker = &shared.broker;
    let mut response = OffsetForLeaderEpochResponse::default();
    for t in r.topics {
        let mut topic = OffsetForLeaderTopicResult::default();
        for p in &t.partitions {
            let mut out = EpochEndOffset::default();
            out.partition = p.partition;
            out.leader_epoch = -1;
            out.end_offset = -1;
            let Ok(partition) = u32::try_from(p.partition) else {
                out.error_code = ResponseError::UnknownTopicOrPartition.code();
                topic.partitions.push(out);
                continue;
            };
            match broker
                .list_offsets(&t.topic, partition, OffsetQuery::Latest)
                .await
            {
                Err(e) => out.error_code = kafka_error(&e).code(),
                Ok(_) if p.current_leader_epoch > 0 => {
                    out.error_code = ResponseError::UnknownLeaderEpoch.code();
                }
                Ok(_) if p.leader_epoch < 0 => {}
                Ok((hw, _)) => {
                    out.leader_epoch = 0;
                    out.end_offset = hw;
                }
            }
            topic.partitions.push(out);
        }
        topic.topic = t.topic;
        response.topics.push(topic);
    }
    response
}
