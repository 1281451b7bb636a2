"""scripts/benchmark.py: its JSON figures are consistent, and its README table has one column per
configuration; the GPU session's convergence script refuses bad input in one line."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchmark  # noqa: E402


def fake(amp: str, ours: float) -> dict:
    return {
        "device": "GPU X",
        "torch": "2.x",
        "config": {"model_name": "simclr", "amp": amp, "batch_size": 512},
        "ours_images_per_s": ours,
        "bare_images_per_s": 100.0,
        "ratio_ours_to_bare": ours / 100,
        "lightly_images_per_s": None,
        "loader_images_per_s": 300.0,
        "loader_to_model_ratio": 300 / ours,
        "peak_memory_mb": 1000.0,
        "knn_50000x10000x512_s": None,
    }


def test_table_has_a_column_per_configuration_named_by_its_flags():
    text = benchmark.table([fake("none", 98.0), fake("bf16", 150.0)])
    lines = text.splitlines()
    assert lines[0] == "| measured | `--amp none` | `--amp bf16` |"
    assert "| ratio ours / bare | 0.980 | 1.500 |" in lines
    assert "| loader / training step | 3.06 | 2.00 |" in lines
    assert text.endswith("On GPU X, torch 2.x; `--model_name simclr`, `--batch_size 512`.")
    single = benchmark.table([fake("none", 98.0)]).splitlines()
    assert single[0] == "| measured | value |"


@pytest.mark.full  # a subprocess
def test_a_tiny_benchmark_writes_consistent_figures(tmp_path):
    out = tmp_path / "bench.json"
    flags = ["--model_name", "simclr", "--backbone", "small_cnn", "--dataset_name", "synthetic",
             "--image_size", "16", "--limit", "200", "--batch_size", "20", "--device", "cpu",
             "--num_workers", "0", "--steps", "2", "--warmup_steps", "1", "--repeats", "1",
             "--data_batches", "3", "--skip_knn", "--gpu_augment",
             "--output", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark.py", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["config"]["gpu_augment"] is True and r["config"]["batch_size"] == 20
    assert r["ours_images_per_s"] > 0 and r["bare_images_per_s"] > 0
    assert abs(r["ratio_ours_to_bare"] - r["ours_images_per_s"] / r["bare_images_per_s"]) < 1e-9
    assert (
        abs(r["loader_to_model_ratio"] * r["ours_images_per_s"] - r["loader_images_per_s"]) < 1e-6
    )
    assert "| ratio ours / bare |" in proc.stdout


def test_the_gpu_convergence_script_refuses_a_data_dir_without_splits(tmp_path):
    """scripts/gpu_convergence.sh (run by scripts/gpu_session.sh on a GPU loan): a DATA_DIR
    without train/ and test/ is one line and exit 2, before anything starts or is written."""
    out = tmp_path / "conv"
    env = dict(os.environ, DATA_DIR=str(tmp_path / "missing"))
    proc = subprocess.run(
        ["bash", "scripts/gpu_convergence.sh", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "train/ and test/" in proc.stderr
    assert not out.exists()
