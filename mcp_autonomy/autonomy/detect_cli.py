"""`mcp-autonomy detect`: replay a CSV series through the live streaming detector (a backtest).

Input: a header row naming a `timestamp` and a `value` column (other columns are ignored), then one
row per point; timestamps are ISO 8601 (naive means UTC) or epoch seconds, in time order,
irregular and gappy as they come. Output: one row per input row, same order, `timestamp,value,
anomaly_score` with the timestamp and value echoed as given. An empty or unparsable value scores 0
and keeps its row; a row without a parsable timestamp is an error naming its line (exit 2).

The file is streamed in chunks through `StreamingDetector.score_many`, the same code the live
loop runs, so memory stays flat for any length. Progress goes to stderr (plain text, at most four
updates a second, only for runs longer than a second); stdout stays empty. With `--predictions`,
the predictions the detector's alerts would have raised are written as a JSON list.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig
from mcp_autonomy.autonomy.detection.prediction import PredictionBuilder
from mcp_autonomy.autonomy.detection.streaming import StreamingDetector
from mcp_autonomy.config import Sensitivity

CHUNK_ROWS: Final = 8_192
PROGRESS_INTERVAL_S: Final = 0.25  # at most four updates a second
PROGRESS_AFTER_S: Final = 1.0  # short runs print nothing
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
_NAN: Final = math.nan


class InputError(ValueError):
    """Malformed input, explained with its line number."""


def add_detect_parser(subparsers: Any) -> None:
    """Add the `detect` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "detect",
        help="replay a timestamp,value CSV through the streaming anomaly detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT.csv", help="CSV with a header and timestamp,value columns")
    parser.add_argument(
        "--output", metavar="SCORES.csv", required=True, help="where to write timestamp,value,anomaly_score"
    )
    parser.add_argument(
        "--sensitivity",
        choices=[s.value for s in Sensitivity],
        default=Sensitivity.MEDIUM.value,
        help="alarm thresholds: low asks for more evidence, high for less (default: medium)",
    )
    parser.add_argument(
        "--predictions", metavar="PRED.json", help="also write the predictions it would have raised"
    )
    parser.add_argument(
        "--series-name",
        default="value",
        help="what the series measures, e.g. error_rate or latency_p95_ms (default: value)",
    )
    parser.set_defaults(handler=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    """Run the backtest described by `args`; 0 on success, 2 on bad input (message on stderr)."""
    input_path = Path(args.input)
    try:
        total_bytes = os.path.getsize(input_path)
        with (
            open(input_path, encoding="utf-8-sig", newline="") as source,
            open(args.output, "w", encoding="utf-8", newline="") as sink,
        ):
            predictions = _replay(
                source,
                sink,
                sensitivity=Sensitivity(args.sensitivity),
                series=args.series_name,
                provider=input_path.stem,
                total_bytes=total_bytes,
            )
        if args.predictions is not None:
            with open(args.predictions, "w", encoding="utf-8") as out:
                json.dump(predictions, out, indent=2)
                out.write("\n")
    except InputError as exc:
        print(f"mcp-autonomy detect: {input_path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mcp-autonomy detect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def parse_timestamp(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 text (naive ISO times are UTC)."""
    try:
        value = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"not a finite time: {text!r}")
    return value


def _replay(
    source: IO[str],
    sink: IO[str],
    *,
    sensitivity: Sensitivity,
    series: str,
    provider: str,
    total_bytes: int,
) -> list[dict[str, Any]]:
    detector = StreamingDetector(StreamingDetectorConfig.for_sensitivity(sensitivity))
    builder = PredictionBuilder()
    progress = _Progress(total_bytes)
    predictions: list[dict[str, Any]] = []
    sink.write("timestamp,value,anomaly_score\n")
    for raw_ts, raw_values, times, values, consumed in _chunks(source):
        scores = detector.score_many(times, values)
        sink.writelines(
            [f"{ts},{raw},{score:.6f}\n" for ts, raw, score in zip(raw_ts, raw_values, scores, strict=True)]
        )
        for alert in detector.drain_alerts():
            prediction = builder.build(provider, series, alert)
            if prediction is not None:
                predictions.append(prediction.model_dump(mode="json"))
        progress.advance(consumed, len(scores))
    progress.finish()
    return predictions


def _chunks(source: IO[str]) -> Iterator[tuple[list[str], list[str], list[float], list[float], int]]:
    """Parsed rows in chunks: raw timestamps, raw values, times, values (NaN if bad), bytes read."""
    header_line = source.readline()
    if not header_line.strip():
        raise InputError("line 1: empty file, expected a header row with timestamp,value")
    header = [h.strip().lower() for h in _split(header_line)]
    try:
        ts_col = header.index("timestamp")
        value_col = header.index("value")
    except ValueError:
        raise InputError(
            f"line 1: header must name a timestamp and a value column, got {header_line.strip()!r}"
        ) from None
    width = max(ts_col, value_col) + 1
    raw_ts: list[str] = []
    raw_values: list[str] = []
    times: list[float] = []
    values: list[float] = []
    consumed = len(header_line)
    line_no = 1
    for line in source:
        line_no += 1
        consumed += len(line)
        stripped = line.rstrip("\r\n")
        if not stripped:
            continue
        fields = _split(stripped) if '"' in stripped else stripped.split(",")
        if len(fields) < width:
            if len(fields) <= ts_col:
                raise InputError(f"line {line_no}: expected {width} columns, got {len(fields)}: {stripped!r}")
            fields = fields + [""] * (width - len(fields))
        ts_text = fields[ts_col]
        value_text = fields[value_col]
        try:
            t = parse_timestamp(ts_text)
        except ValueError:
            raise InputError(
                f"line {line_no}: unparsable timestamp {ts_text!r} (ISO 8601 or epoch seconds)"
            ) from None
        try:
            x = float(value_text)
        except ValueError:
            x = _NAN
        raw_ts.append(_quote(ts_text))
        raw_values.append(_quote(value_text))
        times.append(t)
        values.append(x)
        if len(times) >= CHUNK_ROWS:
            yield raw_ts, raw_values, times, values, consumed
            raw_ts, raw_values, times, values = [], [], [], []
            consumed = 0
    if times or consumed:
        yield raw_ts, raw_values, times, values, consumed


def _split(line: str) -> list[str]:
    return next(csv.reader([line.rstrip("\r\n")]), [])


def _quote(field: str) -> str:
    """Echo a field as given, quoting it again only if CSV requires it."""
    if "," in field or '"' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


class _Progress:
    """A plain-text progress line on stderr, updated at most every PROGRESS_INTERVAL_S."""

    def __init__(self, total_bytes: int) -> None:
        self._total = max(1, total_bytes)
        self._done = 0
        self._rows = 0
        self._started = time.monotonic()
        self._last_print = self._started
        self._printed = False

    def advance(self, consumed_bytes: int, rows: int) -> None:
        self._done += consumed_bytes
        self._rows += rows
        now = time.monotonic()
        if now - self._started < PROGRESS_AFTER_S or now - self._last_print < PROGRESS_INTERVAL_S:
            return
        self._last_print = now
        self._print(now)

    def finish(self) -> None:
        if self._printed:
            self._print(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _print(self, now: float) -> None:
        percent = min(100.0, 100.0 * self._done / self._total)
        rate = self._rows / max(1e-9, now - self._started)
        sys.stderr.write(f"\rdetect: {percent:5.1f}%  {self._rows:,} rows  {rate:,.0f} rows/s")
        sys.stderr.flush()
        self._printed = True
