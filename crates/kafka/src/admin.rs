//! Topic administration (CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs) and
//! producer ids for idempotent producers (InitProducerId).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    InitProducerIdRequest, InitProducerIdResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use weir_broker::{BrokerError, TopicDescription, topic};

use crate::configs;
use crate::conn::Shared;
use crate::errors::code_and_message;

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// DescribeConfigs config types (v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_LONG: i8 = 5;

fn msg(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

/// A Kafka-level refusal of one item, before the broker is asked.
struct Refusal(ResponseError, String);

impl Refusal {
    fn new(e: ResponseError, m: impl Into<String>) -> Self {
        Refusal(e, m.into())
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        Refusal(crate::errors::kafka_error(&e), e.to_string())
    }
}

/// Checks one topic of a CreateTopics request and works out its partition count and
/// Weir settings. Replication is one copy on this node, so only replication factor 1
/// (or -1, "the default") and assignments onto this node are accepted.
fn plan_topic(
    shared: &Shared,
    t: &CreatableTopic,
) -> Result<(u32, BTreeMap<String, String>), Refusal> {
    let node = shared.config.node_id;
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err(Refusal::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is larger than the 1 broker available",
                t.replication_factor
            ),
        ));
    }
    let partitions = if t.assignments.is_empty() {
        match t.num_partitions {
            -1 => shared.broker.config().topic_partitions_default,
            n => u32::try_from(n).map_err(|_| {
                Refusal::new(ResponseError::InvalidPartitions, format!("{n} partitions"))
            })?,
        }
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                "both assignments and a partition count or replication factor were given",
            ));
        }
        for (i, a) in t.assignments.iter().enumerate() {
            let on_this_node = a.broker_ids.len() == 1 && a.broker_ids[0].0 == node;
            if a.partition_index != i as i32 || !on_this_node {
                return Err(Refusal::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("every partition must have exactly one replica, on node {node}"),
                ));
            }
        }
        t.assignments.len() as u32
    };
    let configs = configs::to_weir(
        t.configs
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref())),
    )
    .map_err(|m| Refusal::new(ResponseError::InvalidConfig, m))?;
    Ok((partitions, configs))
}

/// Checks everything `create_topic` would, without creating (`validate_only`).
fn validate_topic(
    shared: &Shared,
    name: &str,
    partitions: u32,
    configs: &BTreeMap<String, String>,
) -> Result<(), BrokerError> {
    let broker = &shared.broker;
    topic::validate_topic_name(name)?;
    let max = broker.config().topic_partitions_max;
    if partitions == 0 || partitions > max {
        return Err(BrokerError::InvalidPartitionCount {
            count: partitions,
            max,
        });
    }
    topic::resolve_log_config(&broker.config().topic_defaults, configs)?;
    if broker.describe_topic(name).is_ok() {
        return Err(BrokerError::TopicExists(name.to_owned()));
    }
    Ok(())
}

/// Settings that differ from the broker's defaults were set on the topic.
fn config_source(shared: &Shared, key: &str, value: &str) -> i8 {
    let defaults = topic::describe_log_config(&shared.broker.config().topic_defaults);
    let weir_key = configs::TRANSLATED
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, w)| w);
    match defaults.get(weir_key) {
        Some(d) if d != value => SOURCE_DYNAMIC_TOPIC,
        _ => SOURCE_DEFAULT,
    }
}

fn created_configs(shared: &Shared, d: &TopicDescription) -> Vec<CreatableTopicConfigs> {
    configs::describe(&d.configs)
        .into_iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfigs::default();
            c.config_source = config_source(shared, &k, &v);
            c.name = StrBytes::from_string(k);
            c.value = msg(v);
            c
        })
        .collect()
}

