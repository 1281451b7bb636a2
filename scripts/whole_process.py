"""main.py against a bare PyTorch loop (scripts/bare_loop.py) as whole processes, and, in the
same invocation, scripts/benchmark.py's in-process ratio: which figure is right.

    python scripts/whole_process.py --data_dir ../shared/data/cifar10 [--short 10 --long 30]
        [--repeats 2] [--batch_size 64] [--num_workers 2] [--output F.json]

Each command runs as its own process at two lengths (--short and --long steps of one batch);
the difference of the wall times cancels what does not grow with the run (imports, the data
set's listing, model building, loader start-up, the end's summary and plots), so
(long - short) x batch / (t_long - t_short) is the steady rate. The two commands alternate,
`--repeats` times each length, and the fastest time of each is kept. main.py runs as a user
runs it (its defaults: the online probe and monitors on, a checkpoint and plots at the end of
the epoch, progress bar), on `--limit steps x batch` class-balanced training images.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main_command(args, steps: int, out: str) -> list[str]:
    return [
        sys.executable, "main.py", "--model_name", "simclr", "--backbone", args.backbone,
        "--dataset_name", "imagefolder", "--data_dir", args.data_dir, "--image_size", "32",
        "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers),
        "--limit", str(steps * args.batch_size), "--num_epochs", "1", "--warmup_epochs", "0",
        "--optimizer", "sgd", "--base_lr", "0.03", "--device", "cpu",
        "--logs_dir", out, "--ckpt_dir", out, "--run_name", f"run{steps}_{time.time_ns()}",
    ]  # fmt: skip


def bare_command(args, steps: int) -> list[str]:
    return [
        sys.executable, "scripts/bare_loop.py", "--data_dir", args.data_dir, "--steps",
        str(steps), "--batch_size", str(args.batch_size), "--num_workers",
        str(args.num_workers), "--backbone", args.backbone,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--output")
    args = parser.parse_args()
    times = {(who, n): [] for who in ("main", "bare") for n in (args.short, args.long)}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for n in (args.short, args.long):
                times[("main", n)].append(timed(main_command(args, n, out)))
                times[("bare", n)].append(timed(bare_command(args, n)))
                print({k: [round(t, 1) for t in v] for k, v in times.items()}, flush=True)
    images = (args.long - args.short) * args.batch_size
    rate = {
        who: images / (min(times[(who, args.long)]) - min(times[(who, args.short)]))
        for who in ("main", "bare")
    }
    inside = os.path.join(tempfile.gettempdir(), f"benchmark_{os.getpid()}.json")
    subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--model_name", "simclr", "--backbone",
         args.backbone, "--batch_size", str(args.batch_size), "--optimizer", "sgd",
         "--dataset_name", "imagefolder", "--data_dir", args.data_dir, "--limit", "2560",
         "--num_workers", str(args.num_workers), "--device", "cpu", "--steps", "10",
         "--warmup_steps", "3", "--repeats", "3", "--skip_knn", "--output", inside],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with open(inside) as f:
        in_process = json.load(f)
    result = {
        "whole_process_images_per_s": rate,
        "whole_process_ratio": rate["main"] / rate["bare"],
        "in_process_ratio": in_process["ratio_ours_to_bare"],
        "in_process": in_process,
        "seconds": {f"{who} {n} steps": v for (who, n), v in times.items()},
        "config": vars(args),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "in_process"}, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
