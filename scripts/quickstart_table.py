"""The README's quick-start table, read from the result files of `scripts/quickstart.sh`:
kNN Acc@1 of the pretraining run at epoch 0 and at its last epoch (metrics.csv), and the linear
probes of the pretrained and the randomly initialised backbone (results.json).

    python scripts/quickstart_table.py PRETRAIN_LOG_DIR LINEAR_LOG_DIR RANDOM_LOG_DIR \
        [--seconds N] [--readme README.md]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from readme_block import knn_first_last, load_json, publish  # noqa: E402


def table(pretrain_dir: str, linear_dir: str, random_dir: str) -> str:
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs=3, metavar="LOG_DIR", help="pretrain, linear, random")
    parser.add_argument("--seconds", type=int, help="wall time of the whole quick start")
    parser.add_argument("--readme", help="also put the table in the quickstart block here")
    args = parser.parse_args()
    publish(table(*args.run_dirs), args.seconds, "the whole quick start", args.readme, "quickstart")


if __name__ == "__main__":
    main()
