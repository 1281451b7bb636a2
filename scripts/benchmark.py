"""Speed of the training step against a bare PyTorch loop, of the data path, and of kNN.

    python scripts/benchmark.py [main.py flags ...] [--steps 20] [--repeats 3] [--output F.json]
                                [--readme docs/speed.md]
    python scripts/benchmark.py --from_json F.json [G.json ...] --readme docs/speed.md
                                (the table of saved runs, one column each)
    python scripts/benchmark.py --whole_process --dataset_name imagefolder --data_dir DIR
        [--short 10 --long 40] [--repeats 3] [--batch_size 64] [--num_workers 2] [--output F]
                                (main.py against scripts/bare_loop.py as whole processes)

Takes main.py's flags (method, backbone, image size, batch, optimizer, --amp, --channels_last,
--compile, data set, workers) and measures, on one process:

- ours: images/s of main.py's training engine (per-step lr, hooks, NaN guard, logging, the
  online probe and collapse monitors) over `--steps` steps of one batch held in memory, so that
  data loading does not enter;
- bare: a plain loop in this file over the same batch with the same model, loss and optimizer
  (forward, zero_grad, backward, step, and nothing else);
- lightly: the same step written with lightly's SimCLR loss, where lightly is installed;
- data: images/s that main.py's loader (real data set, augmentation, --num_workers) delivers;
- with data: images/s of the engine fed by the loader, and the share of its time spent waiting
  for data (engine.py's data_wait), over `--data_batches` batches;
- kNN: seconds of `utils.knn.weighted_knn` on 50,000 x 512 bank features and 10,000 queries.

`--only_ours` measures ours, with data and the peak memory only (scripts/benchmark_methods.py
runs it once per method, each in its own process, since the CPU peak only grows).

The ours/bare measurements alternate, `--repeats` times each, after a warm-up, and the best of each
is kept, so that a busy machine hurts both alike. Peak memory is the CUDA allocator's peak on a
GPU and the process's resident peak on the CPU.
"""

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme_block import publish  # noqa: E402

import main as pretrain  # noqa: E402
from config import with_recipe  # noqa: E402
from engine import Engine  # noqa: E402
from methods import build_method  # noqa: E402
from monitors import FeatureTap, Monitors, OnlineProbe  # noqa: E402
from networks import build_backbone  # noqa: E402
from optimizers import Optimization, build_optimizer  # noqa: E402
from transformations import BatchViews  # noqa: E402
from utils.accel import Speed, autocast, grad_scaler, prepare_model, to_device  # noqa: E402
from utils.data import UNLABELLED  # noqa: E402
from utils.knn import weighted_knn  # noqa: E402
from utils.misc import resolve_device, set_seed  # noqa: E402
from utils.run import build_lr_schedule, make_loader, seed_epoch  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[pretrain.get_args_parser(add_help=False)]
    )
    group = parser.add_argument_group("benchmark")
    group.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    group.add_argument("--warmup_steps", type=int, default=5, help="untimed steps first")
    group.add_argument("--repeats", type=int, default=3, help="alternating measurements of each")
    group.add_argument("--data_batches", type=int, default=20, help="batches to time the loader")
    group.add_argument("--skip_knn", action="store_true", help="do not time kNN")
    group.add_argument(
        "--only_ours",
        action="store_true",
        help="time main.py's engine (held batch, and fed by the loader) and the peak memory only",
    )
    group.add_argument("--output", help="also write the figures to this JSON file")
    group.add_argument("--readme", help="put the table in this README's generated block")
    group.add_argument("--block", default="benchmark", help="that block's name")
    group.add_argument(
        "--whole_process",
        action="store_true",
        help="main.py against scripts/bare_loop.py as whole processes (with --dataset_name "
        "imagefolder --data_dir), beside the in-process figures",
    )
    group.add_argument("--short", type=int, default=10, help="--whole_process: short run steps")
    group.add_argument("--long", type=int, default=40, help="--whole_process: long run steps")
    group.add_argument(
        "--from_json",
        nargs="+",
        help="measure nothing: the table of saved --output files, one column each",
    )
    return parser


def build(args, device, lr: float):
    """A fresh model and optimizer from the same seed: ours and bare start from the same state."""
    set_seed(args.seed)
    backbone, feat_dim = build_backbone(args.backbone, args.image_size, False)
    model = build_method(args.model_name, backbone, feat_dim, **vars(args)).to(device)
    forward = prepare_model(model, Speed.of(args), device)
    return model, forward, build_optimizer(Optimization.of(args), model, lr)


