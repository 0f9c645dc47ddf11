//! One partition: its log, its fsync policy and the high-watermark signal long-polls wait on.

use std::sync::Arc;

use tokio::sync::watch;
use weir_storage::{FsyncPolicy, Log};

use crate::idempotence::ProducerStates;
use crate::read_ahead::ReadAheadSlot;

/// A partition of a topic, shared by produce, fetch and background tasks.
#[derive(Debug)]
pub(crate) struct Partition {
    /// The partition's log; internally synchronized.
    pub(crate) log: Arc<Log>,
    /// When appends reach the disk; decides what produce waits for.
    pub(crate) fsync: FsyncPolicy,
    /// Leader term stamped into every appended batch. A single node stays in term 0
    /// until clustering gives partitions real elections.
    pub(crate) leader_epoch: i32,
    /// Last published high watermark; fetches waiting for data subscribe to it.
    hw_tx: watch::Sender<i64>,
    /// Idempotent producers' sequence state (see `idempotence`); locked around the
    /// check-then-append of batches that carry a producer id, before the log's own lock.
    pub(crate) producers: parking_lot::Mutex<ProducerStates>,
    /// The next read of a consumer reading a backlog, started early (`read_ahead`).
    pub(crate) read_ahead: ReadAheadSlot,
}

impl Partition {
    /// Wraps an opened log; loads its producer state (blocking: may replay the log tail).
    pub(crate) fn new(log: Log, fsync: FsyncPolicy) -> Self {
        let (hw_tx, _) = watch::channel(log.high_watermark());
        let producers = parking_lot::Mutex::new(ProducerStates::load(&log));
        Self {
            log: Arc::new(log),
            fsync,
            leader_epoch: 0,
            hw_tx,
            producers,
            read_ahead: ReadAheadSlot::default(),
        }
    }

    /// Re-reads the log's high watermark and wakes fetches if it moved.
    pub(crate) fn publish_high_watermark(&self) {
        let hw = self.log.high_watermark();
        self.hw_tx.send_if_modified(|v| {
            if hw > *v {
                *v = hw;
                true
            } else {
                false
            }
        });
    }

    /// A receiver that changes when the high watermark moves.
    pub(crate) fn subscribe(&self) -> watch::Receiver<i64> {
        self.hw_tx.subscribe()
    }
}
