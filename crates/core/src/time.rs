//! `Timestamp`: UTC time with microsecond precision.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A UTC instant in microseconds since the Unix epoch.
///
/// Serialized as the integer number of microseconds (compact in capture files);
/// [`Timestamp::to_rfc3339`] and [`Timestamp::parse_rfc3339`] convert to and from
/// the RFC 3339 text that CloudEvents' `time` attribute uses.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The current wall-clock time.
    ///
    /// On Linux, read with `clock_gettime` (rustix over libc, which takes it
    /// from the vDSO: rustix's own vDSO parser crashes programs run under
    /// valgrind) and converted with one multiply: `SystemTime` goes through a
    /// checked subtraction and a `Duration` on the way, and a handled event
    /// reads the clock three times.
    pub fn now() -> Self {
        #[cfg(target_os = "linux")]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
            // Both fields are 32 bits on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            let (secs, nanos) = (i64::from(t.tv_sec), i64::from(t.tv_nsec));
            // tv_nsec is in 0..1e9 even before the epoch, so this floors.
            Timestamp(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
        }
        #[cfg(not(target_os = "linux"))]
        {
            use std::time::{SystemTime, UNIX_EPOCH};
            match SystemTime::now().duration_since(UNIX_EPOCH) {
                // Seconds and microseconds apart: no 128-bit arithmetic.
                Ok(d) => Timestamp(
                    i64::try_from(d.as_secs())
                        .unwrap_or(i64::MAX / 1_000_000)
                        .saturating_mul(1_000_000)
                        .saturating_add(i64::from(d.subsec_micros())),
                ),
                Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
            }
        }
    }

    /// From microseconds since the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// From milliseconds since the epoch (Kafka record timestamps).
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch, rounded down.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Signed microseconds from `earlier` to `self` (negative when `self` is earlier).
    pub const fn micros_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The duration from `earlier` to `self`, or zero when `self` is earlier.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.micros_since(earlier)).unwrap_or(0))
    }

    /// `self` plus a duration.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// RFC 3339 text in UTC with microseconds, e.g. `2026-11-25T21:07:15.123456Z`.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            None => format!("@{}us", self.0),
        }
    }

    /// Parses RFC 3339 text with any offset (`Z`, `+02:00`) and any fraction of a second.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_system_clock_in_microseconds() {
        let micros = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
        };
        let before = micros(std::time::SystemTime::now());
        let now = Timestamp::now().as_micros();
        let after = micros(std::time::SystemTime::now());
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn rfc3339_round_trip_keeps_microseconds() {
        let t = Timestamp::from_micros(1_764_104_835_123_456);
        let s = t.to_rfc3339();
        assert_eq!(s, "2025-11-25T21:07:15.123456Z");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
    }

    #[test]
    fn parses_offsets_and_other_precisions() {
        let a = Timestamp::parse_rfc3339("2025-11-25T23:07:15+02:00").unwrap();
        let b = Timestamp::parse_rfc3339("2025-11-25T21:07:15Z").unwrap();
        assert_eq!(a, b);
        let c = Timestamp::parse_rfc3339("2025-11-25T21:07:15.5Z").unwrap();
        assert_eq!(c.micros_since(b), 500_000);
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
