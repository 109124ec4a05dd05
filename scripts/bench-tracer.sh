#!/usr/bin/env bash
# The tracer benchmark: `choreo trace` against pm4py on the same event log,
# on an Avro capture and on a JSON-lines capture of the same run.
#
#   ./scripts/bench-tracer.sh            1,000,000 events (+ their receipts: ~2,000,000 records)
#   EVENTS=200000 ./scripts/bench-tracer.sh
#   RECORDS=1000000 ./scripts/bench-tracer.sh   a capture of that many records instead
#   FORMATS=avro ./scripts/bench-tracer.sh      only the Avro capture (default: avro jsonl)
#   BASELINE=path/to/choreo ./scripts/bench-tracer.sh
#                                        also runs another build of `choreo` (an
#                                        older commit's), alternating with this
#                                        one, and prints the ratio between them
#
# 1. generates a capture of the order-fulfillment saga (many overlapping
#    flows, every consumer's receipt, 2 % of flows with a fault) with
#    crates/trace/examples/gen_capture.rs, as Avro and as JSON lines;
# 2. runs `choreo trace` on each: reading the capture, reconstruction,
#    conformance against topologies/order-fulfillment.yaml, the summary, and
#    the CSV export of the event log — end to end, timed with its peak memory;
# 3. times pm4py on that CSV (installed from PyPI into target/pm4py-venv):
#    read_csv, format_dataframe and discover_dfg separately, and its peak memory;
# 4. prints events/s, records/s, peak memory and the ratios.
#
# Each side runs RUNS times (default 3); the median is reported. Not a test:
# numbers depend on the machine. Output in bench-out/tracer/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-1000000}
RECORDS=${RECORDS:-}
RUNS=${RUNS:-3}
FORMATS=${FORMATS:-avro jsonl}
BASELINE=${BASELINE:-}
OUT=bench-out/tracer
VENV=target/pm4py-venv
mkdir -p "$OUT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "build (release)"
cargo build --release -q -p choreo-cli
cargo build --release -q -p choreo-trace --example gen_capture

if [ -n "$RECORDS" ]; then
  SIZE="-n $RECORDS"; STEM="$OUT/capture-r$RECORDS"
else
  SIZE="-e $EVENTS"; STEM="$OUT/capture-e$EVENTS"
fi
for f in $FORMATS; do
  # Regenerated when missing or older than the generator (same seed: the same run).
  if [ ! -s "$STEM.$f" ] || [ target/release/examples/gen_capture -nt "$STEM.$f" ]; then
    step "generate $f ($SIZE)"
    # shellcheck disable=SC2086 # two words: the flag and its value
    target/release/examples/gen_capture $SIZE -o "$STEM.$f"
  fi
done

step "pm4py in $VENV"
if ! "$VENV/bin/python" -c 'import pm4py' >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check pm4py
fi

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# trace BINARY LABEL FORMAT: one timed run, appended to $OUT/trace-LABEL-FORMAT.txt
trace() {
  # exit 1 is expected: the capture holds injected faults
  /usr/bin/time -f '%e %M' -o "$OUT/time.txt" \
    "$1" trace "$STEM.$3" -t topologies/order-fulfillment.yaml \
      --export csv -o "$OUT/log-$2-$3.csv" -q > "$OUT/summary-$2-$3.txt" 2> "$OUT/trace.err" || [ $? -eq 1 ]
  tail -1 "$OUT/time.txt" >> "$OUT/trace-$2-$3.txt" # (time adds a line for exit 1)
}

rm -f "$OUT"/summary-{this,baseline}-*.txt "$OUT"/log-{this,baseline}-*.csv
for f in $FORMATS; do
  : > "$OUT/trace-this-$f.txt"
  : > "$OUT/trace-baseline-$f.txt"
  step "choreo trace ($f) × $RUNS${BASELINE:+, alternating with $BASELINE}"
  for _ in $(seq "$RUNS"); do
    trace target/release/choreo this "$f"
    if [ -n "$BASELINE" ]; then trace "$BASELINE" baseline "$f"; fi
  done
  # The same report and event log from every format and build (but for the
  # notes that name the wall clock and the file's time).
  for other in "$OUT"/summary-{this,baseline}-*.txt; do
    [ -e "$other" ] || continue
    if ! diff -q <(grep -v '^note: ' "$OUT/summary-this-$f.txt") <(grep -v '^note: ' "$other") >/dev/null; then
      echo "choreo: $other differs from $OUT/summary-this-$f.txt" >&2
      exit 2
    fi
  done
  for other in "$OUT"/log-{this,baseline}-*.csv; do
    [ -e "$other" ] || continue
    cmp -s "$OUT/log-this-$f.csv" "$other" || { echo "choreo: $other differs from $OUT/log-this-$f.csv" >&2; exit 2; }
  done
