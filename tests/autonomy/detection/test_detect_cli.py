"""The `detect` backtest command: round trip, bad rows, errors, predictions."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mcp_autonomy.autonomy.detect_cli import add_detect_parser, run_detect
from mcp_autonomy.autonomy.detection import StreamingDetector
from mcp_autonomy.autonomy.predictor import Prediction

T0 = 1_767_225_600


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mcp-autonomy")
    add_detect_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def write_series(path: Path) -> list[list[str]]:
    """600 irregular points with a gap, a level shift, ISO and epoch timestamps and bad values."""
    rng = np.random.default_rng(1)
    rows: list[list[str]] = []
    t = float(T0)
    for i in range(600):
        t += 60.0 + rng.uniform(-15.0, 15.0)
        if i == 300:
            t += 6 * 3600.0  # a six-hour gap
        value = 100.0 + rng.normal(0.0, 2.0) + (25.0 if i >= 450 else 0.0)
        stamp = f"{t:.3f}" if i % 2 else np.datetime_as_string(np.datetime64(int(t * 1000), "ms")) + "Z"
        text = f"{value:.3f}"
        if i in (100, 200):
            text = ""
        if i == 250:
            text = "n/a"
        rows.append([stamp, text])
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("timestamp,value\n")
        out.writelines(f"{a},{b}\n" for a, b in rows)
    return rows


def test_round_trip_keeps_rows_order_and_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target, predictions = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "pred.json"
    rows = write_series(source)
    args = parse(
        [
            "detect",
            str(source),
            "--output",
            str(target),
            "--predictions",
            str(predictions),
            "--series-name",
            "error_rate",
        ]
    )
    assert args.handler is run_detect
    assert run_detect(args) == 0
    assert capsys.readouterr().out == ""
    with open(target, encoding="utf-8", newline="") as scores_file:
        out = list(csv.reader(scores_file))
    assert out[0] == ["timestamp", "value", "anomaly_score"]
    assert [r[:2] for r in out[1:]] == rows
    scores = [float(r[2]) for r in out[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[100] == scores[200] == scores[250] == 0.0
    assert max(scores[440:460]) >= 0.5  # the level shift
    assert max(scores[300:310]) < 0.5  # the gap alone does not alarm

    loaded = json.loads(predictions.read_text())
    assert isinstance(loaded, list) and loaded
    parsed = [Prediction.model_validate(p) for p in loaded]
    assert parsed[0].provider == "in"
    assert parsed[0].type == "failure"
    assert any(i.name == "error_rate" for i in parsed[0].indicators)


def test_scores_match_the_live_detector(tmp_path: Path) -> None:
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    rng = np.random.default_rng(2)
    times = (T0 + 60 * np.arange(400)).tolist()
    values = (50 + rng.normal(0, 1, 400)).tolist()
    source.write_text(
        "timestamp,value\n" + "".join(f"{a},{b!r}\n" for a, b in zip(times, values, strict=True))
    )
    assert run_detect(parse(["detect", str(source), "--output", str(target), "--sensitivity", "high"])) == 0
    from mcp_autonomy.autonomy.detection import StreamingDetectorConfig

    live = StreamingDetector(StreamingDetectorConfig.for_sensitivity("high"))
    expected = [f"{live.update(a, b).anomaly_score:.6f}" for a, b in zip(times, values, strict=True)]
    with open(target, encoding="utf-8", newline="") as scores_file:
        assert [r[2] for r in list(csv.reader(scores_file))[1:]] == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "line 1: empty file"),
        ("time,v\n1,2\n", "line 1: header must name a timestamp and a value column"),
        ("timestamp,value\n1767225600,1\nyesterday,2\n", "line 3: unparsable timestamp 'yesterday'"),
    ],
)
def test_malformed_input_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(content)
    code = run_detect(parse(["detect", str(source), "--output", str(tmp_path / "out.csv")]))
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert captured.out == ""


def test_missing_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_detect(parse(["detect", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv")]))
    assert code == 2
    assert "nope.csv" in capsys.readouterr().err


def test_output_is_required() -> None:
    with pytest.raises(SystemExit):
        parse(["detect", "in.csv"])