def data_path(args, device):
    """main.py's training loader, and the BatchViews that draw the views on `device` when
    --gpu_augment asks for it (None: the loader's workers draw them)."""
    dataset, transform = pretrain.training_set(args)
    augment = BatchViews(transform).to(device) if args.gpu_augment else None
    loader = make_loader(
        dataset, torch.device("cpu"), True, args.batch_size, args.seed, args.num_workers
    )
    return loader, augment


def views_of(batch, augment, device) -> list:
    images, _ = batch
    return images if augment is None else augment(images.to(device, non_blocking=True))


def one_batch(args, device):
    """One real batch of augmented views (as main.py's loader gives), kept on the device."""
    loader, augment = data_path(args, device)
    batch = next(iter(loader))
    views = views_of(batch, augment, device)
    return [to_device(v, device, args.channels_last) for v in views], batch[1].to(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def watching(args, model, device) -> Monitors:
    """main.py's monitors: the collapse figures, and the online probe where there are labels."""
    probe = None
    if args.online_probe is not False and args.dataset_name not in UNLABELLED:
        feat_dim = model.backbone(
            torch.zeros(2, 3, args.image_size, args.image_size, device=device)
        )
        probe = OnlineProbe(feat_dim.shape[1], 10, args.online_probe_lr, args.seed).to(device)
    return Monitors(FeatureTap(model.backbone), probe, args.model_name)


def time_ours(args, device, batch, steps: int, schedule, lr: float) -> float:
    """Seconds for `steps` steps of the training engine (engine.Engine, as main.py runs it, with
    its monitors) on `batch` repeated."""
    model, forward, optimizer = build(args, device, lr)
    loader = [batch] * (args.warmup_steps + steps)
    scaler = grad_scaler(Speed.of(args), device)
    step = pretrain.pretraining_step(
        forward, device, Speed.of(args), None, watching(args, model, device), model.backbone
    )
    hooks = dict(
        before_optimizer_step=model.before_optimizer_step,
        after_optimizer_step=model.after_optimizer_step,
    )
    run = lambda part: Engine(  # noqa: E731
        optimizer, schedule, len(part), 1, device, scaler, **hooks
    ).train_epoch(part, 0, step)
    model.train()
    run(loader[: args.warmup_steps])  # compilation, allocator, caches: untimed
    sync(device)
    start = time.perf_counter()
    run(loader[args.warmup_steps :])
    sync(device)
    return time.perf_counter() - start


def time_bare(args, device, batch, steps: int, lr: float) -> float:
    """The same steps as a textbook loop: forward, zero_grad, backward, step."""
    model, forward, optimizer = build(args, device, lr)
    scaler = grad_scaler(Speed.of(args), device)
    views, labels = batch
    model.train()
    for i in range(args.warmup_steps + steps):
        if i == args.warmup_steps:
            sync(device)
            start = time.perf_counter()
        with autocast(Speed.of(args), device):
            loss = forward(views, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync(device)
    return time.perf_counter() - start


def time_lightly(args, device, batch, steps: int, lr: float) -> float | None:
    """SimCLR with lightly's NTXentLoss on our backbone and projector, where lightly exists."""
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        return None
    if args.model_name != "simclr":
        return None
    model, _, optimizer = build(args, device, lr)
    criterion = NTXentLoss(temperature=model.temperature)
    views, _ = batch
    model.train()
    for i in range(args.warmup_steps + steps):
        if i == args.warmup_steps:
            sync(device)
            start = time.perf_counter()
        z1, z2 = model.projector(model.backbone(torch.cat(views[:2]))).chunk(2)
        loss = criterion(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def time_with_data(args, device, batches: int, schedule, lr: float) -> tuple[float, float]:
    """Images/s of the engine fed by main.py's loader, and the share of the time spent waiting
    for its batches (after one untimed batch: workers start up)."""
    loader, augment = data_path(args, device)
    model, forward, optimizer = build(args, device, lr)
    batches = min(batches, len(loader))
    step = pretrain.pretraining_step(
        forward, device, Speed.of(args), augment, watching(args, model, device), model.backbone
    )
    hooks = dict(after_optimizer_step=model.after_optimizer_step)
    seed_epoch(loader, 0, skip_batches=len(loader) - batches)  # the epoch's last `batches`
    run = Engine(
        optimizer, schedule, len(loader), 1, device, grad_scaler(Speed.of(args), device), **hooks
    )
    model.train()
    stats = run.train_epoch(loader, 0, step, first_step=len(loader) - batches)
    return stats["images_per_s"], stats["data_wait"]


def time_loader(args, device, batches: int) -> float:
    """Images/s of the data path alone: the training loader (decode, augmentation, collation,
    workers), and with --gpu_augment the batched views drawn on the device."""
    loader, augment = data_path(args, device)
    seed_epoch(loader, 0)
    batches = min(batches, len(loader))
    iterator = iter(loader)
    views_of(next(iterator), augment, device)  # workers and kernels start up
    sync(device)
    start = time.perf_counter()
    for _ in range(batches - 1):
        views_of(next(iterator), augment, device)
    sync(device)
    return (batches - 1) * loader.batch_size / (time.perf_counter() - start)


def time_knn(device) -> float:
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50_000, 512, generator=generator).to(device)
    labels = torch.randint(0, 10, (50_000,), generator=generator).to(device)
    queries = torch.randn(10_000, 512, generator=generator).to(device)
    sync(device)
    start = time.perf_counter()
    weighted_knn(bank, labels, queries, 10, k=200, temperature=0.1)
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def describe(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{torch.get_num_threads()} threads of {model}"


def measure(args) -> dict:
    """The in-process figures of the flags `args` (the module docstring)."""
    args, _ = with_recipe(args, {"sources": {}})  # main.py's unset flags: the method's recipe
    device = resolve_device(args.device)
    args.print_freq = max(args.steps, args.print_freq)  # no logging inside the timed steps
    args.num_epochs, args.warmup_epochs = 1, 0
    batch = one_batch(args, device)
    schedule, lr = build_lr_schedule(
        Optimization.of(args), args.warmup_steps + args.steps, args.batch_size
    )
    images = args.batch_size * args.steps
    ours, bare, lightly = [], [], []
    for _ in range(args.repeats):  # alternate, so that a busy machine slows both alike
        ours.append(images / time_ours(args, device, batch, args.steps, schedule, lr))
        if args.only_ours:
            continue
        bare.append(images / time_bare(args, device, batch, args.steps, lr))
        seconds = time_lightly(args, device, batch, args.steps, lr)
        if seconds is not None:
            lightly.append(images / seconds)
    loader_len = len(data_path(args, device)[0])
    data_schedule, _ = build_lr_schedule(Optimization.of(args), loader_len, args.batch_size)
    with_data, wait = time_with_data(args, device, args.data_batches, data_schedule, lr)
    result = {
        "device": describe(device),
        "torch": torch.__version__,
        "config": {k: getattr(args, k) for k in CONFIG},
        "ours_images_per_s": max(ours),
        "with_data_images_per_s": with_data,
        "data_wait": wait,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if not args.only_ours:
        result |= {
            "bare_images_per_s": max(bare),
            "ratio_ours_to_bare": max(ours) / max(bare),
            "lightly_images_per_s": max(lightly) if lightly else None,
            "loader_images_per_s": time_loader(args, device, args.data_batches),
            "knn_50000x10000x512_s": None if args.skip_knn else time_knn(device),
        }
        result["loader_to_model_ratio"] = result["loader_images_per_s"] / max(ours)
    return result


def main() -> None:
    args = get_args_parser().parse_args()
    if args.from_json:
        results = []
        for path in args.from_json:
            with open(path) as f:
                results.append(json.load(f))
        publish(table(results), None, "", args.readme, args.block)
        return
    if args.whole_process:
        if args.data_dir is None or args.dataset_name != "imagefolder":
            sys.exit("error: --whole_process needs --dataset_name imagefolder --data_dir DIR")
        args.batch_size = args.batch_size or 64
        result = whole_process(args)
        print(json.dumps({k: v for k, v in result.items() if k != "in_process"}, indent=1))
    else:
        result = measure(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if args.whole_process:
        return
    if not args.only_ours:
        publish(table([result]), None, "", args.readme, args.block)
    else:
        print(json.dumps(result, indent=2))


CONFIG = ("model_name", "backbone", "image_size", "batch_size", "optimizer", "amp")
CONFIG += ("channels_last", "compile", "dataset_name", "num_workers", "in_memory", "gpu_augment")


def rows(r: dict) -> list[tuple[str, str]]:
    lightly = f"{r['lightly_images_per_s']:.1f}" if r["lightly_images_per_s"] else "not installed"
    fed = "not measured"  # older result files
    if r.get("with_data_images_per_s") is not None:
        fed = f"{r['with_data_images_per_s']:.1f}, {r['data_wait']:.0%}"
    knn = r["knn_50000x10000x512_s"]
    return [
        ("training step, `main.py` (`engine.Engine`)", f"{r['ours_images_per_s']:.1f} images/s"),
        ("training step, bare PyTorch loop", f"{r['bare_images_per_s']:.1f} images/s"),
        ("ratio ours / bare", f"{r['ratio_ours_to_bare']:.3f}"),
        ("lightly (SimCLR only)", lightly),
        ("data loader alone", f"{r['loader_images_per_s']:.1f} images/s"),
        ("loader / training step", f"{r['loader_to_model_ratio']:.2f}"),
        ("fed by the loader: images/s, data wait", fed),
        ("peak memory", f"{r['peak_memory_mb']:.0f} MiB"),
        ("weighted kNN, 50,000 x 10,000 x 512, k=200", f"{knn:.1f} s" if knn else "skipped"),
    ]


def table(results: list[dict]) -> str:
    """One column per measured configuration, named by the flags in which it differs from the
    others; the flags they share, the device and torch's version go under the table."""
    configs = [r["config"] for r in results]
    keys = list(configs[0])
    differ = [k for k in keys if len({str(c.get(k)) for c in configs}) > 1]
    names = [" ".join(f"`--{k} {c.get(k)}`" for k in differ) or "value" for c in configs]
    columns = [dict(rows(r)) for r in results]
    lines = [
        "| measured | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {m} | " + " | ".join(c[m] for c in columns) + " |" for m, _ in rows(results[0])),
    ]
    shared = ", ".join(f"`--{k} {configs[0][k]}`" for k in keys if k not in differ)
    devices = ", ".join(sorted({f"{r['device']}, torch {r['torch']}" for r in results}))
    return "\n".join(lines) + f"\n\nOn {devices}; {shared}."


# ---- --whole_process: main.py against scripts/bare_loop.py, each as a whole process ----
#
# Each command runs as its own process at two lengths (--short and --long steps of one batch).
# Two estimates of each one's steady rate, from the same processes:
# - wall clock: the difference of the wall times of the two lengths cancels what does not grow
#   with the run (imports, the data set's listing, model building, loader start-up, the end's
#   online-probe evaluation, summary and plots): (long - short) x batch / (t_long - t_short), per
#   repeat; the ratio main / bare of each repeat, and their median, are reported. On shared or
#   virtual cores one slow stretch moves a difference of two ~100 s times by 10-20 %;
# - own clock: each long process's images/s after its first WINDOW steps by its own clock, loader
#   waits included (main.py: its metrics.csv windows after the first, --print_freq WINDOW; the
#   bare loop: its printed rate, --skip WINDOW), which leaves out the fixed costs exactly.
# The commands alternate (main, bare, main, bare, ...). main.py runs as a user runs it (its
# defaults: the online probe and monitors on, a checkpoint and plots at the end of the epoch,
# progress bar, TensorBoard), on `--limit steps x batch` class-balanced training images. The
# in-process ratio (this file's main measurement) is taken in the same invocation.

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


def whole_process(args) -> dict:
    """The --whole_process figures (above), and the in-process ones beside them."""
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
    inside = measure(get_args_parser().parse_args([
        "--model_name", "simclr", "--backbone", args.backbone, "--batch_size",
        str(args.batch_size), "--optimizer", "sgd", "--dataset_name", "imagefolder",
        "--data_dir", args.data_dir, "--limit", "2560", "--num_workers", str(args.num_workers),
        "--device", "cpu", "--steps", "10", "--warmup_steps", "3", "--repeats", "3",
        "--skip_knn",
    ]))  # fmt: skip
    config = ("data_dir", "short", "long", "repeats", "batch_size", "num_workers", "backbone")
    return {
        "whole_process_ratio": statistics.median(wall_ratios),
        "own_clock_ratio": statistics.median(own_ratios),
        "in_process_ratio": inside["ratio_ours_to_bare"],
        "wall_clock_ratios": wall_ratios,
        "own_clock_ratios": own_ratios,
        "wall_clock_images_per_s": wall,
        "own_clock_images_per_s": own,
        "in_process": inside,
        "seconds": {f"{who} {n} steps": v for (who, n), v in times.items()},
        "config": {k: getattr(args, k) for k in config},
    }


if __name__ == "__main__":
    main()
