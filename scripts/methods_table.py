"""The methods tables (docs/results/synthetic.md, docs/results/cifar10_cpu.md), read from the
result files of `scripts/methods.sh` (synthetic) or `scripts/cifar10_cpu.sh` (real CIFAR-10): for
each method,
its views and loss, the flags its short run set, and over its seeds the mean ± standard
deviation of: the kNN Acc@1 of its backbone at epoch 0 (random initialisation) and at the end
(metrics.csv), their difference, how many seeds end above their initialisation, and the linear
probe (results.json); beside the linear probe of the randomly initialised backbone (over the
same seeds), and the mean pretraining wall time when every run wrote a summary.json.

    python scripts/methods_table.py LOG_ROOT

The wall time under the table is the sum of LOG_ROOT/wall_seconds.txt, where each run of the
script appends its seconds (a root can be filled in several runs: `methods.sh ROOT new_method`).
scripts/results_pages.py puts the tables of the kept roots into their results pages.

LOG_ROOT holds `pretrain_<method>_s<seed>/`, `linear_<method>_s<seed>/` and
`linear_random_s<seed>/` run folders.
"""

import argparse
import os
import re
import statistics
import sys
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from readme_block import knn_first_last, load_json  # noqa: E402

from config import as_given  # noqa: E402
from flags import VIEW_FLAGS  # noqa: E402
from main import get_args_parser  # noqa: E402
from methods import METHODS  # noqa: E402
from methods.hparams import hyper_parameters, resolve_aliases  # noqa: E402
from transformations import recipe_name  # noqa: E402

# flags every run sets; a row lists them only where it departs from the value most runs use
SHARED_FLAGS = ("backbone", "image_size", "optimizer", "base_lr", "weight_decay", "num_epochs")
SHARED_FLAGS += ("crop_min_scale",)
PARSER = get_args_parser()  # main.py's defaults: a row lists the method flags it changed


