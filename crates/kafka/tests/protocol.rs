//! The Kafka listener over a real socket, driven by a minimal client built from the
//! `kafka-protocol` crate's client half: every supported API at every supported version
//! must answer with a response that decodes exactly (no bytes left over), plus the
//! connection rules (ordering, acks=0, bad requests closing only their connection) and
//! idempotent producers. Real Kafka clients are exercised by the black-box tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_broker::{Broker, BrokerConfig};
use weir_kafka::{KafkaConfig, KafkaListener};

/// A broker with a Kafka listener on an ephemeral port.
struct Server {
    addr: SocketAddr,
    broker: Broker,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::open(BrokerConfig::new(dir.path()))
            .await
            .expect("broker");
        let listener = KafkaListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr();
        let mut config = KafkaConfig::new("127.0.0.1");
        config.frame_bytes_max = 1024 * 1024;
        let stop = CancellationToken::new();
        tokio::spawn(listener.run(broker.clone(), config, stop.clone(), TaskTracker::new()));
        Server {
            addr,
            broker,
            stop,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A minimal Kafka client: one connection, typed requests, strict response decoding.
struct Client {
    stream: TcpStream,
    next_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            next_id: 1,
        }
    }

    async fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("weir-test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .expect("header");
        req.encode(&mut body, version).expect("request encodes");
        self.send_raw(&body).await;
        id
    }

    async fn send_raw(&mut self, body: &[u8]) {
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.put_slice(body);
        self.stream.write_all(&frame).await.expect("write");
    }

    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read_exact(&mut size))
            .await
            .expect("response within 30 s");
        read.ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    /// Reads the next response, which must answer `id`, and decodes it completely.
    async fn recv<R: Request>(&mut self, version: i16, id: i32) -> R::Response {
        let mut frame = self.read_frame().await.expect("a response");
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .expect("response header");
        assert_eq!(header.correlation_id, id, "responses come in request order");
        let resp = R::Response::decode(&mut frame, version).expect("response decodes");
        assert_eq!(
            frame.remaining(),
            0,
            "{:?} v{version}: bytes left after the response",
            ApiKey::try_from(R::KEY)
        );
        resp
    }

    async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let id = self.send(version, req).await;
        self.recv::<R>(version, id).await
    }

    /// Whether the server closed the connection (EOF or reset).
    async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn supported(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    // The ranges the listener announces (checked against ApiVersions in its own test).
    match api {
        ApiKey::Produce => 3..=11,
        ApiKey::Fetch => 4..=12,
        ApiKey::ListOffsets => 1..=6,
        ApiKey::Metadata => 0..=12,
        ApiKey::FindCoordinator => 0..=4,
        ApiKey::ApiVersions => 0..=4,
        ApiKey::CreateTopics => 2..=7,
        ApiKey::DeleteTopics => 1..=6,
        ApiKey::InitProducerId => 0..=4,
        ApiKey::OffsetForLeaderEpoch => 2..=4,
        ApiKey::DescribeConfigs => 1..=4,
        ApiKey::CreatePartitions => 0..=3,
        other => panic!("{other:?} not listed"),
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One record batch of `values` with key `k<i>` and a header, optionally compressed and
/// from an idempotent producer.
fn batch(values: &[&str], compression: Compression, producer: Option<(i64, i16, i32)>) -> Bytes {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let ts = now_ms();
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(format!("hv{i}"))),
            );
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: if seq < 0 { -1 } else { seq + i as i32 },
                timestamp: ts,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from((*v).to_owned())),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.transactional_id = None;
    r.acks = acks;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1024 * 1024;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.max_wait_ms = max_wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 4 * 1024 * 1024;
    r.topics = vec![t];
    r
}

fn create_topic_request(name: &str, partitions: i32) -> CreateTopicsRequest {
    let mut t = CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 10_000;
    r
}

/// (offset, key, value, headers) of one record.
type Decoded = (i64, String, String, Vec<(String, String)>);

