"""Pretrained backbones out of this toolkit, for main_linear.py, main.py's --init_backbone and
your own code: read from a main.py checkpoint (the trained backbone or, with `momentum`, its EMA
copy) or from a file of export.py, and checked; each mismatch is one line naming what to change.

    from pretrained import load_backbone
    backbone, info = load_backbone("ckpts/my_run/last.pt")  # eval mode, on the CPU
    features = backbone(info.transform(image).unsqueeze(0))  # image: a PIL image

`info` says what the backbone is: method, backbone name, image size, data set, normalisation,
feature size, the checkpoint it came from, and `transform`, the preprocessing it was evaluated with.
"""

import json
import os
import pickle
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, replace

import torch
from torch import Tensor, nn

from evaluation import normalisation, plain_transform, recorded_evaluation, resolve_evaluation
from methods import METHODS, build_method
from networks import build_backbone
from networks.vit import (
    MaskableViT,
    set_heads,
    set_pool,
    set_vit_layerscale,
    set_vit_registers,
)
from utils.checkpoint import (
    check_entries,
    find_checkpoint,
    kind_of,
    load_checkpoint,
    safe_load,
)
from utils.misc import UserError, settings_of
from utils.run import Run, resume_path

# unset (None: the method's choice), these take the stopped run's value on --resume
RESUME_ADOPTED = ("momentum_backbone", "n_last_blocks")
# in the JSON beside an exported file (export.py): the version of its format, which this code
# reads only in its own
EXPORT_TAG, EXPORT_VERSION = "ssl_toolkit_export", 2


@dataclass
class BackboneInfo:
    """What a pretrained backbone is and how its inputs were prepared."""

    model_name: str
    backbone: str
    image_size: int
    dataset_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    epoch: int  # pretraining epochs completed
    momentum_backbone: bool  # the EMA copy (BYOL's target, DINO's teacher) rather than the online
    source: str  # the main.py checkpoint it comes from
    feat_dim: int | None = None  # known once built
    pool: str | None = None  # a ViT's features: class token (None, "token") or "mean"
    interpolation: str = "bilinear"  # its method's official evaluation resize (or bicubic)
    last_blocks: int = 1  # a ViT's linear probe: the last blocks' tokens (DINO: 4)
    vit_heads: int | None = None  # a ViT's attention heads where its run set them (MoCo v3: 12)
    class_token_attends: bool = True  # a ViT's mean of patch tokens: with the class token in
    # its blocks (False: I-JEPA's encoder, which has none)
    vit_registers: int = 0  # a ViT's register tokens (--vit_registers)
    vit_layerscale: float = 0.0  # a ViT's LayerScale, its initial value (--vit_layerscale)

    @property
    def transform(self):
        """The evaluation preprocessing of its data set: resize, centre crop, normalise."""
        return plain_transform(
            self.dataset_name, self.image_size, self.interpolation, self.mean, self.std
        )

    def evaluation(self) -> dict:
        """How its pretraining run evaluates it (`saved` of evaluation.resolve_evaluation)."""
        keys = ("interpolation", "pool", "last_blocks", "momentum_backbone")
        return {key: getattr(self, key) for key in keys}

    def to_dict(self) -> dict:
        return asdict(self)


def export_json(path: str) -> str:
    """The JSON written beside an exported file: `<file>.json`."""
    return f"{path}.json"


def is_export(path: str) -> bool:
    try:
        with open(export_json(path)) as f:
            return json.load(f).get(EXPORT_TAG) is not None
    except (OSError, ValueError, AttributeError):
        return False


def momentum_prefix(checkpoint: dict) -> str:
    """Where the EMA copy of the backbone lies in a checkpoint: its method's `momentum_backbone`
    (methods/momentum.py)."""
    name = checkpoint["args"]["model_name"]
    attribute = METHODS[name].momentum_backbone
    if attribute is None:
        keeping = ", ".join(m for m, cls in sorted(METHODS.items()) if cls.momentum_backbone)
        raise UserError(
            f"--momentum_backbone: {name} keeps no momentum backbone ({keeping} do): drop "
            "--momentum_backbone"
        )
    return f"{attribute}."


