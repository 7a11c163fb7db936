"""The benchmarks still run and still compare the same model on both sides (no timing is asserted here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One corpus cache for both scripts (they tokenize the embedded Bible the same way), not the user's."""
    return str(tmp_path_factory.mktemp("bench-cache"))


def run(cache: str, script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--preset", "tiny", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MASS_CACHE": cache},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_generate_speed_decodes_the_same_outputs_on_both_sides(cache):
    # The script asserts that greedy outputs agree (the same model on both sides) and that every output has
    # the forced length; its table reports how many beam outputs agree.
    out = run(cache, "generate_speed.py", "--sentences", "8", "--reps", "1", "--warmup", "0")
    rows = [line for line in out.splitlines() if line.startswith(("| greedy", "| beam 5"))]
    assert len(rows) == 2 and all(row.endswith("| 100% |") for row in rows), out


def test_pretrain_speed_prints_its_table(cache):
    out = run(cache, "pretrain_speed.py", "--sentences", "100", "--windows", "1", "--steps", "2", "--warmup", "1")
    rows = [line for line in out.splitlines() if line.startswith(("| this project", "| Hugging Face"))]
    assert len(rows) == 2 and rows[1].split("|")[5].strip() == "1.00", out  # BART is the ratio's unit
