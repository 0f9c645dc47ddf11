//! `--disk-floor`: what the disk alone allows a durable acknowledgement at the bench's
//! rate, measured in the same run as the broker so both figures come from one window of
//! a machine whose disk changes by the hour.
//!
//! Messages of the bench's size fall due at its rate and are released in the steps the
//! bench's producers send them in (`step`: all that fell due during a step leave at its
//! end). One thread, with nothing else to do, appends every message released to a new
//! file and fdatasyncs it, again and again (perfect group commit: a message released
//! during an fdatasync goes into the next one). A message's figure is the time from its
//! release to the end of the first fdatasync that began after it. There is no network, no encoding and no broker,
//! so a broker with fsync `always` cannot acknowledge a typical message sooner at that
//! rate: the gap between the two medians is the broker's own. The tails compare less
//! well: the disk's slow fdatasyncs come in bursts, and the floor and the broker run one
//! after the other, so either may meet more of them.
//!
//! The thread waits for the next message by spinning once it is near, so timer slack
//! does not inflate the floor. The file's space is reserved and synced before the run, as
//! the broker reserves space ahead of an fsync `always` segment's appends: an fdatasync
//! that must also commit a grown file length would be slower than the broker's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::{Latency, histogram};

/// Most bytes the floor writes in one run; its file holds them until the run ends.
pub const FLOOR_BYTES_MAX: u64 = 1 << 30;
/// Closer than this to the next message, the thread spins instead of sleeping (a sleep
/// can overshoot by the kernel's timer slack, 50 µs by default).
const SPIN_BEFORE: Duration = Duration::from_micros(200);

/// What the floor measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskFloor {
    /// Falling due → end of the first fdatasync that began after it, per message.
    pub messages: Latency,
    /// Each fdatasync on its own.
    pub fdatasync: Latency,
}

/// What the floor runs: `messages` messages of `message_bytes` at `rate` per second,
/// released every `step` (at least 1 ns).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub rate: u64,
    pub messages: u64,
    pub message_bytes: u32,
    pub step: Duration,
}

/// Runs the floor in a new file under `dir` (removed at the end). Blocking.
pub fn measure(dir: &Path, pace: Pace) -> io::Result<DiskFloor> {
    let total = pace.messages.saturating_mul(u64::from(pace.message_bytes));
    if pace.rate == 0 || pace.messages == 0 || total > FLOOR_BYTES_MAX || pace.step.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the disk floor writes {total} bytes ({pace:?}); it takes 1 to \
                 {FLOOR_BYTES_MAX} bytes at a rate above 0 in steps above 0"
            ),
        ));
    }
    let path = dir.join(format!("weir-bench-disk-floor-{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _remove = RemoveOnDrop(path);
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, total) {
        // Where space cannot be reserved, the broker's segments grow with each write too.
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    file.sync_all()?;
    run(&file, pace)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(file: &File, pace: Pace) -> io::Result<DiskFloor> {
    let Pace {
        rate,
        messages,
        message_bytes,
        step,
    } = pace;
    let interval_ns = u128::from((1_000_000_000 / rate.max(1)).max(1));
    let step_ns = step.as_nanos().max(1);
    // Message `i` falls due at i × interval and leaves at the end of that step.
    let released_at = |i: u64| {
        let due = u128::from(i) * interval_ns;
        nanos(due.div_ceil(step_ns) * step_ns)
    };
    // How many messages have left by `t`: those due by the last step edge.
    let released_by = |t: Duration| {
        let edge = t.as_nanos() / step_ns * step_ns;
        u64::try_from(edge / interval_ns + 1).map_or(messages, |n| n.min(messages))
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut by_message = histogram();
    let mut by_sync = histogram();
    let start = Instant::now();
    let mut written = 0u64; // messages appended and synced so far
    let mut pos = 0u64;
    while written < messages {
        let now = start.elapsed();
        let due = released_by(now);
        if due <= written {
            let wait = released_at(written).saturating_sub(now);
            if wait > SPIN_BEFORE {
                std::thread::sleep(wait - SPIN_BEFORE);
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        let bytes = ((due - written) * u64::from(message_bytes)) as usize;
        buf.resize(bytes, b'x');
        file.write_all_at(&buf, pos)?;
        let began = Instant::now();
        file.sync_data()?;
        let ended = Instant::now();
        record(&mut by_sync, ended - began);
        let done = ended - start;
        for i in written..due {
            record(&mut by_message, done.saturating_sub(released_at(i)));
        }
        pos += bytes as u64;
        written = due;
    }
    Ok(DiskFloor {
        messages: Latency::from_histogram(&by_message).expect("at least one message"),
        fdatasync: Latency::from_histogram(&by_sync).expect("at least one fdatasync"),
    })
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(rate: u64, messages: u64, message_bytes: u32, step_us: u64) -> Pace {
        Pace {
            rate,
            messages,
            message_bytes,
            step: Duration::from_micros(step_us),
        }
    }

    #[test]
    fn every_message_is_counted_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure(dir.path(), pace(2_000, 200, 100, 1)).unwrap();
        assert_eq!(f.messages.count, 200);
        assert!(f.fdatasync.count >= 1 && f.fdatasync.count <= 200, "{f:?}");
        // A message cannot be durable before one fdatasync has run.
        assert!(f.messages.p50_us > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn messages_of_one_step_leave_together() {
        // 20,000/s in 5 ms steps: messages leave at 21 instants over 100 ms (100 at
        // each but the first), and an fdatasync starts only after a new one.
        let dir = tempfile::tempdir().unwrap();
        let f = measure(dir.path(), pace(20_000, 2_001, 100, 5_000)).unwrap();
        assert_eq!(f.messages.count, 2_001);
        assert!(f.fdatasync.count <= 21, "{f:?}");
    }

    #[test]
    fn refuses_more_than_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let e = measure(dir.path(), pace(5_000, FLOOR_BYTES_MAX, 2, 1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(measure(dir.path(), pace(0, 10, 100, 1)).is_err());
        assert!(measure(dir.path(), pace(10, 10, 100, 0)).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