done
FIRST=${FORMATS%% *}
cp "$OUT/log-this-$FIRST.csv" "$OUT/log.csv"
# "read N records: E events, R receipts, D dead-letter copies; ..." from the summary
read -r IN_RECORDS IN_EVENTS < <(sed -n 's/^read \([0-9]*\) records: \([0-9]*\) events.*/\1 \2/p' "$OUT/summary-this-$FIRST.txt")
LOG_EVENTS=$(($(wc -l < "$OUT/log.csv") - 1))

cat > "$OUT/pm4py_dfg.py" <<'PY'
import sys, time
t0 = time.perf_counter()
import pandas as pd
import pm4py
t1 = time.perf_counter()
df = pd.read_csv(sys.argv[1])
t2 = time.perf_counter()
df = pm4py.format_dataframe(df, case_id="case:concept:name", activity_key="concept:name", timestamp_key="time:timestamp")
t3 = time.perf_counter()
dfg, start, end = pm4py.discover_dfg(df)
t4 = time.perf_counter()
print(f"{t2-t1:.3f} {t3-t2:.3f} {t4-t3:.3f} {t4-t1:.3f} {len(dfg)}")
PY

step "pm4py read_csv + format_dataframe + discover_dfg × $RUNS"
: > "$OUT/pm4py-times.txt"
for _ in $(seq "$RUNS"); do
  /usr/bin/time -f '%M' -o "$OUT/pm4py-mem.txt" \
    "$VENV/bin/python" "$OUT/pm4py_dfg.py" "$OUT/log.csv" 2>/dev/null | tail -1 > "$OUT/pm4py-run.txt"
  echo "$(cat "$OUT/pm4py-run.txt") $(tail -1 "$OUT/pm4py-mem.txt")" >> "$OUT/pm4py-times.txt"
done
col() { awk -v c="$1" '{print $c}' "$OUT/pm4py-times.txt" | median; }
READ_S=$(col 1); FORMAT_S=$(col 2); DFG_S=$(col 3); PM_S=$(col 4)
PM_KB=$(awk '{print $6}' "$OUT/pm4py-times.txt" | sort -g | tail -1)

python3 - "$IN_RECORDS" "$IN_EVENTS" "$LOG_EVENTS" "$READ_S" "$FORMAT_S" "$DFG_S" "$PM_S" "$PM_KB" "$OUT" "$FORMATS" "$BASELINE" <<'PY'
import statistics, sys
records, events, log_events = map(int, sys.argv[1:4])
read_s, fmt_s, dfg_s, pm_s, pm_kb = map(float, sys.argv[4:9])
out, formats, baseline = sys.argv[9], sys.argv[10].split(), sys.argv[11]
def runs(label, fmt):
    try:
        rows = [l.split() for l in open(f"{out}/trace-{label}-{fmt}.txt") if l.strip()]
    except FileNotFoundError:
        return None
    if not rows:
        return None
    return statistics.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows), len(rows)
print()
print(f"capture: {events:,} events + {records - events:,} receipts and dead-letter copies = {records:,} records")
print(f"pm4py on the same log (CSV, {log_events:,} events):")
print(f"  read_csv {read_s:.3f} s + format_dataframe {fmt_s:.3f} s + discover_dfg {dfg_s:.3f} s = {pm_s:.3f} s   {log_events / pm_s:,.0f} events/s   peak {pm_kb / 1024:.0f} MiB")
for fmt in formats:
    print(f"choreo trace, {fmt} capture (read + reconstruct + conformance + summary + CSV export of {log_events:,} events), median of runs:")
    this = runs("this", fmt)
    base = runs("baseline", fmt) if baseline else None
    for name, r in [("this build", this), (f"baseline {baseline}", base)]:
        if r:
            s, kb, n = r
            print(f"  {name}: {s:.3f} s   {events / s:,.0f} events/s   {records / s:,.0f} records/s   peak {kb / 1024:.0f} MiB   ({n} runs)   {pm_s / s:.2f}x pm4py")
    if this and base:
        print(f"  ratio: this build takes {this[0] / base[0]:.2f}x the baseline's time ({base[0] / this[0]:.2f}x as fast), peak memory {this[1] / base[1]:.2f}x")
PY
