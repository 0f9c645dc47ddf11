//! The broker over a failing disk (`weir_storage::testing::FaultyDisk` injected through
//! `BrokerConfig::disk`): a failed fsync fails the partition for good (no retry that
//! would pretend the data is safe), a full disk is a clear, retriable error that damages
//! nothing, and corrupt stored data is reported to the reader, never served.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use weir_broker::{Acks, Broker, BrokerConfig, BrokerError, FetchPartitionSpec, FetchSpec};
use weir_record::{BatchBuilder, BatchIter, Record, records};
use weir_storage::FsDisk;
use weir_storage::testing::{FaultKind, FaultyDisk};

fn batch(values: &[&str]) -> BytesMut {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for v in values {
        b.push(Record {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        });
    }
    b.finish()
}

fn fetch_spec(partition: u32, offset: i64) -> FetchSpec {
    FetchSpec {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartitionSpec {
            topic: "t".into(),
            partition,
            offset,
            max_bytes: 1 << 20,
        }],
    }
}

/// Every value stored in a partition, read through the broker.
async fn values(broker: &Broker, partition: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = broker
            .fetch(fetch_spec(partition, offset))
            .await
            .expect("fetch");
        assert!(r[0].error.is_none(), "{:?}", r[0].error);
        if r[0].records.is_empty() {
            return out;
        }
        for b in BatchIter::new(&r[0].records) {
            let (_, bytes) = b.expect("batch");
            for rec in records(bytes).expect("valid batch") {
                let rec = rec.expect("record");
                if rec.offset >= offset {
                    out.push(String::from_utf8(rec.value.expect("value").to_vec()).expect("utf8"));
                    offset = rec.offset + 1;
                }
            }
        }
    }
}

async fn open_with(dir: &std::path::Path, disk: Arc<FaultyDisk>) -> Broker {
    let mut config = BrokerConfig::new(dir);
    config.disk = disk;
    Broker::open(config).await.expect("open broker")
}

