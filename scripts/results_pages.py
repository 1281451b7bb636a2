"""The results pages and the README's results summary, written from the result files kept under
`results/`: for each benchmark, `docs/results/<name>.md` (what it measures, the command that
repeats it, the full table over its seeds, where and under what load it ran, and what the
numbers support, computed from them) and, in the README's `results` block, a compact table per
benchmark with one line saying where and how it was measured and a link to its page.

    python scripts/results_pages.py            write the pages and the README block
    python scripts/results_pages.py --check    exit 1 naming each stale one (tests/test_tables.py)

Where and under what load a benchmark ran is data kept beside its result files:
`results/<folder>/measured.json` ({"hardware", "load", "when", "notes": [...]}).
"""

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchmark  # noqa: E402
import methods_table  # noqa: E402
import quickstart_table  # noqa: E402
from methods_table import spread  # noqa: E402
from readme_block import load_json  # noqa: E402

from methods import METHODS  # noqa: E402

PAGES = "docs/results"
BLOCK = "results"


@dataclass(frozen=True)
class Benchmark:
    name: str  # docs/results/<name>.md
    title: str
    folder: str  # results/<folder>
    repeat: str  # the command that repeats the runs into results/<folder>
    measures: str  # what it measures and why (prose that stays true)
    table: Callable[[str], str]  # the full table from the folder
    findings: Callable[[str], list[str]]  # what the numbers support, computed from them


def probe_rows(root: str) -> dict[str, dict]:
    """Per method of a methods table: its kNN gains, linear Acc@1 over seeds, and its untrained
    baseline's probe over the same seeds (its own where it trains another backbone, or the one
    resized as its probe was: methods_table.own_baseline)."""
    found = {}
    for method, rows in methods_table.method_rows(root).items():
        seeds = [r["seed"] for r in rows]
        resized = rows[0]["probe_interpolation"]
        base = {}
        for prefix in (method, resized, "random"):
            if not base and prefix != "bilinear":
                name = "linear_random" if prefix == "random" else f"linear_random_{prefix}"
                base = methods_table.seeds_of(root, name)
        baseline = [
            load_json(os.path.join(base[s], "results.json"))["acc1"] for s in seeds if s in base
        ]
        found[method] = {
            "gains": [r["after"] - r["before"] for r in rows],
            "acc1": [r["linear"]["acc1"] for r in rows],
            "baseline": baseline,
            "own": bool(methods_table.seeds_of(root, f"linear_random_{method}")),
        }
    return found


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def methods_findings(root: str) -> list[str]:
    """What a methods table supports: who ends above its initialisation in every seed, whose
    probe clears its baseline by more than the spreads, how far apart rows must be to be ranked,
    and the leaders."""
    rows = probe_rows(root)
    seeds = max(len(r["gains"]) for r in rows.values())
    above = [m for m, r in rows.items() if all(g > 0 for g in r["gains"])]
    below = [m for m, r in rows.items() if all(g <= 0 for g in r["gains"])]
    clear = [
        m
        for m, r in rows.items()
        if statistics.fmean(r["acc1"]) - statistics.fmean(r["baseline"])
        > max(sd(r["acc1"]), sd(r["baseline"]))
    ]
    gain_sd = max(rows, key=lambda m: sd(rows[m]["gains"]))
    probe_sd = max(rows, key=lambda m: sd(rows[m]["acc1"]))
    by_gain = sorted(rows, key=lambda m: -statistics.fmean(rows[m]["gains"]))
    by_probe = sorted(rows, key=lambda m: -statistics.fmean(rows[m]["acc1"]))
    shown = lambda ms, key: ", ".join(  # noqa: E731
        f"`{m}` ({statistics.fmean(rows[m][key]):+.2f})" if key == "gains"
        else f"`{m}` ({statistics.fmean(rows[m][key]):.2f})" for m in ms
    )  # fmt: skip
    slow = [m for m in rows if METHODS[m].slow_start > 1]
    own = [m for m in rows if rows[m]["own"]]
    lines = [
        f"{len(above)} of {len(rows)} methods end above their initialisation in kNN in every one "
        f"of their seeds (up to {seeds})"
        + (
            f"; {', '.join(f'`{m}`' for m in below)} end at or below it in every seed"
            if below
            else ""
        )  # fmt: skip
        + ".",
        f"{len(clear)} of {len(rows)} probes end above their untrained backbone's by more than "
        "the larger of the two spreads"
        + (
            f" (not: {', '.join(f'`{m}`' for m in rows if m not in clear)})"
            if len(clear) < len(rows)
            else ""
        )  # fmt: skip
        + (
            f"; {', '.join(f'`{m}`' for m in own)} are compared with their own untrained ViT"
            if own
            else ""
        )  # fmt: skip
        + ".",
        f"The largest spread of a row is {sd(rows[gain_sd]['gains']):.2f} kNN points "
        f"(`{gain_sd}`) and {sd(rows[probe_sd]['acc1']):.2f} probe points (`{probe_sd}`): rows "
        "closer than about that are not ranked by this table.",
        f"Largest kNN gains: {shown(by_gain[:3], 'gains')}; highest probes: "
        f"{shown(by_probe[:3], 'acc1')}.",
    ]
    if slow:
        lines.append(
            f"{', '.join(f'`{m}`' for m in slow)} start slowly and get more steps than the others "
            "(the `steps` column), so per step they learn slower than their row suggests."
        )
    lines.append(
        "The budget is a few thousandths of a paper's: the table shows what each method does in "
        "minutes on a CPU with the short recipes (`recipes/short/`), not what it reaches or how "
        "methods rank at full length."
    )
    return lines


