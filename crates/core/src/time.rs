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
    #[inline]
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
    ///
    /// The shape choreo and most producers write (`2025-11-24T16:00:00.123456Z`:
    /// UTC, up to nine digits of fraction) is read by hand, in a few
    /// nanoseconds; anything else by chrono. Both give the same instant, and
    /// refuse the same text (a test compares them).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        if let Some(t) = Self::parse_plain_utc(s.as_bytes()) {
            return Some(t);
        }
        let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }

    /// `YYYY-MM-DDTHH:MM:SS[.F]Z` with one to nine digits of fraction,
    /// a real date and a second below 60; `None` for anything else
    /// (lower-case letters, a space, an offset, a leap second: chrono's
    /// to judge).
    fn parse_plain_utc(b: &[u8]) -> Option<Timestamp> {
        let (&last, b) = b.split_last()?;
        let (head, rest) = b.split_first_chunk::<19>()?;
        if last != b'Z' || rest.len() > 10 {
            return None;
        }
        let d = |i: usize| head[i].wrapping_sub(b'0');
        const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
        if DIGITS.iter().fold(0, |bad, &i| bad | u8::from(d(i) > 9)) != 0
            || [head[4], head[7], head[10], head[13], head[16]] != *b"--T::"
        {
            return None;
        }
        let two = |i: usize| i64::from(d(i)) * 10 + i64::from(d(i + 1));
        let year = two(0) * 100 + two(2);
        let (month, day) = (two(5), two(8));
        let (hour, minute, second) = (two(11), two(14), two(17));
        let mut micros = 0;
        if let Some((&dot, fraction)) = rest.split_first() {
            if dot != b'.' || fraction.is_empty() {
                return None;
            }
            let mut nanos = 0;
            for &c in fraction {
                let digit = c.wrapping_sub(b'0');
                if digit > 9 {
                    return None;
                }
                nanos = nanos * 10 + i64::from(digit);
            }
            // Scaled to nine digits, then cut to six.
            const SCALE: [i64; 10] = [
                0,
                100_000_000,
                10_000_000,
                1_000_000,
                100_000,
                10_000,
                1_000,
                100,
                10,
                1,
            ];
            micros = nanos * SCALE[fraction.len()] / 1_000;
        }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in_month = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return None,
        };
        if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let seconds =
            days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
        Some(Timestamp(seconds * 1_000_000 + micros))
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (year 0 to 9999), by counting 400-year eras from 0000-03-01.
#[inline]
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    /// chrono alone, as `parse_rfc3339` read before its fast path.
    fn by_chrono(s: &str) -> Option<Timestamp> {
        let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }

    /// Every instant from year 0 to 9999, with every length of fraction,
    /// and the same text damaged a byte at a time: the fast path reads what
    /// chrono reads, and takes nothing chrono refuses.
    #[test]
    fn the_plain_shape_reads_as_chrono_reads_it() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3339);
        const ODD: &[u8] = b"0123456789-:T.Zzt +";
        let (mut fast, mut total) = (0, 0);
        for _ in 0..300_000 {
            let secs = rng.random_range(-62_167_219_200i64..253_402_300_800);
            let nanos = rng.random_range(0..1_000_000_000u32);
            let at = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let digits = rng.random_range(0..=10);
            let mut text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                let f = format!("{nanos:09}0");
                text.push('.');
                text.push_str(&f[..digits]);
            }
            text.push('Z');
            let mut bytes = text.into_bytes();
            let damaged = rng.random_bool(0.4);
            if damaged {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = ODD[rng.random_range(0..ODD.len())];
            }
            let text = String::from_utf8(bytes).unwrap();
            total += 1;
            let fast_read = Timestamp::parse_plain_utc(text.as_bytes());
            let chrono_read = by_chrono(&text);
            if fast_read.is_some() {
                fast += 1;
                assert_eq!(fast_read, chrono_read, "{text}");
            }
            assert_eq!(Timestamp::parse_rfc3339(&text), chrono_read, "{text}");
            if !damaged && digits <= 9 {
                assert!(fast_read.is_some(), "{text}");
            }
        }
        for text in [
            "2024-02-29T00:00:00Z",
            "0000-02-29T12:00:00Z",
            "0400-02-29T00:00:00.5Z",
            "1600-02-29T23:59:59Z",
            "2100-02-29T00:00:00Z",
            "2100-03-01T00:00:00Z",
            "0000-03-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2000-02-29T23:59:59.999999999Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.9Z",
            "1969-12-31T23:59:59.999999Z",
            "2025-11-24T16:00:00.Z",
            "2025-11-24T16:00:60Z",
            "2025-11-24T24:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-00-01T00:00:00Z",
            "2025-01-00T00:00:00Z",
            "2025-11-24t16:00:00z",
            "2025-11-24 16:00:00Z",
            " 2025-11-24T16:00:00Z ",
            "2025-11-24T16:00:00.1234567890Z",
            "2025-11-24T16:00:00+00:00",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(text), by_chrono(text), "{text}");
            if let Some(t) = Timestamp::parse_plain_utc(text.as_bytes()) {
                assert_eq!(Some(t), by_chrono(text), "{text}");
            }
        }
        assert!(fast > total / 2, "the fast path read {fast} of {total}");
    }

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