/// Every value of a fetched partition, decoded.
fn values(records: &Bytes) -> Vec<Decoded> {
    let mut buf = records.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        let set = RecordBatchDecoder::decode(&mut buf).expect("batch decodes");
        for r in set.records {
            out.push((
                r.offset,
                String::from_utf8(r.key.unwrap_or_default().to_vec()).expect("utf8"),
                String::from_utf8(r.value.unwrap_or_default().to_vec()).expect("utf8"),
                r.headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8(v.clone().unwrap_or_default().to_vec())
                                .expect("utf8"),
                        )
                    })
                    .collect(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn api_versions_at_every_version_and_a_too_new_one() {
    let server = Server::start().await;
    let mut c = Client::connect(server.addr).await;
    for v in supported(ApiKey::ApiVersions) {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("weir-test");
        req.client_software_version = StrBytes::from_static_str("1");
        let resp = c.call(v, &req).await;
        assert_eq!(resp.error_code, 0, "v{v}");
        let produce = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .expect("produce listed");
        assert_eq!((produce.min_version, produce.max_version), (3, 11));
        assert!(
            !resp
                .api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::SaslHandshake as i16),
            "unsupported APIs are absent"
        );
    }
    // ApiVersions v9: header v2, body unknown. Answered at v0 with UNSUPPORTED_VERSION.
    let mut raw = BytesMut::new();
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(9);
    raw.put_i32(77);
    raw.put_i16(4);
    raw.put_slice(b"test");
    raw.put_u8(0); // no tagged fields
    raw.put_slice(&[1, 2, 3]); // a body nobody can read
    c.send_raw(&raw).await;
    let mut frame = c.read_frame().await.expect("answered");
    let header = ResponseHeader::decode(&mut frame, 0).expect("header v0");
    assert_eq!(header.correlation_id, 77);
    let resp = ApiVersionsResponse::decode(&mut frame, 0).expect("v0 body");
    assert_eq!(resp.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!resp.api_keys.is_empty());
    // The connection stays usable.
    let resp = c.call(3, &ApiVersionsRequest::default()).await;
    assert_eq!(resp.error_code, 0);
}

#[tokio::test]
async fn metadata_lists_and_auto_creates_topics_at_every_version() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("existing", 3, Default::default())
        .await
        .expect("create");
    let mut c = Client::connect(server.addr).await;
    for v in supported(ApiKey::Metadata) {
        let mut all = MetadataRequest::default();
        all.topics = if v == 0 { Some(Vec::new()) } else { None };
        all.include_topic_authorized_operations = v >= 8;
        all.include_cluster_authorized_operations = (8..=10).contains(&v);
        let resp = c.call(v, &all).await;
        assert_eq!(resp.brokers.len(), 1, "v{v}");
        assert_eq!(resp.brokers[0].port, i32::from(server.addr.port()));
        let t = resp
            .topics
            .iter()
            .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some("existing"))
            .expect("existing topic listed");
        assert_eq!(t.partitions.len(), 3, "v{v}");
        if v >= 8 {
            assert_ne!(
                t.topic_authorized_operations,
                i32::MIN,
                "v{v}: asked for, answered"
            );
        }
        assert_eq!(t.partitions[0].leader_id.0, 0);

        let mut one = MetadataRequest::default();
        let mut wanted = MetadataRequestTopic::default();
        let name = format!("auto-{v}");
        wanted.name = Some(topic_name(&name));
        one.topics = Some(vec![wanted]);
        one.allow_auto_topic_creation = true;
        let resp = c.call(v, &one).await;
        assert_eq!(resp.topics.len(), 1);
        assert_eq!(resp.topics[0].error_code, 0, "v{v}: auto-created");
        assert_eq!(resp.topics[0].partitions.len(), 1);
    }
    // From v4 on a client may forbid auto-creation.
    let mut one = MetadataRequest::default();
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(topic_name("not-created"));
    one.topics = Some(vec![wanted]);
    one.allow_auto_topic_creation = false;
    let resp = c.call(9, &one).await;
    assert_eq!(resp.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert!(server.broker.describe_topic("not-created").is_err());
}

#[tokio::test]
async fn produce_and_fetch_round_trip_at_every_version() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("t", 1, Default::default())
        .await
        .expect("create");
    let mut c = Client::connect(server.addr).await;
    let mut expected = 0i64;
    for v in supported(ApiKey::Produce) {
        let resp: ProduceResponse = c
            .call(
                v,
                &produce_request("t", 0, -1, batch(&["a", "b"], Compression::None, None)),
            )
            .await;
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce v{v}: {:?}", p.error_message);
        assert_eq!(p.base_offset, expected);
        expected += 2;
    }
    for v in supported(ApiKey::Fetch) {
        let resp: FetchResponse = c.call(v, &fetch_request("t", 0, 4, 100)).await;
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch v{v}");
        assert_eq!(p.high_watermark, expected);
        let got = values(p.records.as_ref().expect("records"));
        assert_eq!(
            got[0].0, 4,
            "fetch v{v} starts at the batch holding offset 4"
        );
        assert_eq!(got.len() as i64, expected - 4);
        assert_eq!(got[1].1, "k1");
        assert_eq!(got[1].2, "b");
        assert_eq!(got[1].3, vec![("h".to_owned(), "hv1".to_owned())]);
    }
    // Unknown topic and out-of-range offsets are per-partition errors.
    let resp: FetchResponse = c.call(12, &fetch_request("nope", 0, 0, 0)).await;
    assert_eq!(resp.responses[0].partitions[0].error_code, 3);
    let resp: FetchResponse = c.call(12, &fetch_request("t", 0, 1000, 0)).await;
    assert_eq!(resp.responses[0].partitions[0].error_code, 1);
    let resp: ProduceResponse = c
        .call(
            9,
            &produce_request("t", 7, 1, batch(&["x"], Compression::None, None)),
        )
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 3);
    // A corrupt batch (bad CRC) is CORRUPT_MESSAGE.
    let mut bad = BytesMut::from(&batch(&["x"], Compression::None, None)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let resp: ProduceResponse = c.call(9, &produce_request("t", 0, 1, bad.freeze())).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 2);
}

