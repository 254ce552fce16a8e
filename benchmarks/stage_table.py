"""The stage table of a workflow run: per rule, its jobs' span in the Snakemake log and their
own seconds, CPU time and peak memory from Snakemake's benchmark files.

    python benchmarks/stage_table.py results/smollm2-135m [--log .snakemake/log/<run>.snakemake.log]

The log (by default the newest under .snakemake/log/) gives when each job started and finished,
so a stage's span counts its jobs once even where they overlap; "job s" sums the jobs' own wall
seconds (benchmark `s`), "CPU s" their CPU time, "peak RSS" the largest job's. The last line is
the whole run, first start to last finish. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import re
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
STARTED = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def job_spans(log_path: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """rule -> (start, end) of each of its jobs that finished, from a Snakemake log."""
    when, rule, started, spans = None, None, {}, {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if match := STAMP.match(line):
            when = datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif match := STARTED.match(line):
            rule = match.group(1)
        elif (match := JOBID.match(line)) and rule is not None:
            started[int(match.group(1))] = (rule, when)
            rule = None
        elif match := FINISHED.match(line):
            name, start = started.get(int(match.group(1)), (match.group(2), when))
            spans.setdefault(name, []).append((start, when))
    return spans


def benchmark_rows(results: Path) -> dict[str, list[dict]]:
    """rule -> its jobs' benchmark rows (benchmarks/<rule>.tsv or benchmarks/<rule>/*.tsv)."""
    rows: dict[str, list[dict]] = {}
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = path.parent.name if path.parent.name != "benchmarks" else path.stem
        with path.open(newline="") as handle:
            rows.setdefault(rule, []).extend(csv.DictReader(handle, delimiter="\t"))
    return rows


def covered_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of the spans (overlapping jobs counted once)."""
    total, end_so_far = 0.0, None
    for start, end in sorted(spans):
        if end_so_far is None or start > end_so_far:
            total += (end - start).total_seconds()
            end_so_far = end
        elif end > end_so_far:
            total += (end - end_so_far).total_seconds()
            end_so_far = end
    return total


def stage_table(results: Path, log_path: Path) -> list[str]:
    spans, rows = job_spans(log_path), benchmark_rows(results)
    order = sorted(spans, key=lambda rule: min(start for start, _ in spans[rule]))
    lines = ["| stage | jobs | span | job s | CPU s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for rule in order + sorted(set(rows) - set(spans)):
        jobs = rows.get(rule, [])
        span = f"{covered_seconds(spans[rule]):,.0f} s" if rule in spans else "n/a"
        job_s = f"{sum(float(r['s']) for r in jobs):,.0f}" if jobs else "n/a"
        cpu_s = f"{sum(float(r['cpu_time']) for r in jobs):,.0f}" if jobs else "n/a"
        rss = f"{max(float(r['max_rss']) for r in jobs):,.0f}" if jobs else "n/a"
        lines.append(f"| {rule} | {len(spans.get(rule, jobs))} | {span} | {job_s} | {cpu_s} | {rss} |")
    every = [span for rule_spans in spans.values() for span in rule_spans]
    if every:
        wall = (max(end for _, end in every) - min(start for start, _ in every)).total_seconds()
        lines.append(f"| whole run (first start to last finish) | {len(every)} | {wall:,.0f} s | | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a run's folder, results/<run>")
    parser.add_argument("--log", type=Path, help="its Snakemake log (default: the newest in .snakemake/log/)")
    args = parser.parse_args()
    log_path = args.log or max(Path(".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    print(f"Snakemake log: {log_path}")
    print("\n".join(stage_table(args.results, log_path)))


if __name__ == "__main__":
    main()
