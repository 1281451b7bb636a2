"""The README's methods tables, read from the result files of `scripts/methods.sh` (synthetic)
or `scripts/cifar10_cpu.sh` (real CIFAR-10): for each method, its views and loss, the flags its
short run set, the kNN Acc@1 of its backbone at epoch 0 (random initialisation) and at the end
(metrics.csv), and the linear probe (results.json), beside the linear probe of the randomly
initialised backbone, and the pretraining's wall time when every run wrote a summary.json.

    python scripts/methods_table.py LOG_ROOT [--readme README.md] [--block NAME]

The wall time under the table is the sum of LOG_ROOT/wall_seconds.txt, where each run of the
script appends its seconds (a root can be filled in several runs: `methods.sh ROOT new_method`).

LOG_ROOT holds `pretrain_<method>/`, `linear_<method>/` and `linear_random/` run folders.
"""

import argparse
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from readme_block import knn_first_last, load_json, publish  # noqa: E402

from main import get_args_parser  # noqa: E402
from methods import METHODS  # noqa: E402

LOSSES = {
    "simclr": "`nt_xent_loss`",
    "supcon": "`supcon_loss` (labels)",
    "simsiam": "`negative_cosine_similarity`",
    "byol": "`byol_loss`, EMA target",
    "swav": "`swav_loss`, `sinkhorn`",
    "barlowtwins": "`barlow_twins_loss`",
    "vicreg": "`vicreg_loss`",
    "mocov2": "`moco_loss`, queue, EMA keys",
    "mocov3": "`mocov3_loss`, EMA keys",
    "nnclr": "`nnclr_loss`, support set",
    "dino": "`dino_loss`, EMA teacher",
}
# flags a method's short run may override; shown in the table so each row can be repeated
METHOD_FLAGS = (
    "temperature",
    "proj_hidden_dim",
    "proj_dim",
    "pred_hidden_dim",
    "lambd",
    "sim_coeff",
    "std_coeff",
    "cov_coeff",
    "ema_momentum",
    "num_prototypes",
    "num_crops",
    "queue_length",
    "epoch_queue_starts",
    "freeze_prototypes_epochs",
    "queue_size",
    "teacher_temp",
    "warmup_teacher_temp",
    "teacher_temp_warmup_epochs",
    "center_momentum",
    "fix_pred_lr",
    "use_bn_in_head",
    "norm_last_layer",
)
# flags every run sets; a row lists them only where it departs from the value most runs use
SHARED_FLAGS = ("optimizer", "base_lr", "weight_decay", "num_epochs")
PARSER = get_args_parser()  # main.py's defaults: a row lists the method flags it changed


def wall_seconds(root: str) -> int | None:
    path = os.path.join(root, "wall_seconds.txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(int(line.split()[0]) for line in f if line.strip())


def minutes(run_dir: str) -> str:
    seconds = round(load_json(os.path.join(run_dir, "summary.json"))["wall_time_s"])
    return f"{seconds // 60} min {seconds % 60:02d} s"


def flag(key: str, value) -> str:
    """As typed on the command line: on/off flags by name (`--x`, `--x false`)."""
    if isinstance(value, bool):
        return f"`--{key}`" if value else f"`--{key} false`"
    return f"`--{key} {value}`"


def table(root: str) -> str:
    random = load_json(os.path.join(root, "linear_random", "results.json"))
    runs = {}
    for method in METHODS:
        pretrain_dir = os.path.join(root, f"pretrain_{method}")
        if os.path.isdir(pretrain_dir):
            runs[method] = (pretrain_dir, load_json(os.path.join(pretrain_dir, "args.json")))
    timed = all(os.path.exists(os.path.join(d, "summary.json")) for d, _ in runs.values())
    lines = [
        "| method | views | loss | flags of the short run | steps | kNN Acc@1: random init "
        "→ trained | linear Acc@1 (random init: "
        f"{random['acc1']:.2f}) | linear Acc@5 (random init: {random['acc5']:.2f}) |"
        + (" pretraining time |" if timed else ""),
        "|---|---|---|---|---:|---|---:|---:|" + ("---:|" if timed else ""),
    ]
    usual = {
        key: Counter(args[key] for _, args in runs.values()).most_common(1)[0][0]
        for key in SHARED_FLAGS
    }
    for method, (pretrain_dir, args) in runs.items():
        changed = [k for k in SHARED_FLAGS if args[k] != usual[k]]
        changed += [k for k in METHOD_FLAGS if k in args and args[k] != PARSER.get_default(k)]
        flags = " ".join(flag(k, args[k]) for k in changed)
        before, after, steps = knn_first_last(pretrain_dir)
        linear = load_json(os.path.join(root, f"linear_{method}", "results.json"))
        lines.append(
            f"| `{method}` | {METHODS[method].augmentation} | {LOSSES.get(method, '')} | "
            f"{flags or '(paper defaults)'} | {steps} | {before:.2f} → {after:.2f} | "
            f"{linear['acc1']:.2f} | {linear['acc5']:.2f} |"
            + (f" {minutes(pretrain_dir)} |" if timed else "")
        )
    common = ", ".join(f"`--{k} {v}`" for k, v in usual.items())
    lines += ["", f"Shared by the runs unless their row says otherwise: {common}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="LOG_ROOT")
    parser.add_argument("--readme", help="also put the table in a generated block here")
    parser.add_argument("--block", default="methods", help="the README block (methods, cifar10)")
    parser.add_argument("--script", default="scripts/methods.sh", help="named with the wall time")
    args = parser.parse_args()
    publish(table(args.root), wall_seconds(args.root), f"`{args.script}`", args.readme, args.block)


if __name__ == "__main__":
    main()
