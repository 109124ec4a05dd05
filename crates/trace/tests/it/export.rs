//! Event logs: CSV and XES, one case per flow, readable by pm4py.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use choreo_core::Outcome;
use choreo_trace::{LogFormat, LogWriter, Record, Tracer, TracerConfig};

/// A writer the test can read back after the tracer owns the log.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sample() -> Vec<Record> {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let failed = h.after(&placed, "PaymentFailed", "payment", 10);
    let cancelled = h.after(&failed, "OrderCancelled", "checkout", 20);
    let receipt = h.receipt("payment", &placed, Outcome::Acked, &[&failed], 1, 5);
    let other = h.start("OrderPlaced", "checkout", 5);
    let captured = h.after(&other, "PaymentCaptured", "payment", 15);
    // out of order, a duplicate and a receipt: the log has 5 events in 2 cases
    let mut recs = records(&[
        &cancelled, &placed, &failed, &receipt, &other, &captured, &failed,
    ]);
    recs.push(Record::unattributed(h.start("Noise", "", 30)));
    recs
}

fn log(format: LogFormat) -> String {
    let out = Shared::default();
    let mut t = Tracer::new(TracerConfig::batch(), Some(&order_fulfillment()));
    t.export_log(LogWriter::new(out.clone(), format).unwrap());
    for r in sample() {
        t.ingest(&r);
    }
    t.finish(None);
    assert_eq!(t.finish_log().unwrap().unwrap(), (2, 5));
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn csv_has_one_row_per_event_grouped_by_case_in_time_order() {
    let text = log(LogFormat::Csv);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "case:concept:name,concept:name,time:timestamp,org:resource,event_id,topic"
    );
    assert_eq!(lines.len(), 6);
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    let first_case = rows[0][0];
    let activities: Vec<&str> = rows
        .iter()
        .filter(|r| r[0] == first_case)
        .map(|r| r[1])
        .collect();
    assert!(
        activities == ["OrderPlaced", "PaymentFailed", "OrderCancelled"]
            || activities == ["OrderPlaced", "PaymentCaptured"],
        "{activities:?}"
    );
    let h = Hand::default();
    assert!(text.contains(&format!(",{},checkout,", h.at(0))), "{text}");
}

#[test]
fn xes_is_well_formed_with_the_standard_extensions() {
    let text = log(LogFormat::Xes);
    assert!(text.starts_with("<?xml"));
    assert!(
        text.contains("prefix=\"concept\"")
            && text.contains("prefix=\"time\"")
            && text.contains("prefix=\"org\"")
    );
    assert_eq!(text.matches("<trace>").count(), 2);
    assert_eq!(text.matches("</trace>").count(), 2);
    assert_eq!(text.matches("<event>").count(), 5);
    assert!(text.contains("<string key=\"choreo:status\" value=\"completed\"/>"));
    assert!(text.trim_end().ends_with("</log>"));
}

/// The Python with pm4py: `CHOREO_PM4PY_PYTHON`, else the venv `scripts/test.sh` makes.
fn pm4py_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHOREO_PM4PY_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = root().join("target/pm4py-venv/bin/python");
    venv.exists().then_some(venv)
}

#[test]
fn pm4py_reads_both_logs() {
    let Some(python) = pm4py_python() else {
        assert!(
            std::env::var_os("CHOREO_REQUIRE_PM4PY").is_none(),
            "CHOREO_REQUIRE_PM4PY is set but no pm4py: run scripts/test.sh"
        );
        eprintln!("skipped: no pm4py (scripts/test.sh installs it into target/pm4py-venv)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let xes = dir.path().join("log.xes");
    std::fs::write(&csv, log(LogFormat::Csv)).unwrap();
    std::fs::write(&xes, log(LogFormat::Xes)).unwrap();
    let script = dir.path().join("check.py");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(
        f,
        r#"import sys, pandas as pd, pm4py
df = pm4py.format_dataframe(pd.read_csv(sys.argv[1]), case_id="case:concept:name", activity_key="concept:name", timestamp_key="time:timestamp")
dfg, start, end = pm4py.discover_dfg(df)
log = pm4py.read_xes(sys.argv[2])
dfg2, _, _ = pm4py.discover_dfg(log)
assert dfg == dfg2, (dfg, dfg2)
print(len(df), df["case:concept:name"].nunique(), len(log), sorted(start.items()), dfg[("OrderPlaced", "PaymentFailed")])"#
    )
    .unwrap();
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(&csv)
        .arg(&xes)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "5 2 5 [('OrderPlaced', 2)] 1", "{stdout}");
}
