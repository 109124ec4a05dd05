//! Durations as topology files write them: `500ms`, `5s`, `2m`, `1h30m`.

use std::time::Duration;

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a duration: one or more `<digits><unit>` parts, units `h`, `m`, `s`,
/// `ms` from largest to smallest, each at most once (`1h30m`, `2m30s`, `750ms`).
///
/// The result is more than zero and at most about 584 million years; anything
/// else is an error whose text says what is wrong.
///
/// ```
/// use std::time::Duration;
/// use choreo_topology::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("5 s").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "write it like '500ms', '5s', '2m' or '1h30m'";
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("'{text}' has a space; {HINT}"));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the smallest unit seen so far: the next must be smaller.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("'{text}' is not a duration; {HINT}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "'{text}' has a number without a unit; {HINT} (units: h, m, s, ms)"
            ));
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "'{text}' has unknown unit '{unit}'; use h, m, s or ms"
            ));
        };
        if last.is_some_and(|l| index <= l) {
            return Err(format!(
                "'{text}' repeats a unit or puts a larger one after a smaller one; {HINT}"
            ));
        }
        last = Some(index);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("'{text}' is too large"))?;
        total = value
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("'{text}' is too large"))?;
        rest = after;
    }
    if total == 0 {
        return Err(format!(
            "'{text}' is zero; a time bound must be more than zero"
        ));
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `2s500ms`).
///
/// Sub-millisecond parts are dropped; zero is `0ms`.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0ms".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let n = ms / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            ms -= n * size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m2s3ms"), Ok(Duration::from_millis(62_003)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5sec",
            "1.5s",
            "-5s",
            "0s",
            "30m1h",
            "5s5s",
            "5S",
            "1d",
            "99999999999999999999h",
            "9999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["500ms", "5s", "2m", "1h30m", "1h2m3s4ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_millis(90_000)), "1m30s");
    }
}
