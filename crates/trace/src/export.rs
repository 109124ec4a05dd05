//! Event logs for process-mining tools (CSV and XES, one case per flow), and
//! every flow's verdict as JSON lines ([`FlowWriter`]).
//!
//! Case = correlation id, activity = event type, timestamp = publication
//! time, resource = the publishing service. Only business events are written
//! (receipts and dead-letter copies are not activities); duplicates are
//! collapsed; events of a case are in time order. Cases are written as flows
//! finish, so a log of any size is written with bounded memory.
//!
//! CSV columns: `case:concept:name,concept:name,time:timestamp,org:resource,event_id,topic`
//! — the XES attribute names, so `pm4py.format_dataframe` needs no mapping
//! beyond naming them. Timestamps are RFC 3339 UTC with microseconds.

use std::io::{self, Write};

use choreo_core::EventId;

use crate::flow::FlowStatus;

/// An event log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// IEEE 1849 XES (XML).
    Xes,
}

/// One row of the log.
pub(crate) struct Row<'a> {
    pub(crate) activity: &'a str,
    pub(crate) time: i64,
    pub(crate) resource: &'a str,
    pub(crate) event_id: &'a EventId,
    pub(crate) topic: &'a str,
}

fn push_id(out: &mut String, id: &EventId) {
    out.push_str(id.text(&mut [0; 36]));
}

/// Writes an event log as flows finish. Give it to
/// [`Tracer::export_log`](crate::Tracer::export_log); get the writer (and the
/// first write error, if any) back from
/// [`Tracer::finish_log`](crate::Tracer::finish_log).
pub struct LogWriter {
    out: Box<dyn Write + Send>,
    format: LogFormat,
    error: Option<io::Error>,
    cases: u64,
    events: u64,
}

/// Cases rendered as log text, to be appended to a [`LogWriter`] in order:
/// rendering can then happen on the threads that finish flows.
pub(crate) struct LogChunk {
    format: LogFormat,
    text: String,
    clock: Clock,
    cases: u64,
    events: u64,
}

/// Formats RFC 3339 times, reusing the date and minute of the previous one:
/// consecutive events are seconds apart.
#[derive(Default)]
struct Clock {
    minute: i64,
    prefix: String,
}

impl Clock {
    fn push(&mut self, out: &mut String, micros: i64) {
        let minute = micros.div_euclid(60_000_000);
        if self.prefix.is_empty() || minute != self.minute {
            self.minute = minute;
            self.prefix.clear();
            rfc3339(&mut self.prefix, minute * 60_000_000);
            self.prefix.truncate(17); // YYYY-MM-DDTHH:MM:
        }
        out.push_str(&self.prefix);
        let rest = micros - minute * 60_000_000; // 0..60 s in µs
        let mut digits = [0u8; 10];
        let secs = rest / 1_000_000;
        let frac = rest % 1_000_000;
        digits[0] = b'0' + (secs / 10) as u8;
        digits[1] = b'0' + (secs % 10) as u8;
        digits[2] = b'.';
        let mut f = frac;
        for i in (3..9).rev() {
            digits[i] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        digits[9] = b'Z';
        out.push_str(std::str::from_utf8(&digits).unwrap_or("00.000000Z"));
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("format", &self.format)
            .field("cases", &self.cases)
            .field("events", &self.events)
            .finish()
    }
}

impl LogWriter {
    /// A log in `format` on `out`; the header is written at once.
    pub fn new(out: impl Write + Send + 'static, format: LogFormat) -> io::Result<LogWriter> {
        let mut out: Box<dyn Write + Send> = Box::new(out);
        match format {
            LogFormat::Csv => out.write_all(
                b"case:concept:name,concept:name,time:timestamp,org:resource,event_id,topic\n",
            )?,
            LogFormat::Xes => out.write_all(XES_HEAD.as_bytes())?,
        }
        Ok(LogWriter {
            out,
            format,
            error: None,
            cases: 0,
            events: 0,
        })
    }

