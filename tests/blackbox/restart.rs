//! Restarts: topics and data survive a graceful stop, and a segment whose tail was cut at
//! a random byte is repaired at start-up, serving every whole batch before the cut.

use rand::Rng;
use weir_proto::{Request, Response, v1};

use crate::support::{RawClient, ServerProcess};

fn produce(c: &mut RawClient, topic: &str, partition: u32, values: &[Vec<u8>]) {
    let (status, _) = crate::harness::produce(c, topic, partition, values);
    assert!(status.is_ok());
}

/// Ten values of fixed width, so that every batch has the same size.
fn values(batch: usize) -> Vec<Vec<u8>> {
    (0..10)
        .map(|i| format!("b{batch:02}-r{i}").into_bytes())
        .collect()
}

#[test]
fn topics_and_data_survive_sigterm_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("keep", 2);
    c.create_topic("gone", 1);
    for b in 0..5 {
        produce(&mut c, "keep", (b % 2) as u32, &values(b));
    }
    let resp = c
        .call(&Request::DeleteTopic(v1::DeleteTopicRequest {
            name: "gone".into(),
        }))
        .expect("delete");
    let Response::DeleteTopic(d) = resp else {
        panic!("unexpected {resp:?}")
    };
    assert!(d.status.unwrap_or_default().is_ok());
    drop(c);
    let status = server.terminate();
    assert!(status.success(), "graceful exit, got {status:?}");
    assert!(server.log().contains("broker stopped"));

    let server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    let resp = c
        .call(&Request::ListTopics(v1::ListTopicsRequest {}))
        .expect("list");
    let Response::ListTopics(l) = resp else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<_> = l
        .topics
        .iter()
        .map(|t| (t.name.as_str(), t.partition_count))
        .collect();
    assert_eq!(names, [("keep", 2)]);
    assert_eq!(c.read_all("keep", 0).len(), 30);
    assert_eq!(c.read_all("keep", 1).len(), 20);
}

#[test]
fn segment_cut_at_a_random_byte_is_repaired_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    c.create_topic("cut", 1);
    for b in 0..20 {
        produce(&mut c, "cut", 0, &values(b));
    }
    drop(c);
    server.kill9();

    // The partition's only segment: cut it somewhere inside the data.
    let topic_dir = std::fs::read_dir(data.join("topics"))
        .expect("topics dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("cut~"))
        .expect("topic dir")
        .path();
    let segment = std::fs::read_dir(topic_dir.join("0"))
        .expect("partition dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("segment file");
    // Every batch is the same size: the first one's `batchLength` (bytes 8..12) + 12. The
    // file may be longer than its batches: fsync `always` reserves space ahead of them.
    let head = std::fs::read(&segment).expect("read segment");
    let batch_len = i32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    let batch_bytes = u64::try_from(batch_len).expect("positive length") + 12;
    let len = 20 * batch_bytes;
    assert!(head.len() as u64 >= len);
    let cut = rand::rng().random_range(1..len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(cut)
        .expect("truncate");

    let mut server = ServerProcess::start(&data);
    let mut c = RawClient::connect(server.addr).expect("connect");
    let stored = c.read_all("cut", 0);
    // The whole batches before the cut are known.
    let whole = (cut / batch_bytes) as usize;
    assert_eq!(stored.len(), whole * 10, "cut at {cut} of {len}");
    for (i, (offset, v)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(v, &format!("b{:02}-r{}", i / 10, i % 10).into_bytes());
    }
    // Appends continue right after the repaired tail.
    produce(&mut c, "cut", 0, &values(99));
    assert_eq!(c.read_all("cut", 0).len(), whole * 10 + 10);
    if cut % batch_bytes != 0 {
        assert!(
            server.log().to_lowercase().contains("trunc"),
            "repair is logged:\n{}",
            server.log()
        );
    }
    assert!(server.is_running());
}
