//! The records applications send and receive.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

/// A topic name that is cheap to clone: clones share one allocation.
///
/// A producer sending many records to one topic makes the name once and clones it into
/// each [`ProducerRecord`], which costs a reference count instead of a copy of the
/// string. It reads as a `&str` (`Deref`), compares with `str` and `String`, and is made
/// from either with `into()`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Topic(Arc<str>);

impl Topic {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are clones of one name (a pointer comparison).
    pub(crate) fn same(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Topic {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Topic {
    fn from(name: &str) -> Self {
        Topic(Arc::from(name))
    }
}

impl From<String> for Topic {
    fn from(name: String) -> Self {
        Topic(Arc::from(name))
    }
}

impl From<&String> for Topic {
    fn from(name: &String) -> Self {
        Topic(Arc::from(name.as_str()))
    }
}

impl From<Arc<str>> for Topic {
    fn from(name: Arc<str>) -> Self {
        Topic(name)
    }
}

impl From<&Topic> for Topic {
    fn from(name: &Topic) -> Self {
        name.clone()
    }
}

impl From<Topic> for String {
    fn from(name: Topic) -> Self {
        name.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Topic {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Topic {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Topic {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

/// A record to send. Build it with [`ProducerRecord::new`] and the `with_*` helpers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    /// Destination topic; clone one [`Topic`] into many records rather than building
    /// the name anew for each.
    pub topic: Topic,
    /// Explicit partition; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// Key; keyed records land on `murmur2(key)`'s partition (see [`crate::partition_for_key`]).
    pub key: Option<Bytes>,
    /// Value; `None` is a null value (a tombstone under compaction).
    pub value: Option<Bytes>,
    /// Headers, in order. Keys starting with `weir.` are reserved for Weir's features.
    pub headers: Vec<(String, Bytes)>,
    /// Create time in ms since the epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` (a `&str`, a `String` or a [`Topic`], which is the cheapest
    /// to pass: cloning one shares its name) with no key, value or headers.
    pub fn new(topic: impl Into<Topic>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// Sets the value.
    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Sets the create time (ms since the epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Upper bound of the bytes this record takes in a batch: payload plus the largest
    /// varint framing.
    pub(crate) fn size_bound_bytes(&self) -> usize {
        // length, attributes, timestamp delta, offset delta, key and value lengths,
        // header count: at most 5 + 1 + 10 + 5 + 5 + 5 + 5.
        const RECORD_FRAMING_BYTES_MAX: usize = 36;
        const HEADER_FRAMING_BYTES_MAX: usize = 10;
        let opt = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_FRAMING_BYTES_MAX)
            .sum();
        RECORD_FRAMING_BYTES_MAX + opt(&self.key) + opt(&self.value) + headers
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Topic,
    /// Partition.
    pub partition: u32,
    /// Offset of the record: the batch's base offset plus the record's index in it;
    /// -1 when sent with acks none (the server does not say).
    pub offset: i64,
    /// The record's create time (ms since the epoch).
    pub timestamp_ms: i64,
}

/// A record read by a [`Consumer`](crate::Consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic; the records of one fetch share one name (a [`Topic`] clone is a reference
    /// count, not a copy).
    pub topic: Topic,
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: i64,
    /// Create time (ms since the epoch).
    pub timestamp_ms: i64,
    /// Key, or `None` for a null key.
    pub key: Option<Bytes>,
    /// Value, or `None` for a null value.
    pub value: Option<Bytes>,
    /// Headers in order; a header value may be null.
    pub headers: Vec<(String, Option<Bytes>)>,
}
