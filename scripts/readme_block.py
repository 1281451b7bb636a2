"""Helpers of the scripts that write README tables: read a run's result files, and replace a
generated block of README.md (the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`), so
that README tables come from scripts, never from typing."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.logging import read_metrics  # noqa: E402


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def knn_first_last(run_dir: str) -> tuple[float, float, int]:
    """kNN Acc@1 of a pretraining run at epoch 0 (its random initialisation) and at its last
    kNN evaluation, and that evaluation's step (metrics.csv)."""
    epochs = [r for r in read_metrics(run_dir) if r["kind"] == "epoch" and r.get("knn_acc1")]
    if not epochs or float(epochs[0]["epoch"]) != 0:
        sys.exit(f"error: {run_dir}/metrics.csv has no kNN row at epoch 0 (use --knn_freq)")
    return float(epochs[0]["knn_acc1"]), float(epochs[-1]["knn_acc1"]), int(epochs[-1]["step"])


def replace_block(path: str, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(path) as f:
        content = f.read()
    if begin not in content or end not in content:
        sys.exit(f"error: {path} has no {begin} ... {end} block to update")
    head, rest = content.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")


def publish(text: str, seconds: int | None, what: str, readme: str | None, name: str) -> None:
    """Print a generated table with the wall time of `what` that produced it, and put it in the
    README block `name` when `readme` is given."""
    if seconds is not None:
        minutes, seconds = divmod(seconds, 60)
        text += f"\n\nWall time of {what}: {minutes} min {seconds} s."
    print(text)
    if readme:
        replace_block(readme, name, text)