def wall_seconds(root: str) -> int | None:
    path = os.path.join(root, "wall_seconds.txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(int(line.split()[0]) for line in f if line.strip())


def method_flags(method: str) -> list[str]:
    """The flags a method's short run may override, in the order its table row lists them: its
    hyper-parameters (methods.hparams), the view flags and --interpolation, the initialisation."""
    flags = [*hyper_parameters(METHODS[method]), *VIEW_FLAGS, "zero_init_residual"]
    return [k for k in flags if k not in SHARED_FLAGS]


def minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s"


def flag(key: str, value) -> str:
    """As typed on the command line: on/off flags by name (`--x`, `--x false`)."""
    if isinstance(value, bool):
        return f"`--{key}`" if value else f"`--{key} false`"
    return f"`--{key} {value}`"


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (the mean alone for one value)."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def seeds_of(root: str, prefix: str) -> dict[int, str]:
    """seed -> run folder, for the folders `<prefix>_s<seed>` under root."""
    found = {}
    for entry in sorted(os.listdir(root)):
        match = re.fullmatch(re.escape(prefix) + r"_s(\d+)", entry)
        if match and os.path.isdir(os.path.join(root, entry)):
            found[int(match.group(1))] = os.path.join(root, entry)
    return found


def method_rows(root: str) -> dict[str, list[dict]]:
    """Per method, one dict per seed whose pretraining and probe both finished."""
    rows = defaultdict(list)
    for method in METHODS:
        for seed, pretrain_dir in seeds_of(root, f"pretrain_{method}").items():
            linear = os.path.join(root, f"linear_{method}_s{seed}", "results.json")
            if not os.path.exists(linear):
                continue
            before, after, steps = knn_first_last(pretrain_dir)
            summary = os.path.join(pretrain_dir, "summary.json")
            summary = load_json(summary) if os.path.exists(summary) else {}
            rows[method].append(
                {
                    "seed": seed,
                    "args": flags_of(pretrain_dir),
                    "before": before,
                    "after": after,
                    "steps": steps,
                    "linear": load_json(linear),
                    "probe_interpolation": probe_interpolation(os.path.dirname(linear)),
                    "seconds": summary.get("wall_time_s"),
                    "online": summary.get("online_acc1"),  # runs since the online probe
                }
            )
    return dict(rows)


def flags_of(run_dir: str) -> dict:
    """A pretraining's flags as given (unset: None): from its config.json's sources, or from the
    args.json of a run without one (which held the flags as given)."""
    record = os.path.join(run_dir, "config.json")
    if os.path.exists(record):
        return as_given(load_json(record))
    return load_json(os.path.join(run_dir, "args.json"))


def online_probe(rows: list[dict]) -> str:
    """The online probe's test Acc@1 over the seeds that measured it (main.py's summary.json)."""
    found = [r["online"] for r in rows if r["online"] is not None]
    return spread(found) if found else "–"


def probe_interpolation(run_dir: str) -> str:
    """The resampling of a probe's crops and test resize (args.json: --eval_interpolation, or
    the --interpolation main_linear.py took for it before; bilinear before either)."""
    path = os.path.join(run_dir, "args.json")
    kept = load_json(path) if os.path.exists(path) else {}
    return kept.get("eval_interpolation") or kept.get("interpolation") or "bilinear"


def own_baseline(root: str, method: str, key: str, interpolation: str = "bilinear") -> str:
    """A method's own untrained-backbone probe, when it trains another backbone than the rest
    (MAE and I-JEPA: a ViT; `linear_random_<method>_s<seed>`): " (untrained: X)"; or when its
    probe resampled otherwise than the shared baseline (bilinear), that baseline's probe so
    resampled (`linear_random_<interpolation>_s<seed>`, scripts/interpolation_check.sh):
    " (untrained, bicubic resizes: X)"; else ""."""
    for prefix, label in (
        (method, "untrained"),
        (interpolation, f"untrained, {interpolation} resizes"),
    ):
        if prefix == "bilinear":
            continue
        found = [
            load_json(os.path.join(d, "results.json"))[key]
            for d in seeds_of(root, f"linear_random_{prefix}").values()
            if os.path.exists(os.path.join(d, "results.json"))
        ]
        if found:
            return f" ({label}: {spread(found)})"
    return ""


def table(root: str) -> str:
    randoms = {
        seed: load_json(os.path.join(d, "results.json"))
        for seed, d in seeds_of(root, "linear_random").items()
        if os.path.exists(os.path.join(d, "results.json"))
    }
    if not randoms:
        sys.exit(f"error: {root} has no linear_random_s<seed>/results.json (the baseline)")
    runs = method_rows(root)
    seeds = sorted({r["seed"] for rows in runs.values() for r in rows})
    timed = all(r["seconds"] is not None for rows in runs.values() for r in rows)
    online = any(r["online"] is not None for rows in runs.values() for r in rows)
    random1 = spread([randoms[s]["acc1"] for s in sorted(randoms)])
    random5 = spread([randoms[s]["acc5"] for s in sorted(randoms)])
    lines = [
        "| method | views | loss | flags of the short run | steps | seeds | kNN Acc@1: random "
        "init → trained | kNN gain | seeds above init | "
        + ("online probe Acc@1 | " if online else "")
        + "linear Acc@1 (random init: "
        f"{random1}) | linear Acc@5 (random init: {random5}) |"
        + (" pretraining time |" if timed else ""),
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"
        + ("---:|" if online else "")
        + ("---:|" if timed else ""),
    ]
    every = [r["args"] for rows in runs.values() for r in rows]
    usual = {key: Counter(a.get(key) for a in every).most_common(1)[0][0] for key in SHARED_FLAGS}
    for method, rows in runs.items():
        args = resolve_aliases(METHODS[method], rows[0]["args"])  # older runs: older names
        changed = [k for k in SHARED_FLAGS if args.get(k) != usual[k]]
        changed += [
            k
            for k in method_flags(method)
            if args.get(k) is not None and args[k] != PARSER.get_default(k)
        ]
        flags = " ".join(flag(k, args[k]) for k in changed)
        gains = [r["after"] - r["before"] for r in rows]
        above = sum(g > 0 for g in gains)
        acc1, acc5 = ([r["linear"][k] for r in rows] for k in ("acc1", "acc5"))
        resampled = Counter(r["probe_interpolation"] for r in rows).most_common(1)[0][0]
        lines.append(
            f"| `{method}` | {recipe_name(METHODS[method].augmentation)} | "
            f"{METHODS[method].loss_summary} | "
            f"{flags or '(paper defaults)'} | {rows[0]['steps']} | {len(rows)} | "
            f"{spread([r['before'] for r in rows])} → {spread([r['after'] for r in rows])} | "
            f"{spread(gains)} | {above}/{len(rows)} | "
            + (f"{online_probe(rows)} | " if online else "")
            + f"{spread(acc1)}{own_baseline(root, method, 'acc1', resampled)} | "
            f"{spread(acc5)}{own_baseline(root, method, 'acc5', resampled)} |"
            + (f" {minutes(statistics.fmean(r['seconds'] for r in rows))} |" if timed else "")
        )
    common = ", ".join(f"`--{k} {v}`" for k, v in usual.items() if v is not None)
    lines += [
        "",
        (
            f"Mean ± standard deviation over the seeds {', '.join(map(str, seeds))} (each seed: "
            "its own initial weights, views and data order; the same initial backbone for every "
            "method of a seed)."
            if len(seeds) > 1
            else f"One seed, {seeds[0]}: no spread yet (the same initial backbone for every "
            "method)."
        )
        + " Shared by the runs unless their row says otherwise: "
        f"{common}. Pretraining time: mean per run.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="LOG_ROOT")
    root = parser.parse_args().root
    seconds = wall_seconds(root)
    print(table(root) + (f"\n\nWall time of the script: {minutes(seconds)}." if seconds else ""))


if __name__ == "__main__":
    main()
