"""The quick-start table, read from the result files of `scripts/quickstart.sh` in OUT_DIR:
kNN Acc@1 of the pretraining run at epoch 0 and at its last epoch (metrics.csv), the linear
probes of the pretrained and the randomly initialised backbone (results.json), and the wall
time of the whole quick start (wall_seconds.txt). docs/results/quickstart.md and the README show
it for the kept runs, results/quickstart (scripts/results_pages.py).

    python scripts/quickstart_table.py OUT_DIR
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from readme_block import knn_first_last, load_json  # noqa: E402

RUNS = ("pretrain_simclr", "linear_simclr", "linear_random")  # scripts/quickstart.sh's


def table(root: str) -> str:
    """The table of the quick start whose runs are in `root`, with its wall time."""
    pretrain_dir, linear_dir, random_dir = (os.path.join(root, name) for name in RUNS)
    before, after, steps = knn_first_last(pretrain_dir)
    random, linear = (load_json(os.path.join(d, "results.json")) for d in (random_dir, linear_dir))
    rows = [
        ("random initialisation", before, random),
        (f"{linear['model_name']}, {steps} steps", after, linear),
    ]
    lines = [
        "| backbone weights | kNN Acc@1 (test set) | linear Acc@1 | linear Acc@5 |",
        "|---|---|---|---|",
    ]
    for label, knn_acc1, res in rows:
        lines.append(f"| {label} | {float(knn_acc1):.2f} | {res['acc1']:.2f} | {res['acc5']:.2f} |")
    with open(os.path.join(root, "wall_seconds.txt")) as f:
        minutes, seconds = divmod(int(f.read().split()[0]), 60)
    lines += ["", f"Wall time of the whole quick start: {minutes} min {seconds:02d} s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the OUT_DIR of scripts/quickstart.sh")
    print(table(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
