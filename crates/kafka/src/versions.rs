//! Which Kafka APIs, at which versions, this listener speaks; the `ApiVersions` answer.
//!
//! An API absent from [`SUPPORTED`] is absent from `ApiVersions`, and a request for it
//! closes the connection: a client never gets a half answer. The ranges stop below
//! versions whose semantics Weir does not have (topic ids in Produce v13 / Fetch v13,
//! transactions v2 in Produce v12 and InitProducerId v5, share groups), so a client falls
//! back to the newest version it and Weir both fully speak. Every range lies inside what
//! the pinned `kafka-protocol` crate can decode (checked by a test).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::errors::code;
use kafka_protocol::ResponseError;

/// `(api, lowest version, highest version)` for every API served.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
];

/// The supported version range of `api`, if it is served at all.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// The `ApiVersions` answer: every supported API, with `error` (0, or
/// `UNSUPPORTED_VERSION` when the client asked with a version above ours).
pub(crate) fn api_versions_response(error: Option<ResponseError>) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = code(error);
    r.api_keys = SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = api as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inside_what_the_codec_speaks() {
        for &(api, min, max) in SUPPORTED {
            let v = api.valid_versions();
            assert!(min <= max, "{api:?}");
            assert!(v.min <= min && max <= v.max, "{api:?} {min}..={max} vs {v}");
        }
    }
}
