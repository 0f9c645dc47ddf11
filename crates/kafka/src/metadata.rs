//! Metadata: this one broker leads every partition of every topic. Topics created through
//! either protocol are in the same broker, so both protocols list the same topics.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use weir_broker::{BrokerError, TopicDescription};

use crate::conn::Shared;
use crate::errors::kafka_error;

/// ACL operation bits: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11,
/// IDEMPOTENT_WRITE 12.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

/// Answers a metadata request, creating requested topics that do not exist when the
/// client allows it and the listener is configured to (Kafka's auto-creation).
pub(crate) async fn metadata(
    shared: &Shared,
    version: i16,
    r: MetadataRequest,
) -> MetadataResponse {
    let broker = &shared.broker;
    let cfg = &shared.config;
    let mut response = MetadataResponse::default();
    let mut me = MetadataResponseBroker::default();
    me.node_id = cfg.node_id.into();
    me.host = StrBytes::from_string(cfg.advertised_host.clone());
    me.port = i32::from(cfg.advertised_port);
    response.brokers.push(me);
    response.cluster_id = Some(StrBytes::from_string(cfg.cluster_id.clone()));
    response.controller_id = cfg.node_id.into();
    // Weir has no ACLs: every operation is allowed, which is what clients are told when
    // they ask (v8+; the cluster field exists in v8–v10 only).
    if r.include_cluster_authorized_operations && (8..=10).contains(&version) {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    let topic_ops =
        (r.include_topic_authorized_operations && version >= 8).then_some(TOPIC_OPERATIONS);

    // v0: an empty list means every topic; from v1 on that is a null list.
    let requested = match r.topics {
        Some(t) if !(version == 0 && t.is_empty()) => Some(t),
        _ => None,
    };
    let Some(requested) = requested else {
        for (name, _) in broker.list_topics() {
            if let Ok(d) = broker.describe_topic(&name) {
                response.topics.push(topic(shared, d, topic_ops));
            }
        }
        return response;
    };
    let auto_create = cfg.auto_create_topics && (version < 4 || r.allow_auto_topic_creation);
    // Topics named by id (v10+) are found by a scan; clients rarely do this.
    let mut by_id: Option<BTreeMap<uuid::Uuid, String>> = None;
    for t in requested {
        let name = match t.name {
            Some(n) => n.to_string(),
            None => {
                let ids = by_id.get_or_insert_with(|| {
                    broker
                        .list_topics()
                        .into_iter()
                        .filter_map(|(n, _)| broker.describe_topic(&n).ok())
                        .map(|d| (d.id, d.name))
                        .collect()
                });
                match ids.get(&t.topic_id) {
                    Some(n) => n.clone(),
                    None => {
                        let mut out = MetadataResponseTopic::default();
                        out.name = None;
                        out.topic_id = t.topic_id;
                        out.error_code = ResponseError::UnknownTopicId.code();
                        response.topics.push(out);
                        continue;
                    }
                }
            }
        };
        let found = match broker.describe_topic(&name) {
            Err(BrokerError::UnknownTopic(_)) if auto_create => create(shared, &name).await,
            other => other,
        };
        response.topics.push(match found {
            Ok(d) => topic(shared, d, topic_ops),
            Err(e) => {
                let mut out = MetadataResponseTopic::default();
                out.name = Some(TopicName(StrBytes::from_string(name)));
                out.error_code = kafka_error(&e).code();
                out
            }
        });
    }
    response
}

async fn create(shared: &Shared, name: &str) -> Result<TopicDescription, BrokerError> {
    let broker = &shared.broker;
    let partitions = broker.config().topic_partitions_default;
    match broker.create_topic(name, partitions, BTreeMap::new()).await {
        Ok(d) => {
            tracing::info!(
                topic = name,
                partitions,
                "auto-created topic for a kafka metadata request"
            );
            Ok(d)
        }
        // Another request created it first.
        Err(BrokerError::TopicExists(_)) => broker.describe_topic(name),
        Err(e) => Err(e),
    }
}

fn topic(shared: &Shared, d: TopicDescription, ops: Option<i32>) -> MetadataResponseTopic {
    let node = shared.config.node_id;
    let mut out = MetadataResponseTopic::default();
    if let Some(ops) = ops {
        out.topic_authorized_operations = ops;
    }
    out.name = Some(TopicName(StrBytes::from_string(d.name)));
    out.topic_id = d.id;
    out.partitions = d
        .partitions
        .iter()
        .map(|p| {
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = p.partition as i32;
            mp.leader_id = node.into();
            mp.leader_epoch = p.leader_epoch;
            mp.replica_nodes = vec![node.into()];
            mp.isr_nodes = vec![node.into()];
            mp
        })
        .collect();
    out
}