def backbone_weights(checkpoint: dict, momentum: bool = False) -> dict[str, Tensor]:
    """The backbone's state dict inside a method's checkpoint: the online one, or its EMA copy."""
    prefix = momentum_prefix(checkpoint) if momentum else "backbone."
    return {k[len(prefix) :]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}


def read_export(path: str, momentum: bool | None) -> tuple[dict[str, Tensor], BackboneInfo]:
    """An export.py file of the torchvision or timm format (a state dict, data only) and its
    JSON; each fault of either is one line."""
    with open(export_json(path)) as f:
        meta = json.load(f)
    fields = BackboneInfo.__dataclass_fields__
    if meta.get("format", "torchvision") not in ("torchvision", "timm"):
        raise UserError(
            f"{path} is an export in the {meta['format']} format, which runs without this "
            "toolkit's code: pass the checkpoint it came from, or a torchvision or timm export"
        )
    if meta[EXPORT_TAG] != EXPORT_VERSION:
        raise UserError(
            f"{export_json(path)} is of export format {meta[EXPORT_TAG]}, and this code reads "
            f"format {EXPORT_VERSION}: export the checkpoint again"
        )
    required = ["format"] + [k for k, f in fields.items() if f.default is MISSING]
    missing = [key for key in required if key not in meta]
    if missing:
        raise UserError(
            f"{export_json(path)} lacks {', '.join(missing)}: not a complete record of "
            "export.py; export the checkpoint again"
        )
    if momentum:
        raise UserError(
            f"{path} is an exported backbone (export.py), the "
            f"{'momentum' if meta['momentum_backbone'] else 'online'} one: drop "
            "--momentum_backbone (choose it when exporting)"
        )
    try:
        weights = safe_load(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is unreadable (truncated or not an export): {err}") from None
    state_dict = isinstance(weights, dict) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()
    )
    if not state_dict or not weights:
        raise UserError(
            f"{path} is not a state dict (names to tensors), which its JSON says export.py "
            "wrote: export the checkpoint again"
        )
    info = BackboneInfo(**{k: v for k, v in meta.items() if k in fields})
    info.mean, info.std = tuple(info.mean), tuple(info.std)
    return weights, info


def read_backbone(
    path: str, momentum: bool | None = None
) -> tuple[dict[str, Tensor], BackboneInfo]:
    """The backbone weights in `path`, a main.py checkpoint or an export.py file, and what they
    are: the online backbone or (`momentum`) its EMA copy; None, the one its method's official
    evaluation reads (DINO's teacher, I-JEPA's target encoder). A checkpoint of main_linear.py,
    or `momentum` with an exported file (which holds one backbone, chosen at export), is one line
    saying what to pass instead."""
    if is_export(path):
        return read_export(path, momentum)
    checkpoint = load_checkpoint(path)
    kind = checkpoint.get("kind")
    if kind != "pretrain":
        raise UserError(
            f"{path} is {kind_of(checkpoint)} checkpoint (main_linear.py), not a pretraining one: "
            "pass the last.pt of a main.py run, or a file of export.py"
        )
    check_entries(checkpoint, path, ("args", "epoch", "model", "config"))
    args = checkpoint["args"]
    missing = [k for k in ("model_name", "backbone", "image_size", "dataset_name") if k not in args]
    if missing or args["model_name"] not in METHODS:
        what = f"no {', '.join(missing)}" if missing else f"unknown method {args['model_name']!r}"
        raise UserError(f"{path}: its record of the run is incomplete ({what}): not a checkpoint "
                        "of main.py")  # fmt: skip
    evaluation = resolve_evaluation(
        args["model_name"], {"momentum_backbone": momentum}, recorded_evaluation(checkpoint)
    )
    mean, std = normalisation(args["dataset_name"])
    info = BackboneInfo(
        model_name=args["model_name"],
        backbone=args["backbone"],
        image_size=args["image_size"],
        dataset_name=args["dataset_name"],
        mean=tuple(mean),
        std=tuple(std),
        epoch=checkpoint["epoch"],
        momentum_backbone=evaluation.momentum_backbone,
        source=os.path.abspath(path),
        pool=evaluation.pool,
        interpolation=evaluation.interpolation,
        last_blocks=evaluation.last_blocks,
        **vit_settings(checkpoint),
    )
    return backbone_weights(checkpoint, evaluation.momentum_backbone), info


