"""Run a method's official implementation beside ours on the same weights and the same views,
in float64 on the CPU, and compare the loss, every gradient and, after a few optimizer steps with
the method's post-step updates, every parameter and buffer.

    git clone https://github.com/facebookresearch/simsiam /tmp/simsiam
    python scripts/official_check.py simsiam --official /tmp/simsiam [--steps 3]

The official modules are imported unmodified from the clone; what each adapter imports, and the
small shims it needs (a one-process gloo group where the official code calls torch.distributed,
a bias before a BatchNorm set to zero where ours has none), are in scripts/official_adapters.py
and in the result file. Every parameter and buffer of both models is mapped one to one (the
check stops naming any left over); BatchNorm weights, biases and running statistics are drawn
away from their initial values first, so that zero-initialised layers hide nothing.

Writes results/official_check/<method>.json (the official repository and commit, ours, the
largest relative differences, pass or fail at 1e-10) unless --output says otherwise; exit 1 on a
failure, 2 on a bad clone.
"""

import argparse
import ast
import json
import os
import subprocess
import sys
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from official_adapters import ADAPTERS, Pair  # noqa: E402
from readme_block import replace_block  # noqa: E402

from utils.accel import Speed, prepare_model  # noqa: E402
from utils.distributed import gather_objects, world_size  # noqa: E402
from utils.distributed import rank as this_rank  # noqa: E402
from utils.misc import git_sha  # noqa: E402
from utils.processes import run_processes  # noqa: E402

TOLERANCE = 1e-10  # relative, in float64
# a tensor whose largest entry is below this share of the model's largest (of its gradients, of
# its weights) is measured against that share: a gradient that is zero in exact arithmetic (a
# LayerNorm's bias before a BatchNorm that removes every shift), and the weights it moves, are
# rounding noise on both sides, not values to compare
FLOOR = 1e-4
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def state_mapping(pair: Pair) -> dict[str, str]:
    """Official key -> our key for every parameter and buffer: within each (official prefix, our
    prefix) group of `pair.groups`, in registration order, shapes equal; the official keys of
    `pair.zeroed` (set to zero: no counterpart here) left out. Anything unmapped stops the check."""
    official, ours = pair.official.state_dict(), pair.ours.state_dict()
    mapping, taken = {}, set()
    if pair.rename is not None:  # by name
        for key in official:
            if key not in pair.zeroed and key not in pair.ignored and pair.rename(key) in ours:
                mapping[key] = pair.rename(key)
                taken.add(mapping[key])
    for off_prefix, our_prefix in pair.groups:
        left = [k for k in official if k.startswith(off_prefix) and k not in mapping]
        left = [k for k in left if k not in pair.zeroed and k not in pair.ignored]
        right = [k for k in ours if k.startswith(our_prefix) and k not in taken]
        right = [k for k in right if k not in pair.ours_only]
        if len(left) != len(right):
            names = {k[len(off_prefix) :] for k in left} ^ {k[len(our_prefix) :] for k in right}
            sys.exit(
                f"error: {off_prefix}* has {len(left)} entries, ours {our_prefix}* {len(right)}: "
                f"{sorted(names)[:6]}"
            )
        for a, b in zip(left, right, strict=True):
            if pair.convert.get(a, lambda t: t)(official[a]).shape != ours[b].shape:
                sys.exit(
                    f"error: {a} {tuple(official[a].shape)} against {b} {tuple(ours[b].shape)}"
                )
            mapping[a] = b
            taken.add(b)
    combined = {k for keys, _ in pair.combined.values() for k in keys}
    unmapped = [
        k
        for k in official
        if k not in mapping and k not in {**pair.zeroed, **pair.ignored} and k not in combined
    ]
    taken |= set(pair.combined)
    missing = [k for k in ours if k not in taken and k not in pair.ours_only]
    if unmapped or missing:
        sys.exit(f"error: unmapped official {unmapped[:5]}, ours {missing[:5]}")
    return mapping


@torch.no_grad()
def share_weights(pair: Pair, mapping: dict[str, str], seed: int) -> None:
    """Draw the official BatchNorms' affine parameters and statistics away from their defaults,
    zero `pair.zeroed`, and copy every official tensor into ours."""
    generator = torch.Generator().manual_seed(seed)
    for module in pair.official.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape,
                                                            generator=generator))  # fmt: skip
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape,
                                                          generator=generator))  # fmt: skip
    pair.prepare()
    official = pair.official.state_dict()
    for key in pair.zeroed:
        official[key].zero_()
    ours = pair.ours.state_dict()
    for a, b in mapping.items():
        ours[b].copy_(pair.convert.get(a, lambda t: t)(official[a]))
    for b, (keys, join) in pair.combined.items():
        ours[b].copy_(join([official[k] for k in keys]))


