"""End-to-end throughput of `mcp-autonomy detect` on a million-row CSV.

Run: `python benchmarks/detect_throughput.py`. Generates a million points (one a minute, a daily
pattern, noise, a few spikes and a level shift, ISO-free epoch timestamps) into a temporary CSV,
then times, in the same process, a plain CSV read + write of the same file (the floor any CSV
tool pays) and `run_detect` on it (parse, detect, write scores). Prints one line:

    detect_throughput: N rows/s (baseline: M rows/s, ratio: x)

where the ratio is detect / baseline (1.0 would mean detection costs nothing).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

# Plain `python benchmarks/detect_throughput.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from mcp_autonomy.autonomy.detect_cli import run_detect

ROWS = 1_000_000
START_EPOCH_S = 1_767_225_600
STEP_S = 60
SEED = 7


def write_series(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    t = START_EPOCH_S + STEP_S * np.arange(ROWS, dtype=np.int64)
    hour = (t % 86_400) / 3600.0
    x = 100.0 + 30.0 * np.exp(-(((hour - 13.0) / 3.0) ** 2)) + rng.normal(0.0, 2.0, ROWS)
    x[rng.choice(ROWS, 20, replace=False)] += 40.0
    x[ROWS // 2 :] += 15.0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("timestamp,value\n")
        out.writelines(f"{a},{b:.3f}\n" for a, b in zip(t.tolist(), x.tolist(), strict=True))


def plain_copy(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with (
        open(source, encoding="utf-8", newline="") as inp,
        open(target, "w", encoding="utf-8", newline="") as out,
    ):
        reader = csv.reader(inp)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*next(reader), "anomaly_score"])
        for row in reader:
            writer.writerow((row[0], row[1], "0"))
    return time.perf_counter() - started


def detect(source: Path, target: Path) -> float:
    args = argparse.Namespace(
        input=str(source), output=str(target), sensitivity="medium", predictions=None, series_name="value"
    )
    started = time.perf_counter()
    code = run_detect(args)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"detect failed with exit code {code}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "series.csv"
        write_series(source)
        gc.collect()
        baseline_s = plain_copy(source, Path(tmp) / "copy.csv")
        detect_s = detect(source, Path(tmp) / "scores.csv")
        with open(Path(tmp) / "scores.csv", encoding="utf-8") as scores:
            rows = sum(1 for _ in scores) - 1
        if rows != ROWS:
            raise SystemExit(f"expected {ROWS} output rows, got {rows}")
        os.remove(source)
    detect_rate = ROWS / detect_s
    baseline_rate = ROWS / baseline_s
    print(
        f"detect_throughput: {detect_rate:,.0f} rows/s "
        f"(baseline: {baseline_rate:,.0f} rows/s, ratio: {detect_rate / baseline_rate:.2f}x)"
    )


if __name__ == "__main__":
    main()