/// CreateTopics.
pub(crate) async fn create_topics(shared: &Shared, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for t in &r.topics {
        let mut out = CreatableTopicResult::default();
        out.name = t.name.clone();
        out.error_message = None;
        out.configs = None;
        let name = t.name.as_str();
        let result = match plan_topic(shared, t) {
            Err(refusal) => Err(refusal),
            Ok((partitions, configs)) if r.validate_only => {
                validate_topic(shared, name, partitions, &configs)
                    .map(|()| None)
                    .map_err(Refusal::from)
                    .map(|d| (d, partitions))
            }
            Ok((partitions, configs)) => shared
                .broker
                .create_topic(name, partitions, configs)
                .await
                .map(|d| (Some(d), partitions))
                .map_err(Refusal::from),
        };
        match result {
            Ok((Some(d), _)) => {
                out.topic_id = d.id;
                out.num_partitions = d.partitions.len() as i32;
                out.replication_factor = 1;
                out.configs = Some(created_configs(shared, &d));
                tracing::info!(
                    topic = name,
                    partitions = d.partitions.len(),
                    "created topic over kafka"
                );
            }
            Ok((None, partitions)) => {
                out.num_partitions = partitions as i32;
                out.replication_factor = 1;
            }
            Err(Refusal(e, m)) => {
                out.error_code = e.code();
                out.error_message = msg(m);
            }
        }
        response.topics.push(out);
    }
    response
}

/// DeleteTopics, by name (v1–v5) or by name or id (v6).
pub(crate) async fn delete_topics(shared: &Shared, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let broker = &shared.broker;
    let mut response = DeleteTopicsResponse::default();
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = r
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    wanted.extend(r.topics.into_iter().map(|t| (t.name, t.topic_id)));
    for (name, id) in wanted {
        let mut out = DeletableTopicResult::default();
        out.topic_id = id;
        out.error_message = None;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let found = broker
                    .list_topics()
                    .into_iter()
                    .filter_map(|(n, _)| broker.describe_topic(&n).ok())
                    .find(|d| d.id == id);
                match found {
                    Some(d) => d.name,
                    None => {
                        out.name = None;
                        out.error_code = ResponseError::UnknownTopicId.code();
                        response.responses.push(out);
                        continue;
                    }
                }
            }
        };
        if let Err(e) = broker.delete_topic(&name).await {
            (out.error_code, out.error_message) = code_and_message(&e);
        } else {
            tracing::info!(topic = %name, "deleted topic over kafka");
        }
        out.name = Some(TopicName(StrBytes::from_string(name)));
        response.responses.push(out);
    }
    response
}

/// CreatePartitions: grows topics to a new total partition count.
pub(crate) async fn create_partitions(
    shared: &Shared,
    r: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let broker = &shared.broker;
    let node = shared.config.node_id;
    let mut response = CreatePartitionsResponse::default();
    for t in r.topics {
        let mut out = CreatePartitionsTopicResult::default();
        out.error_message = None;
        let name = t.name.to_string();
        out.name = t.name;
        let assignments_ok = t.assignments.as_ref().is_none_or(|a| {
            a.iter()
                .all(|a| a.broker_ids.len() == 1 && a.broker_ids[0].0 == node)
        });
        let result = if !assignments_ok {
            Err(Refusal::new(
                ResponseError::InvalidReplicaAssignment,
                format!("every partition must have exactly one replica, on node {node}"),
            ))
        } else {
            match u32::try_from(t.count) {
                Err(_) => Err(Refusal::new(
                    ResponseError::InvalidPartitions,
                    format!("{} partitions", t.count),
                )),
                Ok(count) if r.validate_only => broker
                    .describe_topic(&name)
                    .map_err(Refusal::from)
                    .and_then(|d| {
                        let now = d.partitions.len() as u32;
                        let max = broker.config().topic_partitions_max;
                        if count <= now || count > max {
                            Err(Refusal::new(
                                ResponseError::InvalidPartitions,
                                format!("topic has {now} partitions; the new count must be above that and at most {max}"),
                            ))
                        } else {
                            Ok(())
                        }
                    }),
                Ok(count) => broker
                    .create_partitions(&name, count)
                    .await
                    .map(|_| ())
                    .map_err(Refusal::from),
            }
        };
        if let Err(Refusal(e, m)) = result {
            out.error_code = e.code();
            out.error_message = msg(m);
        }
        response.results.push(out);
    }
    response
}