    /// Cases (flows) written.
    pub fn cases(&self) -> u64 {
        self.cases
    }

    /// Events written.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The format written.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Writes cases rendered elsewhere (see [`LogChunk`]).
    pub(crate) fn append(&mut self, chunk: &LogChunk) {
        if self.error.is_some() || chunk.text.is_empty() {
            return;
        }
        self.cases += chunk.cases;
        self.events += chunk.events;
        if let Err(e) = self.out.write_all(chunk.text.as_bytes()) {
            self.error = Some(e);
        }
    }

    /// Writes the trailer and flushes; returns the first error met.
    pub fn finish(mut self) -> io::Result<(u64, u64)> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.format == LogFormat::Xes {
            self.out.write_all(b"</log>\n")?;
        }
        self.out.flush()?;
        Ok((self.cases, self.events))
    }
}

impl LogChunk {
    pub(crate) fn new(format: LogFormat) -> Self {
        LogChunk {
            format,
            text: String::new(),
            clock: Clock::default(),
            cases: 0,
            events: 0,
        }
    }

    pub(crate) fn case<'r>(
        &mut self,
        case: &str,
        flow: Option<&str>,
        status: FlowStatus,
        count: usize,
        rows: impl Iterator<Item = Row<'r>>,
    ) {
        if count == 0 {
            return;
        }
        self.cases += 1;
        self.events += count as u64;
        let l = &mut self.text;
        let clock = &mut self.clock;
        match self.format {
            LogFormat::Csv => {
                // The case column is the same on every row: escaped once,
                // then copied from the first row.
                let mut head: Option<std::ops::Range<usize>> = None;
                for r in rows {
                    match &head {
                        Some(h) => l.extend_from_within(h.clone()),
                        None => {
                            let start = l.len();
                            csv_field(l, case);
                            l.push(',');
                            head = Some(start..l.len());
                        }
                    }
                    csv_field(l, r.activity);
                    l.push(',');
                    clock.push(l, r.time);
                    l.push(',');
                    csv_field(l, r.resource);
                    l.push(',');
                    push_id(l, r.event_id);
                    l.push(',');
                    csv_field(l, r.topic);
                    l.push('\n');
                }
            }
            LogFormat::Xes => {
                l.push_str("  <trace>\n    <string key=\"concept:name\" value=\"");
                xml(l, case);
                l.push_str("\"/>\n");
                if let Some(flow) = flow {
                    l.push_str("    <string key=\"choreo:flow\" value=\"");
                    xml(l, flow);
                    l.push_str("\"/>\n");
                }
                l.push_str("    <string key=\"choreo:status\" value=\"");
                l.push_str(status.as_str());
                l.push_str("\"/>\n");
                for r in rows {
                    l.push_str("    <event>\n      <string key=\"concept:name\" value=\"");
                    xml(l, r.activity);
                    l.push_str("\"/>\n      <date key=\"time:timestamp\" value=\"");
                    clock.push(l, r.time);
                    l.push_str("\"/>\n      <string key=\"org:resource\" value=\"");
                    xml(l, r.resource);
                    l.push_str("\"/>\n      <string key=\"choreo:event_id\" value=\"");
                    xml(l, &r.event_id.to_string());
                    l.push_str("\"/>\n      <string key=\"choreo:topic\" value=\"");
                    xml(l, r.topic);
                    l.push_str("\"/>\n    </event>\n");
                }
                l.push_str("  </trace>\n");
            }
        }
    }
}