def relative(a: Tensor, b: Tensor, floor: float = 0.0) -> float:
    """The largest |a - b| over the largest |b|, or over `floor` where |b| is below it (exactly
    0.0 for equal tensors)."""
    a, b = a.double(), b.double()
    scale = max(b.abs().max().item() if b.numel() else 0.0, floor)
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check(name: str, official_dir: str, steps: int, seed: int, extra: dict) -> dict:
    """The comparison in this process; under a process group of several (--processes), each
    process feeds its own views to the official model in DDP as its training script wraps it
    and to ours as main.py does (utils.accel.prepare_model), and the worst differences of all
    processes are reported."""
    torch.manual_seed(seed)
    pair = ADAPTERS[name].build(official_dir, extra)
    pair.official.double().train()
    pair.ours.double().train()
    mapping = state_mapping(pair)
    share_weights(pair, mapping, seed)
    processes, rank = world_size(), this_rank()
    official_forward, ours_forward = pair.official, pair.ours
    if processes > 1:  # main_moco.py:225: DDP with its defaults
        official_forward = DistributedDataParallel(pair.official)
        ours_forward = prepare_model(pair.ours, Speed(), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed + 1 + 7919 * rank)
    size, count, batch = pair.image_size, pair.views, pair.batch
    worst = {"loss": 0.0, "gradients": 0.0, "state": 0.0}
    where = {}
    params = dict(pair.official.named_parameters())
    ours_params = dict(pair.ours.named_parameters())
    options = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt_official = torch.optim.SGD([p for p in params.values() if p.requires_grad], **options)
    opt_ours = torch.optim.SGD([p for p in ours_params.values() if p.requires_grad], **options)
    for step in range(steps):
        sizes = pair.sizes or [size] * count
        views = [torch.randn(batch, 3, side, side, generator=generator, dtype=torch.float64)
                 for side in sizes]  # fmt: skip
        labels = torch.arange(batch) % max(batch // 2, 1)
        opt_official.zero_grad(set_to_none=True)
        opt_ours.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1000 + step)  # the same random draws (MAE's masking noise)
        loss_official = pair.official_loss(views, labels, official_forward)
        torch.manual_seed(seed + 1000 + step)
        loss_ours = ours_forward(views, labels)["loss"]
        loss_official.backward()
        loss_ours.backward()
        losses = torch.stack([loss_ours.detach(), loss_official.detach()])
        if processes > 1:  # the objective DDP's averaged gradients descend (VICReg's official
            # invariance term is each process's own, ours the whole batch's: same mean)
            torch.distributed.all_reduce(losses)
            losses /= processes
        diff = relative(losses[0], losses[1])
        if diff >= worst["loss"]:
            worst["loss"], where["loss"] = diff, f"step {step}"
        grads = [p.grad.abs().max().item() for p in params.values() if p.grad is not None]
        floor = FLOOR * max(grads, default=0.0)
        for a, b in mapping.items():
            if a in params and params[a].grad is not None:
                diff = relative(ours_params[b].grad, params[a].grad, floor)
                if diff >= worst["gradients"]:
                    worst["gradients"], where["gradients"] = diff, f"{a} (step {step})"
        for b, (keys, join) in pair.combined.items():  # one of ours from several official
            parts = [params[k].grad if params[k].grad is not None else torch.zeros_like(params[k])
                     for k in keys]  # fmt: skip
            diff = relative(ours_params[b].grad, join(parts), floor)
            if diff >= worst["gradients"]:
                worst["gradients"], where["gradients"] = diff, f"{b} (step {step})"
        pair.before_step()
        pair.ours.before_optimizer_step()
        opt_official.step()
        opt_ours.step()
        pair.after_step(step, steps)
        pair.ours.after_optimizer_step(step, steps)
    pair.finish()
    official, ours = pair.official.state_dict(), pair.ours.state_dict()
    floats = [
        t.abs().max().item() for t in official.values() if t.is_floating_point() and t.numel()
    ]
    floor = FLOOR * max(floats, default=0.0)
    for a, b in mapping.items():
        if rank > 0 and a.rsplit(".", 1)[-1] in BN_STATISTICS:
            continue
        diff = relative(ours[b], pair.convert.get(a, lambda t: t)(official[a]), floor)
        if diff >= worst["state"]:
            worst["state"], where["state"] = diff, a
    for b, (keys, join) in pair.combined.items():
        diff = relative(ours[b], join([official[k] for k in keys]), floor)
        if diff >= worst["state"]:
            worst["state"], where["state"] = diff, b
    if processes > 1:  # the worst of all processes, and where
        everyone = gather_objects((worst, where))
        for kind in worst:
            top = max(range(processes), key=lambda r: everyone[r][0][kind])
            worst[kind] = everyone[top][0][kind]
            where[kind] = f"{everyone[top][1].get(kind, '')} (process {top})"
    adapter = ADAPTERS[name]
    shims = list(adapter.shims)
    if processes > 1:
        shims.append(
            "not compared on processes other than rank 0: BatchNorm running statistics (the "
            "official DDP copies rank 0's into every process at each forward, ours keeps each "
            "process's own; only rank 0's are saved, and training reads none)"
        )
    return {
        "method": name,
        "official": {"repository": adapter.repository, "commit": official_commit(official_dir)},
        "ours": git_sha(),
        "imports": adapter.imports,
        "processes": processes,
        "shims": shims
        + [f"zeroed {k}: {why}" for k, why in pair.zeroed.items()]
        + [f"not compared: {k}: {why}" for k, why in {**pair.ignored, **pair.ours_only}.items()],
        "ours_flags": extra,
        "steps": steps,
        "views": ", ".join(f"[{batch}, 3, {side}, {side}]" for side in pair.sizes or [size] * count)
        + " float64",
        "largest_relative_difference": worst,
        "where": where,
        "tolerance": TOLERANCE,
        "also_compared": pair.also,
        "passed": all(v <= TOLERANCE for v in worst.values()) and all(pair.also.values()),
    }


