"""Markdown table of evaluation results, built from the results.json files of main_linear.py runs
(README tables come from result files, never from typing).

    python scripts/make_tables.py logs/linear_* logs/knn_* [--readme README.md --block results]

Each argument is a results.json file, a run folder holding one, a folder of run folders, or a glob
of any of these. Rows are sorted by data set, backbone and evaluation; within each group the
randomly initialised backbone comes first, labelled as the baseline.
"""

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from readme_block import replace_block  # noqa: E402

COLUMNS = [
    ("method", "---"),
    ("backbone", "---"),
    ("data set", "---"),
    ("eval", "---"),
    ("epochs", "---:"),
    ("Acc@1", "---:"),
    ("Acc@5", "---:"),
    ("pretrain epochs", "---:"),
    ("wall time", "---:"),
]
BASELINE = "random init (baseline)"


def find_results(paths: list[str]) -> list[str]:
    """The results.json files named by `paths` (files, run folders, folders of runs, globs)."""
    found: list[str] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for path in matches:
            if os.path.isfile(path):
                found.append(path)
            elif os.path.isfile(os.path.join(path, "results.json")):
                found.append(os.path.join(path, "results.json"))
            elif os.path.isdir(path):
                found.extend(sorted(glob.glob(os.path.join(path, "*", "results.json"))))
            else:
                sys.exit(f"error: {pattern}: no such file or folder")
    return list(dict.fromkeys(found))  # once each, in order


def load_results(path: str) -> dict:
    with open(path) as f:
        results = json.load(f)
    results.setdefault("run", os.path.basename(os.path.dirname(os.path.abspath(path))))
    return results


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def method_label(results: dict) -> str:
    return BASELINE if results.get("random_init") else results["model_name"]


def eval_label(results: dict) -> str:
    """linear, knn or finetune; "(precomputed)" for a head trained on cached features, which
    sees no augmentation; and the label fraction when below 1."""
    label = "finetune" if results.get("finetune") else results.get("eval", "linear")
    if results.get("precompute_features") and label == "linear":
        label += " (precomputed)"
    fraction = results.get("data_fraction", 1.0)
    if fraction < 1:
        label += f", {100 * fraction:g}% labels"
    return label


def row_cells(results: dict) -> list[str]:
    def count(key: str) -> str:
        return str(results[key]) if results.get(key) else "-"

    return [
        method_label(results),
        results["backbone"],
        results["dataset_name"],
        eval_label(results),
        count("epochs"),
        f"{results['acc1']:.2f}",
        f"{results['acc5']:.2f}",
        count("pretrain_epochs"),
        format_seconds(results["wall_time_s"]) if "wall_time_s" in results else "-",
    ]


def sort_key(results: dict) -> tuple:
    return (
        results["dataset_name"],
        results["backbone"],
        eval_label(results),
        not results.get("random_init"),
        results["model_name"],
        results.get("pretrain_epochs", 0),
        results.get("epochs", 0),
    )


def markdown_table(all_results: list[dict], run_column: bool = False) -> str:
    """One row per results dict, sorted (see the module docstring); `run_column` adds the run
    folder name as the first column."""
    columns = [("run", "---")] * run_column + COLUMNS
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "|".join(align for _, align in columns) + "|",
    ]
    for results in sorted(all_results, key=sort_key):
        cells = [results["run"]] * run_column + row_cells(results)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="results.json files, run folders or globs"
    )
    parser.add_argument(
        "--readme", help="also write the table into this file's block (default: print only)"
    )
    parser.add_argument(
        "--block",
        default="results",
        help="name of the <!-- NAME:begin --> ... <!-- NAME:end --> block (default: results)",
    )
    return parser


def main(argv: list[str] | None = None) -> str:
    args = get_args_parser().parse_args(argv)
    paths = find_results(args.paths)
    if not paths:
        sys.exit(f"error: no results.json under {' '.join(args.paths)}")
    text = markdown_table([load_results(p) for p in paths])
    print(text)
    if args.readme:
        replace_block(args.readme, args.block, text)
    return text


if __name__ == "__main__":
    main()
