"""Two `python app.py` processes on one PostgreSQL (issue 13): simulated participants and judges send
each call to the other process in turn; nothing is lost, duplicated or over-assigned, and the limits hold.
A small run of bench/study_processes.py (the benchmark runs 20 participants and 10 judges)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "study_processes.py"


@pytest.mark.slow  # over 10 s: in `make test`, not in `make test-fast`
def test_two_app_processes_on_one_postgresql(postgres_cluster, tmp_path):
    spec = importlib.util.spec_from_file_location("study_processes", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(participants=4, judges=3, processes=2, db=postgres_cluster.url(), root=tmp_path)
    assert result["errors"] == []
    assert not any(result["problems"].values()), result["problems"]
    assert result["participants"] == 4 and result["rated"] == 8 and result["votes"] == 8 * 15
    assert result["items_complete"] == 8 and result["judge_submissions"] == 16  # quota 2 per item