def methods_with_time(root: str) -> str:
    """The full methods table, and the wall time of every invocation of its script."""
    seconds = methods_table.wall_seconds(root)
    if seconds is None:
        return methods_table.table(root)
    return (
        methods_table.table(root)
        + f"\n\nWall time of the script: {methods_table.minutes(seconds)}."
    )


def quickstart_findings(root: str) -> list[str]:
    pretrain, linear, random = (os.path.join(root, n) for n in quickstart_table.RUNS)
    before, after, steps = methods_table.knn_first_last(pretrain)
    trained = load_json(os.path.join(linear, "results.json"))["acc1"]
    untrained = load_json(os.path.join(random, "results.json"))["acc1"]
    return [
        f"In {steps} steps the kNN accuracy of the backbone rises from {before:.2f} to "
        f"{after:.2f} %, and the probe of the pretrained backbone ends {trained - untrained:+.2f} "
        f"points from the untrained one's ({trained:.2f} against {untrained:.2f} %; chance 10 %).",
        "One seed: the quick start shows the method learning, it does not measure a spread; the "
        "synthetic methods table repeats SimCLR over three seeds with its short recipe.",
    ]


FINETUNE_SEEDS = ("mae_s123", "mae_s124", "mae_s125")


def finetune_rows(root: str) -> list[tuple[str, dict, dict]]:
    """(seed folder, fine-tuned from MAE, fine-tuned from random init) of each kept seed."""
    found = []
    for seed in FINETUNE_SEEDS:
        runs = [
            os.path.join(root, seed, f"finetune_{start}", "results.json")
            for start in ("pretrained", "random")
        ]
        if all(os.path.exists(r) for r in runs):
            found.append((seed, *(load_json(r) for r in runs)))
    return found