def vit_settings(checkpoint: dict) -> dict:
    """A ViT's settings that its run recorded (config.json kept in the checkpoint) and its
    evaluation rebuilds: its attention heads (`vit_heads`), whether its class token goes
    through the blocks of a mean of patch tokens (`class_token_attends`), its register tokens
    and LayerScale (`vit_registers`, `vit_layerscale`); a run on another backbone records none
    (None: the backbone's own heads; True; 0: none)."""
    args = checkpoint["args"]
    found = {"vit_heads": args.get("vit_heads"), "class_token_attends": True,
             "vit_registers": args.get("vit_registers") or 0,
             "vit_layerscale": args.get("vit_layerscale") or 0.0}  # fmt: skip
    model = checkpoint["config"]["model"]
    return {key: model[key]["value"] if key in model else value for key, value in found.items()}


def load_weights(backbone: nn.Module, weights: dict[str, Tensor], path: str, name: str) -> None:
    """Load `weights` into `backbone` strictly (every key, every shape), or say in one line
    what does not fit."""
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a shape differs (a small-image stem against an ImageNet one)
        detail = next(
            (line.strip() for line in str(err).splitlines() if "size mismatch" in line), ""
        )
        raise UserError(f"{path} does not fit {name}: {detail}") from None
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit {name}: {len(missing)} missing and {len(unexpected)} "
            f"unexpected weights (e.g. {(missing + unexpected)[0]})"
        )


def build_pretrained(weights: dict[str, Tensor], info: BackboneInfo, path: str) -> nn.Module:
    """The backbone `info` names, built as its run had it, with `weights`."""
    backbone, info.feat_dim = build_backbone(info.backbone, info.image_size)
    set_vit_settings(backbone, info)  # registers and LayerScale: weights to load
    load_weights(backbone, weights, path, f"{info.backbone} at image size {info.image_size}")
    set_pool(backbone, info.pool, info.backbone)
    return backbone


def set_vit_settings(backbone: nn.Module, info: BackboneInfo) -> None:
    """A ViT as its run had it (from the checkpoint's record): its attention heads, its register
    tokens and LayerScale (before its weights are loaded: they add weights), and whether its
    class token enters the blocks of a mean of patch tokens."""
    set_heads(backbone, info.vit_heads, info.backbone)
    set_vit_registers(backbone, info.vit_registers, info.backbone)
    set_vit_layerscale(backbone, info.vit_layerscale, info.backbone)
    if isinstance(backbone, MaskableViT):
        backbone.class_token_attends = info.class_token_attends


def load_backbone(
    path: str,
    momentum: bool | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, BackboneInfo]:
    """The pretrained backbone in `path` (a main.py checkpoint or an export.py file) in eval mode
    on `device`, and its BackboneInfo (`info.transform` prepares a PIL image for it). Files are
    read as data only (unpickling could run the code a file holds).
    `momentum`: a checkpoint's EMA backbone (BYOL's and MoCo's target, DINO's teacher) or the
    online one; None: the one its method's official evaluation reads (DINO's teacher,
    I-JEPA's target encoder)."""
    weights, info = read_backbone(path, momentum)
    return build_pretrained(weights, info, path).eval().to(device), info


# ---- main_linear.py: the pretraining checkpoint to evaluate, and its own to resume ----


@dataclass(frozen=True)
class Evaluated:
    """The backbone main_linear.py evaluates (its flags, resolved once in its main()): what it
    must be (method, backbone, image size), where its checkpoint is (--ckpt, else the newest of
    the same data set under --ckpt_dir; none with --random_init, which builds it as the method
    initialises it with the method's `init` flags given), and which copy (None: the method's
    choice)."""

    model_name: str
    backbone: str
    image_size: int
    dataset_name: str
    ckpt_dir: str = "./ckpts/"
    random_init: bool = False
    momentum_backbone: bool | None = None
    init: dict = field(default_factory=dict)

    @classmethod
    def of(cls, args) -> "Evaluated":
        init_flags = METHODS[args.model_name].init_flags
        init = {k: getattr(args, k) for k in init_flags if getattr(args, k, None) is not None}
        return replace(settings_of(cls, args), init=init)


