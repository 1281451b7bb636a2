"""Compare several runs: one PNG overlaying their curves (loss, lr, kNN accuracy of pretraining
runs; train and test accuracy of linear runs), and a Markdown table of their results.

    python scripts/compare_runs.py logs/simclr_* logs/byol_* [--output compare.png]

Each RUN_DIR is a run folder under --logs_dir (holding metrics.csv). Runs with a results.json
(main_linear.py) are tabled with their final accuracy; the others (pretraining, or an evaluation
that did not finish) with the metrics of their last logged epoch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from make_tables import load_results, markdown_table  # noqa: E402

from utils.logging import read_metrics  # noqa: E402
from utils.plots import COMPARE_METRICS, plot_compare  # noqa: E402


def run_names(run_dirs: list[str]) -> list[str]:
    """Folder names, with the parent folder prepended where two runs would share a name."""
    paths = [os.path.normpath(os.path.abspath(d)) for d in run_dirs]
    names = [os.path.basename(p) for p in paths]
    return [
        os.path.join(os.path.basename(os.path.dirname(p)), n) if names.count(n) > 1 else n
        for p, n in zip(paths, names, strict=True)
    ]


def last_epoch_table(runs: dict[str, list[dict]]) -> str:
    """| run | epoch | <each metric some run logged> | from each run's last epoch row."""
    last = {}
    for name, rows in runs.items():
        epochs = [r for r in rows if r["kind"] == "epoch"]
        last[name] = epochs[-1] if epochs else (rows[-1] if rows else {})
    keys = [k for k, _, _ in COMPARE_METRICS if any(row.get(k) for row in last.values())]
    lines = [
        "| run | epoch | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for name, row in last.items():
        cells = [name, row.get("epoch") or "-"] + [row.get(k) or "-" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to compare")
    parser.add_argument(
        "--output", default="compare.png", help="where to write the PNG (default: compare.png)"
    )
    parser.add_argument("--title", default="", help="figure title (default: none)")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = get_args_parser().parse_args(argv)
    runs, results = {}, []
    for name, run_dir in zip(run_names(args.run_dirs), args.run_dirs, strict=True):
        if not os.path.isfile(os.path.join(run_dir, "metrics.csv")):
            sys.exit(f"error: {run_dir} has no metrics.csv: pass run folders under --logs_dir")
        runs[name] = read_metrics(run_dir)
        if os.path.isfile(os.path.join(run_dir, "results.json")):
            results.append({**load_results(os.path.join(run_dir, "results.json")), "run": name})
    drawn = plot_compare(runs, args.output, args.title)
    tables = []
    if results:
        tables.append(markdown_table(results, run_column=True))
    unfinished = {
        name: rows for name, rows in runs.items() if name not in {r["run"] for r in results}
    }
    if unfinished:
        tables.append(last_epoch_table(unfinished))
    text = "\n\n".join(tables)
    print(text)
    print(f"\nplot: {args.output} ({', '.join(drawn)})")
    return text


if __name__ == "__main__":
    main()