def finetune_table(root: str) -> str:
    lines = [
        "| seed | from MAE: Acc@1 | Acc@5 | from random init: Acc@1 | Acc@5 | gap (Acc@1) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = finetune_rows(root)
    for seed, tuned, random in rows:
        lines.append(
            f"| {seed.split('_s')[1]} | {tuned['acc1']:.2f} | {tuned['acc5']:.2f} | "
            f"{random['acc1']:.2f} | {random['acc5']:.2f} | {tuned['acc1'] - random['acc1']:+.2f} |"
        )
    column = lambda i, key: [r[i][key] for r in rows]  # noqa: E731
    gaps = [t["acc1"] - r["acc1"] for _, t, r in rows]
    lines.append(
        f"| mean ± sd | {spread(column(1, 'acc1'))} | {spread(column(1, 'acc5'))} | "
        f"{spread(column(2, 'acc1'))} | {spread(column(2, 'acc5'))} | {spread(gaps)} |"
    )
    return "\n".join(lines)


def finetune_sentence(root: str) -> str:
    rows = finetune_rows(root)
    tuned, random = ([r[i]["acc1"] for r in rows] for i in (1, 2))
    return (
        f"Fine-tuned ViT-Tiny, Acc@1 over {len(rows)} seeds: {spread(tuned)} from MAE's "
        f"pretraining, {spread(random)} from random initialisation."
    )


def finetune_findings(root: str) -> list[str]:
    rows = finetune_rows(root)
    gaps = [t["acc1"] - r["acc1"] for _, t, r in rows]
    helps = all(g > 0 for g in gaps) and statistics.fmean(gaps) > sd(gaps)
    return [
        f"Fine-tuned, the MAE-pretrained ViT ends above the randomly initialised one in "
        f"{sum(g > 0 for g in gaps)} of {len(gaps)} seeds, by {spread(gaps)} Acc@1 points: at "
        f"this budget MAE's pretraining {'helps' if helps else 'does not clearly help'} "
        "fine-tuning (compare its linear probe against the untrained ViT's in the synthetic "
        "table: MAE is judged by fine-tuning).",
        "MAE's full fine-tuning augmentation and batch mixing (`FULL=1`: mixup, cutmix, "
        "RandAugment, random erasing), made for 100 epochs, left the pretrained ViT at chance "
        "after 5 of 10 epochs (`mae_s123/finetune_full_pretrained_stopped/`), so the check "
        "leaves them out.",
    ]


SPEED_RUNS = ("fp32", "bf16", "channels_last", "bf16_channels_last")


def speed_results(root: str) -> list[dict]:
    return [load_json(os.path.join(root, f"{name}.json")) for name in SPEED_RUNS]


def speed_summary(root: str) -> str:
    lines = [
        "| configuration | `main.py` step | bare PyTorch loop | ours / bare | fed by the loader |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in zip(SPEED_RUNS, speed_results(root), strict=True):
        fed = r.get("with_data_images_per_s")
        lines.append(
            f"| {name} | {r['ours_images_per_s']:.1f} | {r['bare_images_per_s']:.1f} | "
            f"{r['ratio_ours_to_bare']:.3f} | {f'{fed:.1f}' if fed else '–'} |"
        )
    return "\n".join(lines) + "\n\nImages/s of SimCLR on ResNet-18 at 32 px, batch 64."


def speed_findings(root: str) -> list[str]:
    ratios = [r["ratio_ours_to_bare"] for r in speed_results(root)]
    return [
        f"The training step of `main.py` runs at {min(ratios):.3f} to {max(ratios):.3f} times "
        "the images/s of a bare PyTorch loop of the same model, loss and optimizer in these "
        "configurations: the toolkit's loop (schedules, monitors, guards) costs no measurable "
        "speed on this CPU.",
        "[docs/speed.md](../speed.md) reads these figures, the whole-process comparison and "
        "every method's speed.",
    ]


SYNTHETIC = """Every method on the built-in `synthetic` set: pretraining of `small_cnn` at
16x16 on 4,000 images at batch 128 (MAE and I-JEPA: `vit_tiny` at 32 px), with the short
recipes of `recipes/short/` (a few flags changed from each method's official recipe to fit a CPU
budget of minutes, listed in the table); kNN (k=20) on the test set at epoch 0 (the random
initialisation, the same for every method of a seed) and at the end; then a linear probe (SGD,
`--probe_bn`, 10 epochs) of the frozen backbone beside the same probe of the untrained one.
Seeds 123, 124 and 125 change the initial weights, the views and the data order. Chance is 10 %:
the synthetic classes differ only in shape while colour, position and background vary at random
(`python scripts/check_synthetic.py` measures how far raw pixels and a supervised CNN get)."""

CIFAR10 = """Every method on the real CIFAR-10 (ImageFolder JPEGs, `DATA=path/to/cifar10`) on 2
CPU cores: pretraining of `small_cnn` at 32x32 on a class-balanced subset of 10,000 training
images with the short recipes of `recipes/short/` and `recipes/short/cifar10.args` (MAE and
I-JEPA: `vit_tiny`); kNN (k=200) on the 10,000 test images at epoch 0 and every 2 epochs; then a
linear probe of the frozen backbone (SGD, `--probe_bn`, 30 epochs) on features of all 50,000
training images computed once (`--precompute_features`), beside the same probe of the untrained
backbone. Seeds 123, 124 and 125; every method of a seed starts from the same initialisation.
The full CIFAR-10 recipes (`recipes/cifar10/`, ResNet-18, 800-1000 epochs, for a GPU:
`scripts/cifar10_reference.sh`) have not been run here; [the numbers others
published](../reference_results.md) are listed to compare with."""

QUICKSTART = """The README's quick start: SimCLR pretraining of `small_cnn` at 16x16 on 4,000
images of the built-in synthetic set for 8 epochs (Adam, batch 128; kNN with k=20 on the test
set every 2 epochs), then a linear probe (SGD, `--probe_bn`, 10 epochs) of the frozen backbone
beside the same probe of the untrained one (`recipes/quickstart/`). Chance is 10 %."""

FINETUNE = """Does MAE's pretraining help fine-tuning at a CPU budget? `vit_tiny` at 32 px on
4,000 synthetic images: 20 epochs of MAE with its short recipe, then 10 epochs of fine-tuning
with MAE's AdamW, layer-wise lr decay 0.75, drop path 0.1, label smoothing 0.1 and the mean of
the patch tokens with a fresh `fc_norm`, from the pretrained ViT and from its random
initialisation (`scripts/finetune_check.sh`). The script's fine-tuning draws its head as the
linear probe's (`--head_std 0.01`) and decays the class token and position embeddings
(`--decay_tokens`), as these rows were measured; `main_linear.py --finetune` otherwise follows
MAE's `main_finetune.py` in both."""

SPEED = """The training step's speed against a bare PyTorch loop of the same model, loss and
optimizer (SimCLR on ResNet-18 at 32 px, batch 64, CIFAR-10 JPEGs), in fp32, bf16 and
channels_last on the CPU, with and without the data loader (`scripts/benchmark.py`, part 1 of
`scripts/cpu_benchmarks.sh`)."""


BENCHMARKS = (
    Benchmark("quickstart", "The quick start", "quickstart",
              "bash scripts/quickstart.sh results/quickstart", QUICKSTART,
              quickstart_table.table, quickstart_findings),
    Benchmark("synthetic", "Every method on the synthetic set", "methods",
              "bash scripts/methods.sh results/methods; bash scripts/interpolation_check.sh",
              SYNTHETIC, methods_with_time, methods_findings),
    Benchmark("cifar10_cpu", "Every method on CIFAR-10, 2 CPU cores", "cifar10_cpu",
              "DATA=path/to/cifar10 bash scripts/cifar10_cpu.sh results/cifar10_cpu", CIFAR10,
              methods_with_time, methods_findings),
    Benchmark("finetune", "MAE fine-tuning against random initialisation", "finetune_check",
              "for s in 123 124 125; do SEED=$s bash scripts/finetune_check.sh "
              "results/finetune_check/mae_s$s; done", FINETUNE, finetune_table,
              finetune_findings),
    Benchmark("speed_cpu", "Speed on the CPU", "speed_cpu",
              "DATA=path/to/cifar10 PARTS=1 bash scripts/cpu_benchmarks.sh", SPEED,
              lambda root: benchmark.table(speed_results(root)), speed_findings),
)  # fmt: skip


def measured(root: str) -> dict:
    with open(os.path.join(root, "measured.json")) as f:
        return json.load(f)


def page(b: Benchmark) -> str:
    root = os.path.join("results", b.folder)
    where = measured(root)
    notes = "".join(f"\n- {note}" for note in where.get("notes", []))
    notes = f"\n{notes}" if notes else ""
    return (
        f"""# {b.title}

<!-- written by scripts/results_pages.py from {root}/: edit the script, not this page -->

{b.measures}

Repeat the runs, then write this page and the README's summary from their result files:

```bash
{b.repeat}
python scripts/results_pages.py
```

{b.table(root)}

Measured on {where["hardware"]}, {where["when"]}; {where["load"]}.{notes}

## What the numbers support

"""
        + "\n".join(f"- {line}" for line in b.findings(root))
        + "\n"
    )


def methods_columns(root: str) -> dict[str, str]:
    """Per method, its README cells: kNN gain, and linear Acc@1 (its untrained baseline's)."""
    return {
        m: f"{spread(r['gains'])} | {spread(r['acc1'])} ({spread(r['baseline'])})"
        for m, r in probe_rows(root).items()
    }


def summary() -> str:
    """The README's results: the quick start, one table of both methods benchmarks, MAE's
    fine-tuning and the speed, each with where it ran and a link to its page."""
    by_name = {b.name: b for b in BENCHMARKS}
    where = lambda name: measured(os.path.join("results", by_name[name].folder))  # noqa: E731
    line = lambda name: (  # noqa: E731
        f"[{by_name[name].title}](docs/results/{name}.md): {where(name)['hardware']}, "
        f"{where(name)['when']}."
    )
    synthetic = methods_columns("results/methods")
    cifar = methods_columns("results/cifar10_cpu")
    methods = [
        "| method | synthetic: kNN gain | linear Acc@1 (untrained) | CIFAR-10: kNN gain | "
        "linear Acc@1 (untrained) |",
        "|---|---:|---:|---:|---:|",
        *(f"| `{m}` | {synthetic[m]} | {cifar.get(m, '– | –')} |" for m in synthetic),
    ]
    parts = [
        line("quickstart") + "\n\n" + quickstart_table.table("results/quickstart"),
        line("synthetic") + " " + line("cifar10_cpu") + " Mean ± sd over 3 seeds, short "
        "recipes (`recipes/short/`): kNN gain over the random initialisation, and the linear "
        "probe beside the untrained backbone's.\n\n" + "\n".join(methods),
        line("finetune") + " " + finetune_sentence("results/finetune_check"),
        line("speed_cpu") + "\n\n" + speed_summary("results/speed_cpu"),
    ]
    return "\n\n".join(parts)


def outputs() -> dict[str, str]:
    """Each page's text by path, and the README with its block rewritten."""
    found = {os.path.join(PAGES, f"{b.name}.md"): page(b) for b in BENCHMARKS}
    with open("README.md") as f:
        readme = f.read()
    begin, end = f"<!-- {BLOCK}:begin -->", f"<!-- {BLOCK}:end -->"
    head, rest = readme.split(begin, 1)
    found["README.md"] = f"{head}{begin}\n{summary()}\n{end}{rest.split(end, 1)[1]}"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which are stale")
    check = parser.parse_args().check
    os.chdir(ROOT)
    stale = []
    for path, text in outputs().items():
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(path)
            if not check:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        sys.exit(f"stale: {', '.join(stale)}: run python scripts/results_pages.py")
    print("\n".join(f"wrote {p}" for p in stale) if stale else "all current")


if __name__ == "__main__":
    main()