fn config_entry(
    name: String,
    value: String,
    source: i8,
    read_only: bool,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.config_type = if value.parse::<i64>().is_ok() {
        TYPE_LONG
    } else if value == "true" || value == "false" {
        TYPE_BOOLEAN
    } else {
        TYPE_STRING
    };
    c.name = StrBytes::from_string(name);
    c.value = msg(value);
    c.config_source = source;
    c.read_only = read_only;
    c.documentation = None;
    c
}

/// DescribeConfigs for topics (their settings under Kafka names) and this broker (the
/// few broker settings Kafka clients look at).
pub(crate) async fn describe_configs(
    shared: &Shared,
    r: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let broker = &shared.broker;
    let mut response = DescribeConfigsResponse::default();
    for res in r.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        out.error_message = None;
        let entries: Result<Vec<_>, Refusal> = match res.resource_type {
            RESOURCE_TOPIC => broker
                .describe_topic(&res.resource_name)
                .map(|d| {
                    configs::describe(&d.configs)
                        .into_iter()
                        .map(|(k, v)| {
                            let source = config_source(shared, &k, &v);
                            config_entry(k, v, source, false)
                        })
                        .collect()
                })
                .map_err(Refusal::from),
            RESOURCE_BROKER
                if res.resource_name.is_empty()
                    || res.resource_name.as_str() == shared.config.node_id.to_string() =>
            {
                let c = broker.config();
                Ok([
                    ("broker.id", shared.config.node_id.to_string()),
                    ("num.partitions", c.topic_partitions_default.to_string()),
                    (
                        "auto.create.topics.enable",
                        shared.config.auto_create_topics.to_string(),
                    ),
                    (
                        "message.max.bytes",
                        c.topic_defaults.batch_bytes_max.to_string(),
                    ),
                    ("default.replication.factor", "1".to_owned()),
                    ("fetch.max.bytes", c.fetch_bytes_max.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| config_entry(k.to_owned(), v, SOURCE_STATIC_BROKER, true))
                .collect())
            }
            RESOURCE_BROKER => Err(Refusal::new(
                ResponseError::InvalidRequest,
                format!("this is broker {}", shared.config.node_id),
            )),
            other => Err(Refusal::new(
                ResponseError::InvalidRequest,
                format!("resource type {other} is not supported"),
            )),
        };
        match entries {
            Ok(mut entries) => {
                // Null (or, leniently, empty) names every setting.
                if let Some(keys) = res.configuration_keys.as_ref().filter(|k| !k.is_empty()) {
                    entries.retain(|e| keys.contains(&e.name));
                }
                out.configs = entries;
            }
            Err(Refusal(e, m)) => {
                out.error_code = e.code();
                out.error_message = msg(m);
            }
        }
        response.results.push(out);
    }
    response
}

/// InitProducerId: a new producer id (epoch 0), or, when the client names its current
/// id and epoch (KIP-360), the same id with the next epoch. Transactional ids are refused:
/// Weir does not implement transactions.
pub(crate) async fn init_producer_id(
    shared: &Shared,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default();
    out.producer_id = (-1).into();
    out.producer_epoch = -1;
    if r.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        out.error_code = ResponseError::InvalidRequest.code();
        return out;
    }
    let current = (r.producer_id.0 >= 0).then_some((r.producer_id.0, r.producer_epoch));
    match shared.broker.init_producer_id(current).await {
        Ok((id, epoch)) => {
            out.producer_id = id.into();
            out.producer_epoch = epoch;
        }
        Err(e) => out.error_code = crate::errors::kafka_error(&e).code(),
    }
    out
}