#[tokio::test]
async fn compressed_batches_are_stored_and_served_as_they_came() {
    let server = Server::start().await;
    let mut c = Client::connect(server.addr).await;
    let resp = c.call(7, &create_topic_request("z", 1)).await;
    assert_eq!(resp.topics[0].error_code, 0);
    let mut sent = Vec::new();
    for compression in [Compression::Gzip, Compression::Snappy, Compression::None] {
        let b = batch(&["one", "two", "three"], compression, None);
        let resp: ProduceResponse = c.call(9, &produce_request("z", 0, -1, b.clone())).await;
        assert_eq!(
            resp.responses[0].partition_responses[0].error_code, 0,
            "{compression:?}"
        );
        sent.push(b);
    }
    let resp: FetchResponse = c.call(12, &fetch_request("z", 0, 0, 100)).await;
    let records = resp.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    // Byte for byte, but for the two fields the broker patches in each batch: baseOffset
    // (bytes 0..8) and the partition leader epoch (12..16).
    let sent: Vec<u8> = sent.concat();
    assert_eq!(records.len(), sent.len());
    let mut at = 0;
    while at < sent.len() {
        let len =
            12 + i32::from_be_bytes(sent[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        assert_eq!(
            records[at + 8..at + 12],
            sent[at + 8..at + 12],
            "batch at {at}: length"
        );
        assert_eq!(
            records[at + 16..at + len],
            sent[at + 16..at + len],
            "batch at {at}: body"
        );
        at += len;
    }
    let got = values(&records);
    assert_eq!(got.len(), 9);
    assert_eq!(got[4].2, "two");
    assert_eq!(got[4].0, 4);
}

#[tokio::test]
async fn acks_zero_gets_no_answer_and_answers_keep_request_order() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("t", 1, Default::default())
        .await
        .expect("create");
    let mut c = Client::connect(server.addr).await;
    // A long-poll fetch first: later answers queue behind it.
    let fetch_id = c.send(12, &fetch_request("t", 0, 0, 500)).await;
    let _unanswered = c
        .send(
            9,
            &produce_request("t", 0, 0, batch(&["fire"], Compression::None, None)),
        )
        .await;
    let meta_id = c.send(12, &MetadataRequest::default()).await;
    let fetched: FetchResponse = c.recv::<FetchRequest>(12, fetch_id).await;
    assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
    let _ = c.recv::<MetadataRequest>(12, meta_id).await;
    // The acks=0 batch was appended all the same.
    let resp: FetchResponse = c.call(12, &fetch_request("t", 0, 0, 1000)).await;
    let got = values(
        resp.responses[0].partitions[0]
            .records
            .as_ref()
            .expect("records"),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, "fire");
}

/// The error code of an ApiVersions v3 call on `c`: 0 while the connection is served.
async fn api_versions_error(c: &mut Client) -> i16 {
    c.call(3, &ApiVersionsRequest::default()).await.error_code
}

/// Sends, on a new connection, a request header for `api` at `version` (correlation id 1,
/// no client id) followed by `rest`; whether the server then closed that connection.
async fn closes_after(addr: SocketAddr, api: ApiKey, version: i16, rest: &[u8]) -> bool {
    let mut c = Client::connect(addr).await;
    let mut raw = BytesMut::new();
    raw.put_i16(api as i16);
    raw.put_i16(version);
    raw.put_i32(1);
    raw.put_i16(-1);
    raw.put_slice(rest);
    c.send_raw(&raw).await;
    c.is_closed().await
}

#[tokio::test]
async fn bad_requests_close_only_their_connection() {
    let server = Server::start().await;
    let mut healthy = Client::connect(server.addr).await;
    assert_eq!(api_versions_error(&mut healthy).await, 0);

    // A metadata v1 body cut short: five topics announced, none follow.
    let five = 5i32.to_be_bytes();
    assert!(
        closes_after(server.addr, ApiKey::Metadata, 1, &five).await,
        "malformed body"
    );
    // An API that is not offered.
    assert!(
        closes_after(server.addr, ApiKey::SaslHandshake, 1, &[]).await,
        "unsupported api"
    );
    // A version outside the announced range (Produce v2 predates record batch v2).
    assert!(
        closes_after(server.addr, ApiKey::Produce, 2, &[0; 16]).await,
        "unsupported version"
    );

    // A frame above frame_bytes_max (1 MiB here), and a negative size.
    let mut c = Client::connect(server.addr).await;
    c.stream
        .write_all(&(2 * 1024 * 1024i32).to_be_bytes())
        .await
        .expect("write");
    assert!(c.is_closed().await, "frame too large");
    let mut c = Client::connect(server.addr).await;
    c.stream
        .write_all(&(-5i32).to_be_bytes())
        .await
        .expect("write");
    assert!(c.is_closed().await, "negative size");

    assert_eq!(api_versions_error(&mut healthy).await, 0);
}

/// Found by fuzzing (`kafka_request`): a 16-byte Metadata request announcing 771,751,952
/// topics made the decoder reserve tens of GiB and abort the whole process. Array counts
/// above the bytes left are now refused (third_party/kafka-protocol, ADR 0004), which
/// closes that connection only.
#[tokio::test]
async fn fuzz_found_huge_array_counts_are_refused_before_allocating() {
    let server = Server::start().await;
    // Metadata v0, the fuzzer's input: a classic array count of 0x2e000010.
    let classic = [0x2e, 0x00, 0x00, 0x10];
    assert!(
        closes_after(server.addr, ApiKey::Metadata, 0, &classic).await,
        "classic count"
    );
    // Metadata v12 (flexible): no tagged header fields, then a compact count of 2^32 - 2.
    let compact = [0x00, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(
        closes_after(server.addr, ApiKey::Metadata, 12, &compact).await,
        "compact count"
    );
    // The server is still there for everyone else.
    let mut healthy = Client::connect(server.addr).await;
    assert_eq!(api_versions_error(&mut healthy).await, 0);
}

#[tokio::test]
async fn list_offsets_and_leader_epochs_at_every_version() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("t", 1, Default::default())
        .await
        .expect("create");
    let mut c = Client::connect(server.addr).await;
    let before = now_ms();
    for _ in 0..3 {
        let resp: ProduceResponse = c
            .call(
                9,
                &produce_request("t", 0, -1, batch(&["a", "b"], Compression::None, None)),
            )
            .await;
        assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    }
    for v in supported(ApiKey::ListOffsets) {
        for (ts, want) in [
            (-2i64, Some(0i64)),
            (-1, Some(6)),
            (before - 1000, Some(0)),
            (i64::MAX / 2, None),
        ] {
            let mut p = ListOffsetsPartition::default();
            p.partition_index = 0;
            p.timestamp = ts;
            let mut t = ListOffsetsTopic::default();
            t.name = topic_name("t");
            t.partitions = vec![p];
            let mut r = ListOffsetsRequest::default();
            r.topics = vec![t];
            let resp = c.call(v, &r).await;
            let got = &resp.topics[0].partitions[0];
            assert_eq!(got.error_code, 0, "v{v} ts {ts}");
            assert_eq!(got.offset, want.unwrap_or(-1), "v{v} ts {ts}");
            if ts >= 0 && want.is_some() {
                assert!(got.timestamp >= before, "v{v}: the record's own timestamp");
            }
        }
    }
    for v in supported(ApiKey::OffsetForLeaderEpoch) {
        let mut p = OffsetForLeaderPartition::default();
        p.partition = 0;
        p.current_leader_epoch = 0;
        p.leader_epoch = 0;
        let mut t = OffsetForLeaderTopic::default();
        t.topic = topic_name("t");
        t.partitions = vec![p];
        let mut r = OffsetForLeaderEpochRequest::default();
        r.topics = vec![t];
        let resp = c.call(v, &r).await;
        let got = &resp.topics[0].partitions[0];
        assert_eq!(got.error_code, 0);
        assert_eq!((got.leader_epoch, got.end_offset), (0, 6));
    }
}

#[tokio::test]
async fn topic_admin_at_every_version() {
    let server = Server::start().await;
    let mut c = Client::connect(server.addr).await;
    for v in supported(ApiKey::CreateTopics) {
        let name = format!("made-{v}");
        let mut r = create_topic_request(&name, 2);
        let mut cfg = CreatableTopicConfig::default();
        cfg.name = StrBytes::from_static_str("retention.ms");
        cfg.value = Some(StrBytes::from_static_str("3600000"));
        r.topics[0].configs = vec![cfg];
        let resp = c.call(v, &r).await;
        assert_eq!(
            resp.topics[0].error_code, 0,
            "v{v}: {:?}",
            resp.topics[0].error_message
        );
        let again = c.call(v, &create_topic_request(&name, 2)).await;
        assert_eq!(again.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
        assert_eq!(
            server
                .broker
                .describe_topic(&name)
                .expect("exists")
                .partitions
                .len(),
            2
        );
    }
    let mut bad = create_topic_request("bad/name", 1);
    assert_eq!(
        c.call(7, &bad).await.topics[0].error_code,
        17,
        "INVALID_TOPIC_EXCEPTION"
    );
    bad = create_topic_request("rf3", 1);
    bad.topics[0].replication_factor = 3;
    assert_eq!(
        c.call(7, &bad).await.topics[0].error_code,
        38,
        "INVALID_REPLICATION_FACTOR"
    );
    bad = create_topic_request("cfg", 1);
    let mut cfg = CreatableTopicConfig::default();
    cfg.name = StrBytes::from_static_str("cleanup.policy");
    cfg.value = Some(StrBytes::from_static_str("compact"));
    bad.topics[0].configs = vec![cfg];
    assert_eq!(
        c.call(7, &bad).await.topics[0].error_code,
        40,
        "INVALID_CONFIG"
    );
    bad = create_topic_request("zero", 0);
    assert_eq!(
        c.call(7, &bad).await.topics[0].error_code,
        37,
        "INVALID_PARTITIONS"
    );
    let mut only = create_topic_request("validated", 1);
    only.validate_only = true;
    assert_eq!(c.call(7, &only).await.topics[0].error_code, 0);
    assert!(server.broker.describe_topic("validated").is_err());

    for v in supported(ApiKey::DescribeConfigs) {
        let mut res = DescribeConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = StrBytes::from_static_str("made-7");
        let mut broker_res = DescribeConfigsResource::default();
        broker_res.resource_type = 4;
        broker_res.resource_name = StrBytes::from_static_str("0");
        let mut r = DescribeConfigsRequest::default();
        r.resources = vec![res, broker_res];
        let resp = c.call(v, &r).await;
        let topic = &resp.results[0];
        assert_eq!(topic.error_code, 0);
        let retention = topic
            .configs
            .iter()
            .find(|e| e.name.as_str() == "retention.ms")
            .expect("retention.ms");
        assert_eq!(
            retention.value.as_ref().map(|v| v.to_string()).as_deref(),
            Some("3600000")
        );
        assert_eq!(resp.results[1].error_code, 0);
        assert!(!resp.results[1].configs.is_empty());
    }

    for v in supported(ApiKey::CreatePartitions) {
        let name = format!("made-{}", v + 2);
        let mut t = CreatePartitionsTopic::default();
        t.name = topic_name(&name);
        t.count = 5;
        t.assignments = None;
        let mut r = CreatePartitionsRequest::default();
        r.topics = vec![t.clone()];
        r.timeout_ms = 10_000;
        let resp = c.call(v, &r).await;
        assert_eq!(
            resp.results[0].error_code, 0,
            "v{v}: {:?}",
            resp.results[0].error_message
        );
        assert_eq!(
            server
                .broker
                .describe_topic(&name)
                .expect("exists")
                .partitions
                .len(),
            5
        );
        // Shrinking (or standing still) is INVALID_PARTITIONS.
        let resp = c.call(v, &r).await;
        assert_eq!(resp.results[0].error_code, 37);
    }

    for v in supported(ApiKey::DeleteTopics) {
        let name = format!("made-{}", v + 1);
        let mut r = DeleteTopicsRequest::default();
        if v >= 6 {
            let mut t = DeleteTopicState::default();
            t.name = Some(topic_name(&name));
            r.topics = vec![t];
        } else {
            r.topic_names = vec![topic_name(&name)];
        }
        r.timeout_ms = 10_000;
        let resp = c.call(v, &r).await;
        assert_eq!(resp.responses[0].error_code, 0, "v{v}");
        assert!(server.broker.describe_topic(&name).is_err());
        let again = c.call(v, &r).await;
        assert_eq!(
            again.responses[0].error_code, 3,
            "v{v}: UNKNOWN_TOPIC_OR_PARTITION"
        );
    }
}

#[tokio::test]
async fn find_coordinator_at_every_version() {
    let server = Server::start().await;
    let mut c = Client::connect(server.addr).await;
    for v in supported(ApiKey::FindCoordinator) {
        let mut r = FindCoordinatorRequest::default();
        if v >= 4 {
            r.coordinator_keys = vec![StrBytes::from_static_str("g1")];
        } else {
            r.key = StrBytes::from_static_str("g1");
        }
        let resp = c.call(v, &r).await;
        let (code, port) = if v >= 4 {
            (resp.coordinators[0].error_code, resp.coordinators[0].port)
        } else {
            (resp.error_code, resp.port)
        };
        assert_eq!(code, 0, "v{v}");
        assert_eq!(port, i32::from(server.addr.port()));
        // Transactions have no coordinator here.
        r.key_type = 1;
        let resp = c.call(v.max(1), &r).await;
        let code = if v >= 4 {
            resp.coordinators[0].error_code
        } else {
            resp.error_code
        };
        assert_ne!(code, 0, "v{v}");
    }
}

#[tokio::test]
async fn idempotent_producer_retries_are_written_once() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("idem", 1, Default::default())
        .await
        .expect("create");
    let mut c = Client::connect(server.addr).await;
    let mut pids = Vec::new();
    for v in supported(ApiKey::InitProducerId) {
        let mut r = InitProducerIdRequest::default();
        r.transactional_id = None;
        r.transaction_timeout_ms = 60_000;
        let resp = c.call(v, &r).await;
        assert_eq!(resp.error_code, 0, "v{v}");
        assert_eq!(resp.producer_epoch, 0);
        pids.push(resp.producer_id.0);
    }
    let mut sorted = pids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), pids.len(), "ids are unique: {pids:?}");
    let pid = pids[0];

    let send = |seq: i32, values: &[&str], epoch: i16| {
        produce_request(
            "idem",
            0,
            -1,
            batch(values, Compression::Gzip, Some((pid, epoch, seq))),
        )
    };
    let first: ProduceResponse = c.call(9, &send(0, &["a", "b"], 0)).await;
    assert_eq!(first.responses[0].partition_responses[0].base_offset, 0);
    let second: ProduceResponse = c.call(9, &send(2, &["c"], 0)).await;
    assert_eq!(second.responses[0].partition_responses[0].base_offset, 2);
    // A retry of the first batch: the original offset, nothing written.
    let retry: ProduceResponse = c.call(9, &send(0, &["a", "b"], 0)).await;
    let p = &retry.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    // A gap in the sequence.
    let gap: ProduceResponse = c.call(9, &send(9, &["x"], 0)).await;
    assert_eq!(
        gap.responses[0].partition_responses[0].error_code, 45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    // A bumped epoch (KIP-360) starts over at sequence 0; the old epoch is fenced.
    let mut bump = InitProducerIdRequest::default();
    bump.transactional_id = None;
    bump.producer_id = pid.into();
    bump.producer_epoch = 0;
    let bumped = c.call(4, &bump).await;
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (pid, 1));
    let fresh: ProduceResponse = c.call(9, &send(0, &["d"], 1)).await;
    assert_eq!(fresh.responses[0].partition_responses[0].base_offset, 3);
    let stale: ProduceResponse = c.call(9, &send(3, &["e"], 0)).await;
    assert_eq!(
        stale.responses[0].partition_responses[0].error_code, 47,
        "INVALID_PRODUCER_EPOCH"
    );

    let resp: FetchResponse = c.call(12, &fetch_request("idem", 0, 0, 100)).await;
    let got: Vec<String> = values(
        resp.responses[0].partitions[0]
            .records
            .as_ref()
            .expect("records"),
    )
    .into_iter()
    .map(|r| r.2)
    .collect();
    assert_eq!(got, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn producer_state_survives_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid;
    {
        let broker = Broker::open(BrokerConfig::new(dir.path()))
            .await
            .expect("open");
        broker
            .create_topic("idem", 1, Default::default())
            .await
            .expect("create");
        pid = broker.init_producer_id(None).await.expect("pid").0;
        for seq in [0, 1] {
            let b = batch(&["v"], Compression::None, Some((pid, 0, seq)));
            broker
                .produce("idem", 0, b.clone(), weir_broker::Acks::All, 0)
                .await
                .expect("produce");
        }
        // Stopped without the final snapshot: the snapshot written before the first
        // batch is empty, so both batches come back from the log.
        broker.begin_shutdown();
    }
    let broker = Broker::open(BrokerConfig::new(dir.path()))
        .await
        .expect("reopen");
    let retry = batch(&["v"], Compression::None, Some((pid, 0, 1)));
    let info = broker
        .produce("idem", 0, retry.clone(), weir_broker::Acks::All, 0)
        .await
        .expect("duplicate answered");
    assert_eq!(info.base_offset, 1, "duplicate gets its original offset");
    let gap = batch(&["v"], Compression::None, Some((pid, 0, 5)));
    let err = broker
        .produce("idem", 0, gap, weir_broker::Acks::All, 0)
        .await
        .expect_err("out of order");
    assert!(matches!(
        err,
        weir_broker::BrokerError::OutOfOrderSequence { expected: 2, .. }
    ));
    let next = broker.init_producer_id(None).await.expect("pid").0;
    assert_ne!(next, pid, "producer ids are not reused after a restart");
    // A clean shutdown writes the final snapshot; the next open replays nothing and still
    // knows the producer.
    broker.shutdown().await;
    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .expect("topics dir")
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()).expect("topic dir").flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".producers"))
        .collect();
    assert_eq!(snapshots.len(), 1, "one partition has idempotent producers");
    let broker = Broker::open(BrokerConfig::new(dir.path()))
        .await
        .expect("reopen");
    let info = broker
        .produce("idem", 0, retry.clone(), weir_broker::Acks::All, 0)
        .await
        .expect("duplicate answered");
    assert_eq!(info.base_offset, 1);
    let next = batch(&["v"], Compression::None, Some((pid, 0, 2)));
    let info = broker
        .produce("idem", 0, next, weir_broker::Acks::All, 0)
        .await
        .expect("in sequence");
    assert_eq!(info.base_offset, 2);
    broker.shutdown().await;
}

