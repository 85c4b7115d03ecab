"""benchmarks/bench.py in its quick mode: it runs end to end on the shipped model and real films,
and writes every figure the README's Performance section and ../shared/tools/check-contracts read."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.conftest import REPO, shared_data

pytestmark = [pytest.mark.model, pytest.mark.slow]

KEYS = ("predict_ms", "predict_gradcam_ms", "throughput_fps", "baseline_predict_ms", "baseline_predict_gradcam_ms",
        "baseline_throughput_fps", "cold_start_s", "peak_rss_mb", "weights_mb")


def test_quick_benchmark_writes_every_figure(classifier, tmp_path):
    weights = classifier.directory  # the shipped model, or $COVIDXR_TEST_WEIGHTS (conftest)
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--threads", "1", "--json", str(out),
         "--weights", str(weights), "--data", str(shared_data())],
        capture_output=True, text=True, cwd=REPO, timeout=1200)  # generous: a busy 2-core box stretches wall time
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())

    for key in KEYS:
        assert isinstance(report[key], (int, float)) and report[key] > 0, key
    # the weights figure is the shipped files' size, not a constant
    shipped = sum(p.stat().st_size for p in weights.iterdir() if p.is_file() and p.suffix != ".json")
    assert abs(report["weights_mb"] - shipped / 1e6) < 1e-6
    # FLOPs are counted, and ours include the lung segmenter's
    assert report["gflop_per_film"] == pytest.approx(sum(v["gflop"] for v in report["forward"].values()))
    n = len(classifier.nets)  # every network of an ensemble is counted
    assert set(report["forward"]) == {"lung segmenter"} | ({"classifier"} if n == 1 else {f"classifier {i + 1}" for i in range(n)})
    assert report["settings"]["folder_films"] == 16 and report["settings"]["threads"] == 1
    # every film that read_film accepts is timed for both models; the 2048 px PNG is the headline
    assert report["predict_ms"] == report["films"]["png16"]["predict_ms"]
    assert {"png16", "jpeg", "dicom"} <= set(report["films"])
    # the Markdown table the README pastes
    table = run.stdout
    assert "| measure | covidxr | DenseNet-121 @224 | ratio | target | met |" in table
    assert "2048 px 16-bit PNG, bytes to probability" in table


def test_memory_benchmark_scores_every_film_and_reports_memory(classifier):
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory.py"), "--films", "40", "--every", "16",
         "--weights", str(classifier.directory), "--data", str(shared_data() / "cxr")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [ln.split("/")[0].strip() for ln in lines if " films  RSS " in ln] == ["16", "32", "40"]
    assert "scored 40 films (0 errors)" in lines[-1] and "peak" in lines[-1]