const XES_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<log xes.version="1.0" xes.features="nested-attributes" xmlns="http://www.xes-standard.org/">
  <extension name="Concept" prefix="concept" uri="http://www.xes-standard.org/concept.xesext"/>
  <extension name="Time" prefix="time" uri="http://www.xes-standard.org/time.xesext"/>
  <extension name="Organizational" prefix="org" uri="http://www.xes-standard.org/org.xesext"/>
  <global scope="trace">
    <string key="concept:name" value="__INVALID__"/>
  </global>
  <global scope="event">
    <string key="concept:name" value="__INVALID__"/>
    <date key="time:timestamp" value="1970-01-01T00:00:00.000000Z"/>
    <string key="org:resource" value="__INVALID__"/>
  </global>
  <classifier name="Activity" keys="concept:name"/>
  <string key="concept:name" value="choreo trace"/>
"#;

fn csv_field(out: &mut String, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn xml(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, without going through a date library:
/// the log writer formats a million of these.
pub(crate) fn rfc3339(out: &mut String, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_core::Timestamp;

    #[test]
    fn rfc3339_matches_the_core_formatter() {
        for t in [
            0i64,
            1,
            1_764_104_835_123_456,
            951_782_400_000_000,
            4_102_444_799_999_999,
            -1,
        ] {
            let mut s = String::new();
            rfc3339(&mut s, t);
            assert_eq!(s, Timestamp::from_micros(t).to_rfc3339(), "{t}");
        }
    }

    #[test]
    fn the_clock_matches_the_core_formatter() {
        let mut c = Clock::default();
        for t in [
            1_764_104_835_123_456i64,
            1_764_104_835_999_999,
            1_764_104_836_000_001,
            1_764_104_899_000_000,
            0,
            59_999_999,
        ] {
            let mut s = String::new();
            c.push(&mut s, t);
            assert_eq!(s, Timestamp::from_micros(t).to_rfc3339(), "{t}");
        }
    }

    #[test]
    fn csv_and_xml_escape() {
        let mut s = String::new();
        csv_field(&mut s, "a,\"b\"");
        assert_eq!(s, "\"a,\"\"b\"\"\"");
        let mut x = String::new();
        xml(&mut x, "<a&'\">");
        assert_eq!(x, "&lt;a&amp;&apos;&quot;&gt;");
    }
}

/// Writes every flow's verdict as one JSON object per line (a
/// [`FlowSummary`](crate::FlowSummary): status, flow name, start, end or
/// owed-since, what is owed, every finding) as flows finish. Give it to
/// [`Tracer::export_flows`](crate::Tracer::export_flows); get the count (or
/// the first write error) back from
/// [`Tracer::finish_flows`](crate::Tracer::finish_flows).
pub struct FlowWriter {
    out: Box<dyn Write + Send>,
    error: Option<io::Error>,
    flows: u64,
}

impl std::fmt::Debug for FlowWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowWriter")
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

/// Flows rendered as JSON lines, to be appended to a [`FlowWriter`] in order.
#[derive(Default)]
pub(crate) struct FlowChunk {
    pub(crate) text: String,
    pub(crate) flows: u64,
}

impl FlowChunk {
    /// Appends one flow's line.
    pub(crate) fn push(&mut self, summary: &crate::FlowSummary) {
        // Serializing plain data into a String cannot fail.
        if let Ok(line) = serde_json::to_string(summary) {
            self.text.push_str(&line);
            self.text.push('\n');
            self.flows += 1;
        }
    }
}

impl FlowWriter {
    /// Flows written to `out`, one JSON object per line.
    pub fn new(out: impl Write + Send + 'static) -> FlowWriter {
        FlowWriter {
            out: Box::new(out),
            error: None,
            flows: 0,
        }
    }

    /// Flows written.
    pub fn flows(&self) -> u64 {
        self.flows
    }

    /// Writes flows rendered elsewhere.
    pub(crate) fn append(&mut self, chunk: &FlowChunk) {
        if self.error.is_some() || chunk.text.is_empty() {
            return;
        }
        self.flows += chunk.flows;
        if let Err(e) = self.out.write_all(chunk.text.as_bytes()) {
            self.error = Some(e);
        }
    }

    /// Flushes; returns the flows written, or the first error met.
    pub fn finish(mut self) -> io::Result<u64> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.flows)
    }
}
