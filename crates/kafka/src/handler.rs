//! One request → the module that answers it → the encoded response.

use std::net::SocketAddr;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::FindCoordinatorRequest;
use kafka_protocol::messages::FindCoordinatorResponse;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use weir_proto::FrameParts;

use crate::codec::{self, EncodeError, Header, Request};
use crate::conn::{Reply, Shared};
use crate::{admin, fetch, groups, metadata, offsets, produce, versions};

/// The encoded response, or `None` (close the connection) when it could not be encoded.
pub(crate) fn reply<R: Encodable + HeaderVersion>(header: &Header, body: &R) -> Reply {
    answer(codec::encode_response(header, body).map(FrameParts::from))
}

/// `encoded`, or `None` (close the connection) when it could not be encoded.
fn answer(encoded: Result<FrameParts, EncodeError>) -> Reply {
    encoded
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot encode a kafka response; closing the connection");
        })
        .ok()
}

/// Runs one request from `peer` and encodes its answer.
pub(crate) async fn handle(
    shared: &Shared,
    header: &Header,
    request: Request,
    peer: SocketAddr,
) -> Reply {
    let v = header.version;
    match request {
        Request::ApiVersions(r) => {
            tracing::debug!(
                client = ?header.client_id,
                software = %r.client_software_name,
                software_version = %r.client_software_version,
                "kafka client connected"
            );
            reply(header, &versions::api_versions_response(None))
        }
        Request::Metadata(r) => reply(header, &metadata::metadata(shared, v, r).await),
        Request::Produce(r) => {
            // The dispatcher normally splits produce in two phases; this path answers it
            // whole for callers that do not care about order.
            let started = produce::start(shared, r).await;
            produce::finish(header, started).await
        }
        Request::Fetch(r) => answer(codec::encode_fetch_response(
            header,
            &fetch::fetch(shared, r).await,
        )),
        Request::ListOffsets(r) => reply(header, &offsets::list_offsets(shared, v, r).await),
        Request::OffsetForLeaderEpoch(r) => {
            reply(header, &offsets::offset_for_leader_epoch(shared, r).await)
        }
        Request::FindCoordinator(r) => reply(header, &find_coordinator(shared, v, r)),
        Request::CreateTopics(r) => reply(header, &admin::create_topics(shared, r).await),
        Request::DeleteTopics(r) => reply(header, &admin::delete_topics(shared, r).await),
        Request::CreatePartitions(r) => reply(header, &admin::create_partitions(shared, r).await),
        Request::DescribeConfigs(r) => reply(header, &admin::describe_configs(shared, r).await),
        Request::InitProducerId(r) => reply(header, &admin::init_producer_id(shared, r).await),
        Request::JoinGroup(r) => {
            let host = peer.ip().to_string();
            let answer = groups::join_group(shared, v, header.client_id.as_ref(), host, r).await;
            reply(header, &answer)
        }
        Request::SyncGroup(r) => reply(header, &groups::sync_group(shared, r).await),
        Request::Heartbeat(r) => reply(header, &groups::heartbeat(shared, r)),
        Request::LeaveGroup(r) => reply(header, &groups::leave_group(shared, v, r)),
        Request::OffsetCommit(r) => reply(header, &groups::offset_commit(shared, r).await),
        Request::OffsetFetch(r) => reply(header, &groups::offset_fetch(shared, v, r)),
        Request::ListGroups(r) => reply(header, &groups::list_groups(shared, r)),
        Request::DescribeGroups(r) => reply(header, &groups::describe_groups(shared, v, r)),
    }
}

/// Coordinator key types.
const KEY_TYPE_GROUP: i8 = 0;

/// FindCoordinator: this node coordinates every group. Transactions are not implemented,
/// so a transaction coordinator is refused with a message saying so.
fn find_coordinator(
    shared: &Shared,
    version: i16,
    r: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let cfg = &shared.config;
    let answer = |key: StrBytes| {
        let mut c = Coordinator::default();
        c.key = key;
        if r.key_type == KEY_TYPE_GROUP {
            c.node_id = cfg.node_id.into();
            c.host = StrBytes::from_string(cfg.advertised_host.clone());
            c.port = i32::from(cfg.advertised_port);
            c.error_message = None;
        } else {
            c.node_id = (-1).into();
            c.port = -1;
            c.error_code = ResponseError::InvalidRequest.code();
            c.error_message = Some(StrBytes::from_static_str(
                "weir has no transaction coordinator: transactions are not supported",
            ));
        }
        c
    };
    let mut out = FindCoordinatorResponse::default();
    if version >= 4 {
        out.error_message = None;
        out.coordinators = r.coordinator_keys.into_iter().map(answer).collect();
    } else {
        let c = answer(r.key);
        out.error_code = c.error_code;
        out.error_message = c.error_message;
        out.node_id = c.node_id;
        out.host = c.host;
        out.port = c.port;
    }
    out
}
