"""Speed and memory of every method: `scripts/benchmark.py --only_ours` once per method and
backbone, each in a process of its own (the CPU's peak memory only grows), then a table with
one row per method: images/s of main.py's training step on a held batch, images/s fed by the
loader with the share of time spent waiting for data, and the peak memory, per backbone.

    python scripts/benchmark_methods.py OUT_DIR [--backbones resnet18 vit_tiny] [--methods ...]
        [--readme docs/speed.md] [benchmark.py flags ...]
    python scripts/benchmark_methods.py OUT_DIR --table_only --readme docs/speed.md

Each measurement is OUT_DIR/<method>_<backbone>.json (kept: a second call measures only what is
missing). Defaults: the synthetic set at 32 px, batch 64, 5 timed steps after 2 untimed, 8
batches fed by the loader in this process (--num_workers 0), each method with its own defaults
(heads as in its paper); MAE and I-JEPA only on ViTs. Other flags go to benchmark.py.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme_block import publish  # noqa: E402

from methods import METHODS  # noqa: E402

VIT_NAMES = ("vit", "timm:vit", "timm:deit")  # the backbones MAE and I-JEPA train
DEFAULTS = ["--dataset_name", "synthetic", "--image_size", "32", "--batch_size", "64"]
DEFAULTS += ["--steps", "5", "--warmup_steps", "2", "--repeats", "1", "--data_batches", "8"]
DEFAULTS += ["--num_workers", "0", "--device", "cpu", "--limit", "2000"]


def measure(out_dir: str, method: str, backbone: str, extra: list[str]) -> dict | None:
    path = os.path.join(out_dir, f"{method}_{backbone}.json")
    if not os.path.exists(path):
        flags = [*DEFAULTS, *extra, "--model_name", method, "--backbone", backbone]
        proc = subprocess.run(
            [sys.executable, "scripts/benchmark.py", *flags, "--only_ours", "--output", path],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{method} on {backbone}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
            return None
    with open(path) as f:
        result = json.load(f)
    print(f"{method} on {backbone}: {result['ours_images_per_s']:.1f} images/s")
    return result


def table(results: dict[tuple[str, str], dict], backbones: list[str]) -> str:
    """Rows: methods; per backbone: held-batch images/s, fed images/s (data wait), peak MiB."""
    head = "| method | " + " | ".join(
        f"{b}: images/s | {b}: with data (wait) | {b}: peak MiB" for b in backbones
    )
    lines = [head + " |", "|---|" + "---:|---:|---:|" * len(backbones)]
    for method in METHODS:
        cells = []
        for backbone in backbones:
            r = results.get((method, backbone))
            if r is None:
                cells += ["–", "–", "–"]
                continue
            cells += [
                f"{r['ours_images_per_s']:.1f}",
                f"{r['with_data_images_per_s']:.1f} ({r['data_wait']:.0%})",
                f"{r['peak_memory_mb']:.0f}",
            ]
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    some = next(iter(results.values()))
    shared = ", ".join(
        f"`--{k} {v}`" for k, v in some["config"].items() if k not in ("model_name", "backbone")
    )
    return "\n".join(lines) + f"\n\nOn {some['device']}, torch {some['torch']}; {shared}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "vit_tiny"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--readme", help="put the table in this README's generated block")
    parser.add_argument("--table_only", action="store_true", help="measure nothing")
    args, extra = parser.parse_known_args()
    os.makedirs(args.out_dir, exist_ok=True)
    results = {}
    for backbone in args.backbones:
        for method in args.methods:
            if METHODS[method].requires_vit and not backbone.startswith(VIT_NAMES):
                continue
            path = os.path.join(args.out_dir, f"{method}_{backbone}.json")
            if args.table_only and not os.path.exists(path):
                continue
            result = measure(args.out_dir, method, backbone, extra)
            if result is not None:
                results[(method, backbone)] = result
    publish(table(results, args.backbones), None, "", args.readme, "speed_methods")


if __name__ == "__main__":
    main()
