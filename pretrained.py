"""What main_linear.py evaluates, loaded and checked against its flags: the pretraining
checkpoint (--ckpt, or the newest of the same method, backbone and data set), the backbone in it
(the trained one or, with --momentum_backbone, its EMA copy), and with --resume the stopped
evaluation's own checkpoint. Each mismatch is one line naming the flag to change.
"""

from torch import nn

from methods import METHODS
from networks import build_backbone, zero_init_residual
from utils.checkpoint import find_checkpoint, load_checkpoint, resume_path
from utils.misc import UserError

# flags that a resumed evaluation must share with the stopped one
RESUME_KEYS = ("model_name", "backbone", "dataset_name", "image_size", "random_init")
RESUME_KEYS += ("precompute_features", "probe_bn", "momentum_backbone", "data_fraction")
# the EMA copies of the backbone in a method's state dict: BYOL's and MoCo's target, DINO's teacher
MOMENTUM_PREFIXES = ("target_backbone.", "teacher_backbone.")


def load_pretrained(args, path: str | None) -> tuple[dict | None, str | None]:
    """The pretraining checkpoint and its path (None, None with --random_init): `path` (--ckpt,
    or the resumed evaluation's), else the newest of the same method, backbone and data set."""
    if args.random_init:
        return None, None
    path = path or find_checkpoint(args.ckpt_dir, args.model_name, args.backbone, args.dataset_name)
    if path is None:
        raise UserError(
            f"no pretraining checkpoint of {args.model_name}/{args.backbone}/"
            f"{args.dataset_name} under {args.ckpt_dir}: pass --ckpt PATH, run main.py "
            f"first, or use --random_init for the untrained baseline"
        )
    checkpoint = load_checkpoint(path)
    kind = checkpoint.get("kind")
    if kind != "pretrain":
        what = {"linear": "a linear probe's", "finetune": "a fine-tuning run's"}.get(kind, "not a")
        raise UserError(
            f"--ckpt {path} is {what} checkpoint (main_linear.py), not a pretraining one: "
            "pass the last.pt of a main.py run"
        )
    trained = checkpoint["args"]
    for key in ("model_name", "backbone", "image_size"):
        if trained.get(key) != getattr(args, key):
            raise UserError(
                f"--ckpt {path} was pretrained with --{key} {trained.get(key)}, but "
                f"--{key} is {getattr(args, key)}: pass --{key} {trained.get(key)}"
            )
    if trained.get("dataset_name") != args.dataset_name:  # transfer: classes from the new data
        print(
            f"note: --ckpt was pretrained on {trained.get('dataset_name')}; evaluating on "
            f"{args.dataset_name}, whose classes the classifier predicts"
        )
    return checkpoint, path


def load_resumed(args) -> tuple[str | None, dict | None]:
    """--resume: this evaluation's own last.pt (of a main_linear.py run with the same mode) and
    its path, checked against the flags; the run folder (and, unless given, the pretraining
    checkpoint) are the stopped run's. `auto`: --run_name's, or the newest of the same method,
    backbone and data set."""
    if args.resume is None:
        return None, None
    kind = "finetune" if args.finetune else "linear"
    if args.eval == "knn":
        raise UserError("--resume: a kNN evaluation trains nothing to continue: drop --resume")
    path = resume_path(args, kind)
    if path is None:
        print("--resume auto: no checkpoint found, starting a new run")
        return None, None
    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != kind:
        what = {"pretrain": "a pretraining", "linear": "a linear probe's"}
        what = what.get(checkpoint.get("kind"), "a fine-tuning run's")
        raise UserError(
            f"--resume {path} is {what} checkpoint, not one of a {kind} run of "
            "main_linear.py: pass the last.pt of the run to continue"
        )
    saved = checkpoint["args"]
    for key in RESUME_KEYS:
        if saved.get(key) != getattr(args, key):
            raise UserError(
                f"--resume {path}: that run had --{key} {saved.get(key)}, but --{key} is "
                f"{getattr(args, key)}: use the stopped run's flags"
            )
    return path, checkpoint


def load_backbone(args, checkpoint: dict | None) -> tuple[nn.Module, int]:
    """The backbone with its pretrained weights (strictly: every backbone key must be there);
    with --random_init, as the method initialises it (zero residual BatchNorm where its official
    code does so, methods.build_method)."""
    backbone, feat_dim = build_backbone(args.backbone, args.image_size)
    if checkpoint is None:
        zero_init = METHODS[args.model_name].zero_init_residual
        if zero_init:
            zero_init_residual(backbone, bottleneck_only=zero_init == "bottleneck")
        return backbone, feat_dim
    prefix = momentum_prefix(checkpoint) if args.momentum_backbone else "backbone."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {args.ckpt} does not fit {args.backbone}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights"
        )
    return backbone, feat_dim


def momentum_prefix(checkpoint: dict) -> str:
    """Where the EMA copy of the backbone lies in a checkpoint (methods/momentum.py)."""
    for prefix in MOMENTUM_PREFIXES:
        if any(key.startswith(prefix) for key in checkpoint["model"]):
            return prefix
    raise UserError(
        f"--momentum_backbone: {checkpoint['args']['model_name']} keeps no momentum backbone "
        "(BYOL, MoCo v2/v3 and DINO do): drop --momentum_backbone"
    )