/// A broker on a faultless-for-now disk, with topic "t" of `partitions` partitions and
/// "a", "b" acknowledged (acks=all) in partition 0.
async fn with_acknowledged_a_b(
    dir: &std::path::Path,
    partitions: u32,
) -> (Arc<FaultyDisk>, Broker) {
    let disk = Arc::new(FaultyDisk::new(Arc::new(FsDisk)));
    let broker = open_with(dir, disk.clone()).await;
    broker
        .create_topic("t", partitions, BTreeMap::new())
        .await
        .expect("create");
    broker
        .produce("t", 0, batch(&["a", "b"]), Acks::All, 0)
        .await
        .expect("acknowledged");
    (disk, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fails_the_partition_until_restart_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, broker) = with_acknowledged_a_b(dir.path(), 2).await;

    disk.fail_syncs_after(0, FaultKind::Eio);
    let failed = broker.produce("t", 0, batch(&["c"]), Acks::All, 0).await;
    assert!(
        matches!(
            failed,
            Err(BrokerError::PartitionFailed { partition: 0, .. })
        ),
        "{failed:?}"
    );
    // The disk works again, but the partition does not pretend the lost fsync happened.
    disk.clear_faults();
    for _ in 0..3 {
        let again = broker.produce("t", 0, batch(&["d"]), Acks::All, 0).await;
        assert!(
            matches!(again, Err(BrokerError::PartitionFailed { .. })),
            "{again:?}"
        );
    }
    // acks=leader is refused too: the partition takes no writes at all.
    let leader = broker.produce("t", 0, batch(&["e"]), Acks::Leader, 0).await;
    assert!(
        matches!(leader, Err(BrokerError::PartitionFailed { .. })),
        "{leader:?}"
    );
    // What was acknowledged stays readable; the other partition is unaffected.
    assert_eq!(values(&broker, 0).await, ["a", "b"]);
    broker
        .produce("t", 1, batch(&["x"]), Acks::All, 0)
        .await
        .expect("other partition works");
    broker.shutdown().await;
    drop(broker);

    // After a restart (the operator fixed the disk) the partition recovers from what is
    // really on disk and takes writes again.
    let broker = open_with(dir.path(), Arc::new(FaultyDisk::new(Arc::new(FsDisk)))).await;
    let v = values(&broker, 0).await;
    assert_eq!(&v[..2], ["a", "b"], "acknowledged records survive");
    broker
        .produce("t", 0, batch(&["f"]), Acks::All, 0)
        .await
        .expect("writable after restart");
    assert_eq!(values(&broker, 1).await, ["x"]);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_damages_nothing_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, broker) = with_acknowledged_a_b(dir.path(), 1).await;

    disk.fail_writes_after(0, FaultKind::Enospc);
    for acks in [Acks::All, Acks::Leader] {
        let full = broker.produce("t", 0, batch(&["lost"]), acks, 0).await;
        match full {
            Err(e @ BrokerError::DiskFull { .. }) => {
                assert!(e.to_string().contains("no space"), "{e}");
            }
            other => panic!("expected DiskFull, got {other:?}"),
        }
    }
    // Nothing written, nothing damaged, reads unaffected.
    assert_eq!(values(&broker, 0).await, ["a", "b"]);

    disk.clear_faults();
    let info = broker
        .produce("t", 0, batch(&["c"]), Acks::All, 0)
        .await
        .expect("writes resume once space is back");
    assert_eq!(info.base_offset, 2, "no gap where the failed writes were");
    assert_eq!(values(&broker, 0).await, ["a", "b", "c"]);
    broker.shutdown().await;
    drop(broker);

    let broker = open_with(dir.path(), disk).await;
    assert_eq!(values(&broker, 0).await, ["a", "b", "c"]);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stored_data_is_reported_to_the_reader_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::open(BrokerConfig::new(dir.path()))
        .await
        .expect("open");
    let small = BTreeMap::from([
        ("segment_bytes_max".to_owned(), "4096".to_owned()),
        ("batch_bytes_max".to_owned(), "2048".to_owned()),
    ]);
    broker.create_topic("t", 1, small).await.expect("create");
    let value = "v".repeat(300);
    for _ in 0..20 {
        broker
            .produce("t", 0, batch(&[&value, &value]), Acks::All, 0)
            .await
            .expect("produce");
    }
    broker.shutdown().await;
    drop(broker);

    // Flip one bit inside the second batch of the first (sealed) segment.
    let partition_dir = std::fs::read_dir(dir.path().join("topics"))
        .expect("topics")
        .flatten()
        .next()
        .expect("topic dir")
        .path()
        .join("0");
    let seg = partition_dir.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).expect("read");
    let first_len = BatchIter::new(&bytes)
        .next()
        .expect("batch")
        .expect("ok")
        .1
        .len();
    bytes[first_len + 100] ^= 0x04;
    std::fs::write(&seg, &bytes).expect("write");

    let broker = Broker::open(BrokerConfig::new(dir.path()))
        .await
        .expect("open");
    let r = broker.fetch(fetch_spec(0, 2)).await.expect("fetch");
    assert!(
        matches!(r[0].error, Some(BrokerError::CorruptData { .. })),
        "{:?}",
        r[0].error
    );
    assert!(
        r[0].records.is_empty(),
        "no bytes of a corrupt batch are served"
    );
    // Before the damage: served; far after it (another segment): served.
    let r = broker.fetch(fetch_spec(0, 0)).await.expect("fetch");
    assert!(r[0].error.is_none());
    assert_eq!(BatchIter::new(&r[0].records).count(), 1);
    let r = broker.fetch(fetch_spec(0, 38)).await.expect("fetch");
    assert!(r[0].error.is_none() && !r[0].records.is_empty());
    broker.shutdown().await;
}
