#!/usr/bin/env bash
# The tracer benchmark: `choreo trace` against pm4py on the same event log.
#
#   ./scripts/bench-tracer.sh            1,000,000 events (+ their receipts: ~2,000,000 records)
#   EVENTS=200000 ./scripts/bench-tracer.sh
#   RECORDS=1000000 ./scripts/bench-tracer.sh   a capture of that many records instead
#
# 1. generates a capture of the order-fulfillment saga (many overlapping
#    flows, every consumer's receipt, 2 % of flows with a fault) with
#    crates/trace/examples/gen_capture.rs;
# 2. runs `choreo trace` on it: reading the Avro capture, reconstruction,
#    conformance against topologies/order-fulfillment.yaml, the summary, and
#    the CSV export of the event log — end to end, timed with its peak memory;
# 3. times pm4py on that CSV (installed from PyPI into target/pm4py-venv):
#    read_csv, format_dataframe and discover_dfg separately, and its peak memory;
# 4. prints events/s, records/s, peak memory and the ratio.
#
# Each side runs RUNS times (default 3); the median is reported. Not a test:
# numbers depend on the machine. Output in bench-out/tracer/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-1000000}
RECORDS=${RECORDS:-}
RUNS=${RUNS:-3}
OUT=bench-out/tracer
VENV=target/pm4py-venv
mkdir -p "$OUT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "build (release)"
cargo build --release -q -p choreo-cli
cargo build --release -q -p choreo-trace --example gen_capture

if [ -n "$RECORDS" ]; then
  SIZE="-n $RECORDS"; CAPTURE="$OUT/capture-r$RECORDS.avro"
else
  SIZE="-e $EVENTS"; CAPTURE="$OUT/capture-e$EVENTS.avro"
fi
# Regenerated when missing or older than the generator.
if [ ! -s "$CAPTURE" ] || [ target/release/examples/gen_capture -nt "$CAPTURE" ]; then
  step "generate ($SIZE)"
  # shellcheck disable=SC2086 # two words: the flag and its value
  target/release/examples/gen_capture $SIZE -o "$CAPTURE"
fi

step "pm4py in $VENV"
if ! "$VENV/bin/python" -c 'import pm4py' >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check pm4py
fi

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

step "choreo trace × $RUNS"
: > "$OUT/trace-times.txt"
for _ in $(seq "$RUNS"); do
  # exit 1 is expected: the capture holds injected faults
  /usr/bin/time -f '%e %M' -o "$OUT/time.txt" \
    target/release/choreo trace "$CAPTURE" -t topologies/order-fulfillment.yaml \
      --export csv -o "$OUT/log.csv" -q > "$OUT/summary.txt" 2> "$OUT/trace.err" || [ $? -eq 1 ]
  tail -1 "$OUT/time.txt" >> "$OUT/trace-times.txt" # (time adds a line for exit 1)
done
TRACE_S=$(awk '{print $1}' "$OUT/trace-times.txt" | median)
TRACE_KB=$(awk '{print $2}' "$OUT/trace-times.txt" | sort -g | tail -1)
# "read N records: E events, R receipts, D dead-letter copies; ..." from the summary
read -r IN_RECORDS IN_EVENTS < <(sed -n 's/^read \([0-9]*\) records: \([0-9]*\) events.*/\1 \2/p' "$OUT/summary.txt")
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

python3 - "$IN_RECORDS" "$IN_EVENTS" "$LOG_EVENTS" "$TRACE_S" "$TRACE_KB" "$READ_S" "$FORMAT_S" "$DFG_S" "$PM_S" "$PM_KB" <<'PY'
import sys
records, events, log_events = map(int, sys.argv[1:4])
trace_s, trace_kb = float(sys.argv[4]), int(sys.argv[5])
read_s, fmt_s, dfg_s, pm_s, pm_kb = map(float, sys.argv[6:11])
print()
print(f"capture: {events:,} events + {records - events:,} receipts and dead-letter copies = {records:,} records")
print(f"choreo trace (read + reconstruct + conformance + summary + CSV export of {log_events:,} events, duplicates collapsed), median of runs:")
print(f"  {trace_s:.3f} s   {events / trace_s:,.0f} events/s   {records / trace_s:,.0f} records/s   peak {trace_kb / 1024:.0f} MiB")
print(f"pm4py on the same log (CSV, {log_events:,} events):")
print(f"  read_csv {read_s:.3f} s + format_dataframe {fmt_s:.3f} s + discover_dfg {dfg_s:.3f} s = {pm_s:.3f} s   {log_events / pm_s:,.0f} events/s   peak {pm_kb / 1024:.0f} MiB")
print(f"ratio: choreo trace is {pm_s / trace_s:.2f}× faster than pm4py's discover_dfg pipeline on the same log")
PY
