//! The `*_ms` settings of the configuration file: an integer count of milliseconds, or a
//! duration written for people (`"5s"`, `"100ms"`, `"1h 30m"`).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// Deserializes milliseconds from an integer or a humantime string.
pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_any(Millis(PhantomData))
}

struct Millis<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Millis<T> {
    fn fit<E: de::Error>(ms: u64) -> Result<T, E> {
        T::try_from(ms).map_err(|_| E::custom(format!("{ms} ms is too long")))
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for Millis<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("milliseconds, or a duration such as \"5s\", \"100ms\" or \"1m 30s\"")
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> Result<T, E> {
        Self::fit(ms)
    }

    fn visit_i64<E: de::Error>(self, ms: i64) -> Result<T, E> {
        let ms = u64::try_from(ms).map_err(|_| E::custom(format!("{ms}: a negative duration")))?;
        Self::fit(ms)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        let d = humantime::parse_duration(s).map_err(|e| {
            E::custom(format!(
                "{s:?}: {e} (write milliseconds, or a duration such as \"5s\" or \"100ms\")"
            ))
        })?;
        Self::fit(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