mod groups {
    use super::*;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
        LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
        SyncGroupRequest,
    };

    fn gid(s: &str) -> GroupId {
        GroupId(StrBytes::from_string(s.to_owned()))
    }

    fn join_request(group: &str, member: &str, metadata: &'static [u8]) -> JoinGroupRequest {
        let mut p = JoinGroupRequestProtocol::default();
        p.name = StrBytes::from_static_str("range");
        p.metadata = Bytes::from_static(metadata);
        let mut r = JoinGroupRequest::default();
        r.group_id = gid(group);
        r.session_timeout_ms = 10_000;
        r.rebalance_timeout_ms = 10_000;
        r.member_id = StrBytes::from_string(member.to_owned());
        r.group_instance_id = None;
        r.protocol_type = StrBytes::from_static_str("consumer");
        r.protocols = vec![p];
        r
    }

    /// Joins, answering MEMBER_ID_REQUIRED by joining again with the id, as clients do.
    async fn join(
        c: &mut Client,
        v: i16,
        group: &str,
        member: &str,
        metadata: &'static [u8],
    ) -> JoinGroupResponse {
        let resp = c.call(v, &join_request(group, member, metadata)).await;
        if resp.error_code == 79 {
            assert!(v >= 4, "MEMBER_ID_REQUIRED only from v4 on");
            let id = resp.member_id.to_string();
            return c.call(v, &join_request(group, &id, metadata)).await;
        }
        resp
    }

    fn sync_request(
        group: &str,
        generation: i32,
        member: &str,
        assignments: &[(&str, &'static [u8])],
    ) -> SyncGroupRequest {
        let mut r = SyncGroupRequest::default();
        r.group_id = gid(group);
        r.generation_id = generation;
        r.member_id = StrBytes::from_string(member.to_owned());
        r.group_instance_id = None;
        r.protocol_type = Some(StrBytes::from_static_str("consumer"));
        r.protocol_name = Some(StrBytes::from_static_str("range"));
        r.assignments = assignments
            .iter()
            .map(|(m, a)| {
                let mut x = SyncGroupRequestAssignment::default();
                x.member_id = StrBytes::from_string((*m).to_owned());
                x.assignment = Bytes::from_static(a);
                x
            })
            .collect();
        r
    }

    fn heartbeat_request(group: &str, generation: i32, member: &str) -> HeartbeatRequest {
        let mut r = HeartbeatRequest::default();
        r.group_id = gid(group);
        r.generation_id = generation;
        r.member_id = StrBytes::from_string(member.to_owned());
        r.group_instance_id = None;
        r
    }

    fn commit_request(
        group: &str,
        generation: i32,
        member: &str,
        offset: i64,
    ) -> OffsetCommitRequest {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = 0;
        p.committed_offset = offset;
        p.committed_metadata = Some(StrBytes::from_static_str("meta"));
        let mut t = OffsetCommitRequestTopic::default();
        t.name = topic_name("t");
        t.partitions = vec![p];
        let mut r = OffsetCommitRequest::default();
        r.group_id = gid(group);
        r.generation_id_or_member_epoch = generation;
        r.member_id = StrBytes::from_string(member.to_owned());
        r.group_instance_id = None;
        r.topics = vec![t];
        r
    }

    /// The committed offset of t/0 for `group`, read with OffsetFetch `v`.
    async fn committed(c: &mut Client, v: i16, group: &str) -> i64 {
        let mut r = OffsetFetchRequest::default();
        if v >= 8 {
            let mut t = OffsetFetchRequestTopics::default();
            t.name = topic_name("t");
            t.partition_indexes = vec![0];
            let mut g = OffsetFetchRequestGroup::default();
            g.group_id = gid(group);
            g.topics = Some(vec![t]);
            r.groups = vec![g];
            r.topics = Some(Vec::new());
        } else {
            let mut t = OffsetFetchRequestTopic::default();
            t.name = topic_name("t");
            t.partition_indexes = vec![0];
            r.group_id = gid(group);
            r.topics = Some(vec![t]);
        }
        let resp = c.call(v, &r).await;
        if v >= 8 {
            assert_eq!(resp.groups[0].error_code, 0);
            let p = &resp.groups[0].topics[0].partitions[0];
            assert_eq!(p.error_code, 0);
            p.committed_offset
        } else {
            assert_eq!(resp.error_code, 0);
            let p = &resp.topics[0].partitions[0];
            assert_eq!(p.error_code, 0);
            p.committed_offset
        }
    }

    #[tokio::test]
    async fn a_member_joins_syncs_commits_and_leaves_at_every_version() {
        let server = Server::start().await;
        server
            .broker
            .create_topic("t", 1, Default::default())
            .await
            .expect("create");
        let mut c = Client::connect(server.addr).await;
        for v in 0..=9i16 {
            let group = format!("g{v}");
            let joined = join(&mut c, v, &group, "", b"meta-a").await;
            assert_eq!(joined.error_code, 0, "join v{v}");
            let me = joined.member_id.to_string();
            assert_eq!(joined.leader.as_str(), me, "the only member leads");
            assert_eq!(joined.members.len(), 1);
            assert_eq!(&joined.members[0].metadata[..], b"meta-a");
            assert_eq!(
                joined
                    .protocol_name
                    .as_ref()
                    .map(|p| p.to_string())
                    .as_deref(),
                Some("range")
            );
            let gen_id = joined.generation_id;

            let sv = v.min(5);
            let synced = c
                .call(
                    sv,
                    &sync_request(&group, gen_id, &me, &[(&me, b"assigned")]),
                )
                .await;
            assert_eq!(synced.error_code, 0, "sync v{sv}");
            assert_eq!(&synced.assignment[..], b"assigned");

            let hv = v.min(4);
            let hb = c.call(hv, &heartbeat_request(&group, gen_id, &me)).await;
            assert_eq!(hb.error_code, 0, "heartbeat v{hv}");
            let stale = c
                .call(hv, &heartbeat_request(&group, gen_id + 5, &me))
                .await;
            assert_eq!(stale.error_code, 22, "ILLEGAL_GENERATION");

            let cv = v.clamp(2, 9);
            let commit = c
                .call(cv, &commit_request(&group, gen_id, &me, 42 + i64::from(v)))
                .await;
            assert_eq!(commit.topics[0].partitions[0].error_code, 0, "commit v{cv}");
            let fv = v.clamp(1, 9);
            assert_eq!(
                committed(&mut c, fv, &group).await,
                42 + i64::from(v),
                "fetch v{fv}"
            );

            let dv = v.min(5);
            let mut d = DescribeGroupsRequest::default();
            d.groups = vec![gid(&group), gid("nobody")];
            let described = c.call(dv, &d).await;
            assert_eq!(described.groups[0].error_code, 0);
            assert_eq!(described.groups[0].group_state.as_str(), "Stable");
            assert_eq!(described.groups[0].members.len(), 1);
            assert_eq!(
                &described.groups[0].members[0].member_assignment[..],
                b"assigned"
            );
            assert_eq!(described.groups[1].group_state.as_str(), "Dead");

            let lv = v.min(5);
            let listed = c.call(lv, &ListGroupsRequest::default()).await;
            assert_eq!(listed.error_code, 0);
            assert!(
                listed.groups.iter().any(|g| g.group_id.as_str() == group),
                "list v{lv}"
            );

            let leave_v = v.min(5);
            let mut leave = LeaveGroupRequest::default();
            leave.group_id = gid(&group);
            if leave_v >= 3 {
                let mut m = MemberIdentity::default();
                m.member_id = StrBytes::from_string(me.clone());
                m.group_instance_id = None;
                leave.members = vec![m];
            } else {
                leave.member_id = StrBytes::from_string(me.clone());
            }
            let left = c.call(leave_v, &leave).await;
            assert_eq!(left.error_code, 0, "leave v{leave_v}");
            if leave_v >= 3 {
                assert_eq!(left.members[0].error_code, 0);
            }
            // Committed offsets outlive the membership.
            assert_eq!(committed(&mut c, fv, &group).await, 42 + i64::from(v));
        }
    }

    #[tokio::test]
    async fn a_second_member_triggers_a_rebalance() {
        let server = Server::start().await;
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        let first = join(&mut a, 9, "rb", "", b"a").await;
        let a_id = first.member_id.to_string();
        let synced = a
            .call(
                5,
                &sync_request("rb", first.generation_id, &a_id, &[(&a_id, b"all")]),
            )
            .await;
        assert_eq!(synced.error_code, 0);

        // B's join parks until A joins again; A learns about it from its heartbeat.
        let b_first = b.call(9, &join_request("rb", "", b"b")).await;
        assert_eq!(b_first.error_code, 79, "MEMBER_ID_REQUIRED");
        let b_id = b_first.member_id.to_string();
        let b_join = b.send(9, &join_request("rb", &b_id, b"b")).await;
        let mut rebalancing = false;
        for _ in 0..100 {
            let hb = a
                .call(4, &heartbeat_request("rb", first.generation_id, &a_id))
                .await;
            if hb.error_code == 27 {
                rebalancing = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rebalancing, "REBALANCE_IN_PROGRESS reaches the old member");
        let a_again = a.call(9, &join_request("rb", &a_id, b"a")).await;
        let b_again = b.recv::<JoinGroupRequest>(9, b_join).await;
        assert_eq!(a_again.error_code, 0);
        assert_eq!(b_again.error_code, 0);
        assert_eq!(a_again.generation_id, first.generation_id + 1);
        assert_eq!(a_again.generation_id, b_again.generation_id);
        let leader_sees = if a_again.leader.as_str() == a_id {
            &a_again
        } else {
            &b_again
        };
        assert_eq!(leader_sees.members.len(), 2, "the leader sees both members");
    }

    #[tokio::test]
    async fn standalone_commits_at_every_version() {
        let server = Server::start().await;
        server
            .broker
            .create_topic("t", 1, Default::default())
            .await
            .expect("create");
        let mut c = Client::connect(server.addr).await;
        for v in 2..=9i16 {
            let resp = c
                .call(v, &commit_request("solo", -1, "", 100 + i64::from(v)))
                .await;
            assert_eq!(resp.topics[0].partitions[0].error_code, 0, "v{v}");
            for fv in 1..=9 {
                assert_eq!(committed(&mut c, fv, "solo").await, 100 + i64::from(v));
            }
        }
        // No committed offset: -1, no error.
        assert_eq!(committed(&mut c, 7, "never-committed").await, -1);
        // A commit for a partition that does not exist.
        let mut bad = commit_request("solo", -1, "", 1);
        bad.topics[0].name = topic_name("missing");
        let resp = c.call(8, &bad).await;
        assert_eq!(resp.topics[0].partitions[0].error_code, 3);
    }
}

#[tokio::test]
async fn a_long_poll_fetch_returns_when_data_arrives() {
    let server = Server::start().await;
    server
        .broker
        .create_topic("lp", 1, Default::default())
        .await
        .expect("create");
    let mut consumer = Client::connect(server.addr).await;
    let mut producer = Client::connect(server.addr).await;
    let started = std::time::Instant::now();
    let id = consumer.send(12, &fetch_request("lp", 0, 0, 20_000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp: ProduceResponse = producer
        .call(
            9,
            &produce_request("lp", 0, -1, batch(&["wake"], Compression::None, None)),
        )
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    let fetched: FetchResponse = consumer.recv::<FetchRequest>(12, id).await;
    let got = values(
        fetched.responses[0].partitions[0]
            .records
            .as_ref()
            .expect("records"),
    );
    assert_eq!(got[0].2, "wake");
    // Answered by the append, not by the 20 s wait running out.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