def load_pretrained(
    want: Evaluated, path: str | None
) -> tuple[dict | None, BackboneInfo | None, str | None]:
    """The backbone weights to evaluate, what they are, and their file (all None with
    --random_init): `path` (--ckpt, or the resumed evaluation's; a checkpoint or an export.py
    file), else the newest checkpoint of the same method, backbone and data set."""
    if want.random_init:
        return None, None, None
    path = path or find_checkpoint(want.ckpt_dir, want.model_name, want.backbone, want.dataset_name)
    if path is None:
        raise UserError(
            f"no pretraining checkpoint of {want.model_name}/{want.backbone}/"
            f"{want.dataset_name} under {want.ckpt_dir}: pass --ckpt PATH, run main.py "
            f"first, or use --random_init for the untrained baseline"
        )
    weights, info = read_backbone(path, want.momentum_backbone)
    for key in ("model_name", "backbone", "image_size"):
        if getattr(info, key) != getattr(want, key):
            raise UserError(
                f"--ckpt {path} was pretrained with --{key} {getattr(info, key)}, but "
                f"--{key} is {getattr(want, key)}: pass --{key} {getattr(info, key)}"
            )
    if info.dataset_name != want.dataset_name:  # transfer: classes from the new data
        print(
            f"note: --ckpt was pretrained on {info.dataset_name}; evaluating on "
            f"{want.dataset_name}, whose classes the classifier predicts"
        )
    return weights, info, path


def load_resumed(run: Run, kind: str) -> tuple[str | None, dict | None]:
    """--resume: this evaluation's own last.pt (of a main_linear.py run of `kind`, linear or
    finetune) and its path; the run folder (and, unless given, the pretraining checkpoint) are
    the stopped run's, and its flags must be the stopped run's (main_linear.main:
    check_unchanged). `auto`: --run_name's, or the newest of the same method, backbone and
    data set."""
    if run.resume is None:
        return None, None
    path = resume_path(run, kind)
    if path is None:
        print("--resume auto: no checkpoint found, starting a new run")
        return None, None
    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != kind:
        raise UserError(
            f"--resume {path} is {kind_of(checkpoint)} checkpoint, not one of a {kind} run of "
            "main_linear.py: pass the last.pt of the run to continue"
        )
    check_entries(checkpoint, path)
    return path, checkpoint


def resumed_values(given: dict, checkpoint: dict) -> dict:
    """The flags of RESUME_ADOPTED left unset in `given` (the parsed flags), with the values of
    the stopped run whose `checkpoint` is resumed."""
    saved = checkpoint["args"]
    unset = [key for key in RESUME_ADOPTED if given.get(key) is None]
    return {key: saved[key] for key in unset}


def evaluated_backbone(
    want: Evaluated, weights: dict | None, info: BackboneInfo | None = None, path: str = ""
) -> tuple[nn.Module, int]:
    """The backbone main_linear.py evaluates: with the pretrained `weights` of `path`
    (strictly: every backbone key must be there) built as its run's record says (`info`: a
    ViT's heads, registers, LayerScale and class token); with --random_init (None), as the
    method builds and initialises it (its ViT heads, registers and LayerScale, zero residual
    BatchNorm where its official code does so, MAE's and I-JEPA's ViT initialisation:
    methods.build_method)."""
    backbone, feat_dim = build_backbone(want.backbone, want.image_size)
    if weights is None:  # the method's own initialisation of it (a method's heads are cheap)
        cls = METHODS[want.model_name]
        set_heads(backbone, cls.vit_heads.get(want.backbone), want.backbone)
        if isinstance(backbone, MaskableViT):  # the method's ViT options (main.py's defaults)
            set_vit_registers(backbone, cls.vit_registers, want.backbone)
            set_vit_layerscale(backbone, cls.vit_layerscale, want.backbone)
        try:
            built = build_method(want.model_name, backbone, feat_dim, **want.init)
        except ValueError as err:  # a backbone the method cannot train (MAE on a ResNet)
            raise UserError(f"--model_name {want.model_name}: {err}") from None
        return built.backbone, feat_dim
    if info is not None:
        set_vit_settings(backbone, info)
    load_weights(backbone, weights, path, want.backbone)
    return backbone, feat_dim
