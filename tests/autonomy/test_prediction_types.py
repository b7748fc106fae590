"""The prediction types live outside `mcp_autonomy.autonomy`, so detection and predictor import
them (and each other) at module level, with no import circle and no function-level imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mcp_autonomy
from mcp_autonomy.autonomy import predictor
from mcp_autonomy.autonomy.detection import prediction as detection_prediction
from mcp_autonomy.prediction_types import Indicator, Prediction, PredictionStatus, PredictionType

PACKAGE = Path(mcp_autonomy.__file__).parent


def _imported_modules(path: Path, *, nested_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if nested_only and node in tree.body:
            continue
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_types_module_imports_nothing_from_autonomy() -> None:
    imported = _imported_modules(PACKAGE / "prediction_types.py")
    assert not [m for m in imported if m.startswith("mcp_autonomy.autonomy")], imported


def test_neither_side_imports_the_other_lazily() -> None:
    # predictor.py imports the detection package at module level; detection never imports the
    # predictor (it builds `Prediction`s from the types module).
    assert not [
        m
        for m in _imported_modules(PACKAGE / "autonomy" / "predictor.py", nested_only=True)
        if m.startswith("mcp_autonomy.autonomy.detection")
    ]
    for path in (PACKAGE / "autonomy" / "detection").glob("*.py"):
        assert "mcp_autonomy.autonomy.predictor" not in _imported_modules(path), path.name


def test_old_import_paths_still_give_the_same_classes() -> None:
    assert predictor.Prediction is Prediction
    assert predictor.PredictionType is PredictionType
    assert predictor.PredictionStatus is PredictionStatus
    assert predictor.Indicator is Indicator
    assert detection_prediction.Prediction is Prediction


def test_the_types_module_loads_without_the_autonomy_package() -> None:
    # A bare package object stands in for mcp_autonomy (whose __init__ imports everything), so
    # only what prediction_types itself imports gets loaded.
    code = (
        "import importlib, sys; "
        f"sys.modules.setdefault('mcp_autonomy', type(sys)('mcp_autonomy')).__path__ = [{str(PACKAGE)!r}]; "
        "importlib.import_module('mcp_autonomy.prediction_types'); "
        "assert not [k for k in sys.modules if k.startswith('mcp_autonomy.autonomy')], sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
