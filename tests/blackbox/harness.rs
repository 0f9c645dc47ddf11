//! Helpers for the durability and pressure tests: finding the server's process, reading
//! its memory, producing and fetching by hand, and a small tmpfs that fills up.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_proto::{Request, Response, v1};

use crate::support::{RawClient, batch_of};

/// The pid of the `weir server` serving `data_dir` (found by its command line, which
/// names the data directory, unique per test).
pub fn server_pid(data_dir: &Path) -> u32 {
    let want = data_dir.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_server = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == want)
            && args.iter().any(|a| *a == b"server");
        if is_server {
            return pid;
        }
    }
    panic!("no weir server process for {}", data_dir.display());
}

/// Resident set size of a process, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Creates a topic with settings, panicking on failure.
pub fn create_topic_with(c: &mut RawClient, name: &str, partitions: u32, configs: &[(&str, &str)]) {
    let resp = c
        .call(&Request::CreateTopic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }))
        .expect("create topic");
    let Response::CreateTopic(r) = resp else {
        panic!("unexpected {resp:?}")
    };
    let st = r.status.unwrap_or_default();
    assert!(st.is_ok(), "create {name}: {st:?}");
}

/// One acks=all produce of `values` as one batch; the status and the base offset.
pub fn produce(
    c: &mut RawClient,
    topic: &str,
    partition: u32,
    values: &[Vec<u8>],
) -> (v1::Status, i64) {
    let resp = c
        .call(&Request::Produce(v1::ProduceRequest {
            topic: topic.into(),
            partition,
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
            records: batch_of(values).freeze(),
        }))
        .expect("produce");
    let Response::Produce(r) = resp else {
        panic!("unexpected {resp:?}")
    };
    (r.status.unwrap_or_default(), r.base_offset)
}

/// A fetch request for one partition from `offset`.
pub fn fetch_request(topic: &str, partition: u32, offset: i64, max_bytes: u32) -> Request {
    Request::Fetch(v1::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes,
        partitions: vec![v1::FetchPartition {
            topic: topic.into(),
            partition,
            offset,
            max_bytes,
        }],
    })
}

/// One fetch: the partition's status and records.
pub fn fetch_once(
    c: &mut RawClient,
    topic: &str,
    partition: u32,
    offset: i64,
) -> v1::FetchPartitionResult {
    let resp = c
        .call(&fetch_request(topic, partition, offset, 1 << 20))
        .expect("fetch");
    let Response::Fetch(mut f) = resp else {
        panic!("unexpected {resp:?}")
    };
    f.partitions.remove(0)
}

/// The directory of partition `partition` of the (only) topic whose name starts `topic~`.
pub fn partition_dir(data: &Path, topic: &str, partition: u32) -> PathBuf {
    std::fs::read_dir(data.join("topics"))
        .expect("topics dir")
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{topic}~"))
        })
        .expect("topic dir")
        .path()
        .join(partition.to_string())
}

/// A tmpfs of a fixed size mounted for one test; unmounted on drop.
pub struct Tmpfs {
    /// Mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `path`, or says why it
    /// cannot (not root, no permission in this container, no `mount`).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
