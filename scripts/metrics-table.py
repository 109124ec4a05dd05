#!/usr/bin/env python3
"""Prints the metric table of docs/metrics.md from the METRICS constants of the crates.

    python3 scripts/metrics-table.py

Reads `pub const METRICS` in crates/bus, crates/trace and crates/kafka, and
the group tracer's in crates/cli (when present) and prints one Markdown table. crates/cli/tests/readme.rs checks every name.
"""
import re
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
sources = [
    ("SDK and in-process bus", root / "crates/bus/src/runtime/metrics.rs"),
    ("tracer", root / "crates/trace/src/metrics.rs"),
    ("Kafka backend", root / "crates/kafka/src/metrics.rs"),
    ("tracer in a group", root / "crates/cli/src/cmd/trace/group.rs"),
]
tuple_re = re.compile(r'\(\s*"([^"]+)",\s*"([^"]+)",\s*"([^"]*)",\s*"((?:[^"\\]|\\.)*)",?\s*\)', re.S)
print("| metric | type | labels | from | meaning |")
print("|---|---|---|---|---|")
for origin, path in sources:
    if not path.exists():
        continue
    text = path.read_text()
    m = re.search(r"pub(?:\([a-z]+\))? const METRICS[^=]*=\s*&\[(.*?)\];", text, re.S)
    if not m:
        continue
    for name, kind, labels, meaning in tuple_re.findall(m.group(1)):
        meaning = re.sub(r"\s+", " ", meaning.replace('\\"', '"'))
        labels = labels if labels else "—"
        print(f"| `{name}` | {kind} | {labels} | {origin} | {meaning} |")
