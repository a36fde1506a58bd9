//! A stream's configuration: what it captures, how long it keeps it, how durably it writes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::record;

/// Retention limits; `None` is unlimited. The oldest messages go first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// At most this many messages.
    pub max_msgs: Option<u64>,
    /// At most this many bytes of records as stored (subject, headers, payload and 34 bytes of
    /// framing each).
    pub max_bytes: Option<u64>,
    /// Messages older than this (by their stored timestamp) are removed.
    #[serde(with = "opt_millis")]
    pub max_age: Option<Duration>,
}

/// What a stream at `max_msgs` or `max_bytes` does with a new message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Discard {
    /// Remove the oldest messages to make room.
    #[default]
    Old,
    /// Refuse the new message with [`AppendError::StreamFull`](crate::AppendError::StreamFull).
    New,
}

/// When an appended record counts as stored, and so when its completion fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SyncPolicy {
    /// After `fsync`: survives a power cut. Concurrent appends share one `fsync` (group commit).
    #[default]
    Always,
    /// After the write reaches the page cache; an `fsync` runs at least this often: a power cut
    /// loses at most the last interval, a process crash loses nothing.
    Interval(#[serde(with = "millis")] Duration),
    /// After the write reaches the page cache; the operating system decides when it reaches the
    /// disk.
    Os,
}

/// A stream's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream's name: 1 to 64 of `A-Z a-z 0-9 _ -` (it names a folder).
    pub name: String,
    /// The subjects it captures, wildcards allowed (at least one).
    pub subjects: Vec<String>,
    /// Retention limits.
    #[serde(default)]
    pub retention: Retention,
    /// What to do at a limit.
    #[serde(default)]
    pub discard: Discard,
    /// Durability of acknowledged appends.
    #[serde(default)]
    pub sync: SyncPolicy,
    /// The largest record accepted, framing included (default 8 MiB + 64 KiB).
    #[serde(default = "default_max_record")]
    pub max_record_size: u32,
    /// A segment file is closed and a new one started past this size (default 64 MiB).
    #[serde(default = "default_segment_size")]
    pub segment_size: u64,
    /// An append whose `mitto-msg-id` header repeats one stored this recently is not stored
    /// again (default 2 minutes; zero turns deduplication off).
    #[serde(default = "default_duplicate_window", with = "millis")]
    pub duplicate_window: Duration,
}

fn default_max_record() -> u32 {
    8 * 1024 * 1024 + 64 * 1024
}

fn default_segment_size() -> u64 {
    64 * 1024 * 1024
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

impl StreamConfig {
    /// A stream `name` capturing `subjects`, with the defaults: unlimited, discard old, fsync
    /// always.
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            retention: Retention::default(),
            discard: Discard::default(),
            sync: SyncPolicy::default(),
            max_record_size: default_max_record(),
            segment_size: default_segment_size(),
            duplicate_window: default_duplicate_window(),
        }
    }

    /// Sets the retention limits.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the discard policy.
    pub fn discard(mut self, discard: Discard) -> Self {
        self.discard = discard;
        self
    }

    /// Sets the sync policy.
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the largest record accepted.
    pub fn max_record_size(mut self, bytes: u32) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// Sets the size past which a new segment starts.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets the duplicate window (zero: no deduplication).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Whether this stream captures the literal subject `subject`.
    pub fn captures(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|f| mitto_proto::subject::matches(f, subject))
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_name(&self.name)?;
        if self.subjects.is_empty() {
            return Err(StoreError::InvalidConfig(
                "a stream needs at least one subject".into(),
            ));
        }
        for s in &self.subjects {
            mitto_proto::Subject::new(s)
                .map_err(|e| StoreError::InvalidConfig(format!("subject {s:?}: {e}")))?;
        }
        let min = record::OVERHEAD as u32 + 1;
        if self.max_record_size < min {
            return Err(StoreError::InvalidConfig(format!(
                "max_record_size must be at least {min}"
            )));
        }
        if self.segment_size < u64::from(self.max_record_size) + crate::segment::HEADER_LEN as u64
            || self.segment_size > MAX_SEGMENT
        {
            return Err(StoreError::InvalidConfig(format!(
                "segment_size must hold one max_record_size record and be at most {MAX_SEGMENT}"
            )));
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(StoreError::InvalidConfig(
                    "sync interval must not be zero".into(),
                ));
            }
        }
        if self.retention.max_msgs == Some(0) || self.retention.max_bytes == Some(0) {
            return Err(StoreError::InvalidConfig(
                "a retention limit of 0 keeps nothing".into(),
            ));
        }
        Ok(())
    }
}

/// The largest segment file (offsets in the sparse index are `u32`).
pub(crate) const MAX_SEGMENT: u64 = 1 << 31;

/// Checks a stream or consumer name: it names a file, so no dots, slashes or spaces.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_name_files_safely() {
        assert!(check_name("orders_v2-eu").is_ok());
        for bad in ["", "a.b", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(StoreError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn validation_refuses_what_cannot_work() {
        assert!(StreamConfig::new("s", ["a.>"]).validate().is_ok());
        assert!(StreamConfig::new("s", Vec::<String>::new())
            .validate()
            .is_err());
        assert!(StreamConfig::new("s", ["a..b"]).validate().is_err());
        assert!(StreamConfig::new("s", ["a"])
            .max_record_size(10)
            .validate()
            .is_err());
        assert!(StreamConfig::new("s", ["a"])
            .segment_size(100)
            .validate()
            .is_err());
        let zero = Retention {
            max_msgs: Some(0),
            ..Default::default()
        };
        assert!(StreamConfig::new("s", ["a"])
            .retention(zero)
            .validate()
            .is_err());
        let iv = SyncPolicy::Interval(Duration::ZERO);
        assert!(StreamConfig::new("s", ["a"]).sync(iv).validate().is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = StreamConfig::new("s", ["a.*", "b.>"])
            .retention(Retention {
                max_msgs: Some(5),
                max_bytes: None,
                max_age: Some(Duration::from_secs(60)),
            })
            .discard(Discard::New)
            .sync(SyncPolicy::Interval(Duration::from_millis(100)));
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<StreamConfig>(&j).unwrap(), c);
        assert!(c.captures("a.x") && c.captures("b.x.y") && !c.captures("a.x.y"));
    }
}