def in_processes(processes: int, *arguments) -> dict:
    """check(*arguments) in `processes` gloo processes on this machine; rank 0's result."""
    return run_processes(partial(_checked, arguments), processes)["result"]


def _checked(arguments: tuple, rank: int, out: dict) -> None:
    result = check(*arguments)
    if rank == 0:
        out["result"] = result


def official_commit(path: str) -> str:
    """The clone's commit (its OFFICIAL_COMMIT file where it is an export without .git)."""
    marker = os.path.join(path, "OFFICIAL_COMMIT")
    if os.path.isfile(marker):
        return open(marker).read().strip()
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(folder: str = os.path.join(ROOT, "results", "official_check")) -> str:
    """docs/fidelity.md's table of the checks, from their result files."""
    lines = [
        "| method | official code | loss | gradients | weights and buffers after the steps "
        "| at 1e-10 | shims |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            r = json.load(f)
        worst = r["largest_relative_difference"]
        shims = "; ".join(s.replace("|", "/") for s in r["shims"])
        processes = f" ({r['processes']} processes)" if r.get("processes", 1) > 1 else ""
        flags = " ".join(f"{k}={v}" for k, v in r.get("ours_flags", {}).items())
        processes += f" with `--ours {flags}`" if flags else ""
        also = "".join(
            f"; {k}: {'yes' if v else 'NO'}" for k, v in r.get("also_compared", {}).items()
        )
        lines.append(
            f"| `{r['method']}`{processes} | "
            f"{r['official']['repository']} {r['official']['commit']} | "
            f"{worst['loss']:.1e} | {worst['gradients']:.1e} | {worst['state']:.1e} "
            f"({r['steps']} steps) | {'equal' if r['passed'] else 'differs'}{also} | {shims} |"
        )
    return "\n".join(lines)


def value_of(text: str):
    """A --ours value: true/false, a number, or the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", nargs="?", choices=sorted(ADAPTERS))
    parser.add_argument("--official", help="a clone of the official repository")
    parser.add_argument(
        "--table", metavar="FILE", help="write the table of the kept results into FILE's "
        "`official_check` block (docs/fidelity.md) instead of checking",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--processes", type=int, default=1, help="gloo processes on this machine, each with its "
        "own views, the models in DDP (methods whose official code gathers across processes)",
    )  # fmt: skip
    parser.add_argument("--output", help="default: results/official_check/<method>.json")
    parser.add_argument(
        "--ours", nargs="*", default=[], metavar="KEY=VALUE",
        help="our method's hyper-parameters set otherwise (concat_views=true): what they change",
    )  # fmt: skip
    args = parser.parse_args()
    extra = {k: value_of(v) for k, v in (item.split("=", 1) for item in args.ours)}
    if args.table:
        replace_block(args.table, "official_check", table())
        return
    if args.method is None or args.official is None:
        parser.error("give METHOD and --official DIR (or --table FILE)")
    if not os.path.isdir(args.official):
        repository = ADAPTERS[args.method].repository
        print(f"error: --official {args.official} is not a folder: git clone "
              f"https://github.com/{repository} first", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    adapter = ADAPTERS[args.method]
    if args.processes not in adapter.processes:
        print(f"error: --processes {args.processes}: the {args.method} check runs in "
              f"{' or '.join(map(str, adapter.processes))}", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    arguments = (args.method, os.path.abspath(args.official), args.steps, args.seed, extra)
    result = in_processes(args.processes, *arguments) if args.processes > 1 else check(*arguments)
    suffix = f"_{args.processes}processes" if args.processes > 1 else ""
    output = args.output or os.path.join(
        ROOT, "results", "official_check", f"{args.method}{suffix}.json"
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    worst = result["largest_relative_difference"]
    print(f"{args.method} against {result['official']['repository']} "
          f"{result['official']['commit']}: loss {worst['loss']:.1e}, gradients "
          f"{worst['gradients']:.1e}, parameters and buffers after {args.steps} steps "
          f"{worst['state']:.1e} -> {'PASS' if result['passed'] else 'FAIL'} "
          f"(at {TOLERANCE:g})")  # fmt: skip
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
