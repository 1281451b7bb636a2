"""main.py against a bare PyTorch loop (scripts/bare_loop.py) as whole processes, and, in the
same invocation, scripts/benchmark.py's in-process ratio: which figure is right.

    python scripts/whole_process.py --data_dir path/to/cifar10 [--short 10 --long 40]
        [--repeats 3] [--batch_size 64] [--num_workers 2] [--output F.json]

Each command runs as its own process at two lengths (--short and --long steps of one batch).
Two estimates of each one's steady rate, from the same processes:

- wall clock: the difference of the wall times of the two lengths cancels what does not grow
  with the run (imports, the data set's listing, model building, loader start-up, the end's
  online-probe evaluation, summary and plots): (long - short) x batch / (t_long - t_short),
  per repeat; the ratio main / bare of each repeat, and their median, are reported. On shared
  or virtual cores one slow stretch moves a difference of two ~100 s times by 10-20 %;
- own clock: each long process's images/s after its first WINDOW (10) steps by its own clock,
  loader waits included (main.py: its metrics.csv windows after the first, --print_freq WINDOW;
  the bare loop: its printed rate, --skip WINDOW), which leaves out the fixed costs exactly.

The commands alternate (main, bare, main, bare, ...). main.py runs as a user runs it (its
defaults: the online probe and monitors on, a checkpoint and plots at the end of the epoch,
progress bar, TensorBoard), on `--limit steps x batch` class-balanced training images.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 10  # steps: main.py's --print_freq and the bare loop's --skip, so both clocks start alike


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of the command as a process, and its standard output."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def own_rate_main(log_dir: str) -> float:
    """main.py's images/s by its own clock: its metrics.csv step windows after the first."""
    with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r["kind"] == "step"][1:]
    return len(rates) / sum(1 / r for r in rates)  # equal windows: the harmonic mean


def own_rate_bare(stdout: str) -> float:
    return json.loads(stdout.strip().splitlines()[-1])["images_per_s"]


def main_command(args, steps: int, out: str, name: str) -> list[str]:
    return [
        sys.executable, "main.py", "--model_name", "simclr", "--backbone", args.backbone,
        "--dataset_name", "imagefolder", "--data_dir", args.data_dir, "--image_size", "32",
        "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers),
        "--limit", str(steps * args.batch_size), "--num_epochs", "1", "--warmup_epochs", "0",
        "--optimizer", "sgd", "--base_lr", "0.03", "--device", "cpu",
        "--logs_dir", out, "--ckpt_dir", out, "--run_name", name, "--print_freq", str(WINDOW),
    ]  # fmt: skip


def bare_command(args, steps: int) -> list[str]:
    return [
        sys.executable, "scripts/bare_loop.py", "--data_dir", args.data_dir, "--steps",
        str(steps), "--batch_size", str(args.batch_size), "--num_workers",
        str(args.num_workers), "--backbone", args.backbone, "--skip", str(WINDOW),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--output")
    args = parser.parse_args()
    times = {(who, n): [] for who in ("main", "bare") for n in (args.short, args.long)}
    own = {"main": [], "bare": []}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            for n in (args.short, args.long):
                name = f"run{n}_{repeat}"
                seconds, _ = timed(main_command(args, n, out, name))
                times[("main", n)].append(seconds)
                seconds, stdout = timed(bare_command(args, n))
                times[("bare", n)].append(seconds)
                if n == args.long:
                    own["main"].append(own_rate_main(os.path.join(out, name)))
                    own["bare"].append(own_rate_bare(stdout))
                print({k: [round(t, 1) for t in v] for k, v in times.items()}, flush=True)
    images = (args.long - args.short) * args.batch_size
    wall = {
        who: [
            images / (long - short)
            for short, long in zip(times[(who, args.short)], times[(who, args.long)], strict=True)
        ]
        for who in ("main", "bare")
    }
    wall_ratios = [m / b for m, b in zip(wall["main"], wall["bare"], strict=True)]
    own_ratios = [m / b for m, b in zip(own["main"], own["bare"], strict=True)]
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
        "whole_process_ratio": statistics.median(wall_ratios),
        "own_clock_ratio": statistics.median(own_ratios),
        "in_process_ratio": in_process["ratio_ours_to_bare"],
        "wall_clock_ratios": wall_ratios,
        "own_clock_ratios": own_ratios,
        "wall_clock_images_per_s": wall,
        "own_clock_images_per_s": own,
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
