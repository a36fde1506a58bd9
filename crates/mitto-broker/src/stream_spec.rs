//! A stream's configuration as an operator writes it: a `[[stream]]` table in the broker's
//! TOML, or the JSON body of `$MITTO.STREAM.CREATE` / `UPDATE` (the same fields).

use mitto_store::{Discard, Retention, StreamConfig, SyncPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a full stream does with a new message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscardName {
    /// Remove the oldest messages.
    #[default]
    Old,
    /// Refuse the new one (BACKPRESSURE_REJECTION to an acknowledged publish).
    New,
}

/// When an acknowledged publish to the stream is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncName {
    /// After `fsync` (concurrent publishes share one).
    #[default]
    Always,
    /// After the write; an `fsync` at least every `fsync_interval`.
    Interval,
    /// After the write; the operating system flushes when it wants.
    Os,
}

/// One stream (`[[stream]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ -` (in an admin body: optional, the subject names it).
    #[serde(default)]
    pub name: String,
    /// Subjects captured (wildcards allowed); no two streams may capture the same subject.
    pub subjects: Vec<String>,
    /// At most this many messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msgs: Option<u64>,
    /// At most this many bytes as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Messages older than this go (humantime: `90s`, `24h`, `7days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// At `max_msgs` or `max_bytes`: `old` (default) or `new`.
    #[serde(default)]
    pub discard: DiscardName,
    /// `always` (default), `interval` or `os`.
    #[serde(default)]
    pub fsync: FsyncName,
    /// With `fsync = "interval"`: how often (default `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_interval: Option<String>,
    /// A publish whose `mitto-msg-id` header repeats one stored this recently is not stored
    /// again (default `2m`; `0s` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_window: Option<String>,
}

fn duration(field: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{field} {v:?}: {e}"))
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl StreamSpec {
    /// The store's configuration (the spec checked: durations parse).
    pub(crate) fn to_store(&self) -> Result<StreamConfig, String> {
        let max_age = match &self.max_age {
            Some(v) => Some(duration("max_age", v)?),
            None => None,
        };
        let interval = match &self.fsync_interval {
            Some(v) => duration("fsync_interval", v)?,
            None => Duration::from_millis(100),
        };
        if self.fsync_interval.is_some() && self.fsync != FsyncName::Interval {
            return Err("fsync_interval needs fsync = \"interval\"".into());
        }
        let sync = match self.fsync {
            FsyncName::Always => SyncPolicy::Always,
            FsyncName::Interval => SyncPolicy::Interval(interval),
            FsyncName::Os => SyncPolicy::Os,
        };
        let discard = match self.discard {
            DiscardName::Old => Discard::Old,
            DiscardName::New => Discard::New,
        };
        let mut cfg = StreamConfig::new(&self.name, self.subjects.clone());
        if let Some(v) = &self.duplicate_window {
            cfg = cfg.duplicate_window(duration("duplicate_window", v)?);
        }
        Ok(cfg
            .retention(Retention {
                max_msgs: self.max_msgs,
                max_bytes: self.max_bytes,
                max_age,
            })
            .discard(discard)
            .sync(sync))
    }

    /// The spec of a stored configuration.
    pub(crate) fn of(c: &StreamConfig) -> StreamSpec {
        let (fsync, fsync_interval) = match c.sync {
            SyncPolicy::Interval(d) => (FsyncName::Interval, Some(human(d))),
            SyncPolicy::Os => (FsyncName::Os, None),
            _ => (FsyncName::Always, None),
        };
        StreamSpec {
            name: c.name.clone(),
            subjects: c.subjects.clone(),
            max_msgs: c.retention.max_msgs,
            max_bytes: c.retention.max_bytes,
            max_age: c.retention.max_age.map(human),
            discard: match c.discard {
                Discard::New => DiscardName::New,
                _ => DiscardName::Old,
            },
            fsync,
            fsync_interval,
            duplicate_window: Some(human(c.duplicate_window)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_table_becomes_a_store_config() {
        let s: StreamSpec = toml::from_str(
            r#"name = "orders"
subjects = ["orders.>"]
max_msgs = 10
max_age = "1h"
discard = "new"
fsync = "interval"
fsync_interval = "50ms"
duplicate_window = "10s""#,
        )
        .unwrap();
        let c = s.to_store().unwrap();
        assert_eq!(c.retention.max_msgs, Some(10));
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.discard, Discard::New);
        assert_eq!(c.sync, SyncPolicy::Interval(Duration::from_millis(50)));
        assert_eq!(c.duplicate_window, Duration::from_secs(10));
        assert_eq!(StreamSpec::of(&c).to_store().unwrap(), c);
    }

    #[test]
    fn bad_durations_and_fields_are_refused() {
        let mut s = StreamSpec {
            name: "s".into(),
            subjects: vec!["a".into()],
            max_age: Some("soon".into()),
            ..StreamSpec::default()
        };
        assert!(s.to_store().unwrap_err().contains("max_age"));
        s.max_age = None;
        s.fsync_interval = Some("1s".into());
        assert!(s.to_store().is_err());
        assert!(toml::from_str::<StreamSpec>("subjects = [\"a\"]\nfsynk = \"os\"").is_err());
    }
}
