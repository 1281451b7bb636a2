"""The record of what a run used: every setting's resolved value and where it came from, in parts,
written as `<logs_dir>/<run_name>/config.json`, kept in the checkpoints (`config`), printed by
`--print_config`, and summed up in a few lines at start-up.

    {"optimization": {"lr": {"value": 0.3, "source": "derived"}, ...}, "method": {...}, ...}

Sources: `default` (the parser's), `recipe file <path>` (--config), `command line`, `method` (the
method's own default: its hyper-parameters, views, initialisation and evaluation), `derived`
(computed from the others: the scaled lr, the batch a --limit left, the feature size). The values
are read back from what the run built (the method's resolved hyper-parameters, the views'
transforms, the optimizer's parameter groups), so that the record cannot drift from the run. A
resumed run's record must equal its checkpoint's where the training is concerned
(`differences`); args.json beside it holds the same values, flat.
"""

import contextlib
import json
import os
import sys
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace

from evaluation import RECORD_KEYS, Evaluation
from flags.method_help import view_defaults
from methods import METHODS, Method, resolved_hparams
from methods.hparams import hyper_parameters
from methods.recipe import OPTIMIZER_OPTIONS, RECIPE_FLAGS, Recipe, training_recipe
from networks import is_vit, is_vit_name
from networks.vit import MaskableViT, ViTBackbone
from pretrained import read_backbone
from transformations import recipe_name
from utils.checkpoint import atomic_file, shown
from utils.logging import write_json
from utils.misc import UserError, expand_recipes, read_recipe, strip_config

# settings that may differ on --resume: the flags of utils.checkpoint.RESUME_FREE (where files
# go, how fast, what is watched), the code's version and the number of processes
FREE_KEYS = ("git_sha", "world_size", "training_recipe")


def flag_sources(fresh_parser, args: Namespace) -> dict[str, dict]:
    """Where each flag's value came from (`sources`): the command line, a recipe file (--config,
    the ones it includes), or the parser's default; and the parser's `defaults`.
    `fresh_parser`: the entry point's parser as built (not the one a --config has already set
    defaults on). A value given equal to its default counts as the default."""
    defaults = vars(fresh_parser.parse_args([]))
    from_recipe: dict[str, tuple[object, str]] = {}
    for path in expand_recipes(getattr(args, "config", []) or []):
        words = strip_config(read_recipe(path))
        for key, value in vars(fresh_parser.parse_args(words)).items():
            if value != defaults.get(key):
                from_recipe[key] = (value, path)
    sources = {}
    for key, value in vars(args).items():
        if key in from_recipe and from_recipe[key][0] == value:
            sources[key] = f"recipe file {from_recipe[key][1]}"
        elif key in defaults and defaults[key] == value:
            sources[key] = "default"
        else:
            sources[key] = "command line"
    return {"sources": sources, "defaults": defaults}


def with_recipe(
    args: Namespace, flags: dict[str, dict], checkpoint: dict | None = None
) -> tuple[Namespace, Recipe]:
    """main.py's training flags left unset (None), filled once: a resumed run's from its
    checkpoint (the values it trained with), the others from the method's training recipe for
    the run's image size and backbone family (methods/recipe.py) and for its number of epochs
    where the official code has presets by length, which also sets the views and
    hyper-parameters of its regime. `flags["sources"]` (flag_sources) learns where each came
    from. A method without a recipe for the run needs the training flags given."""
    cls = METHODS[args.model_name]
    recipe = training_recipe(cls, args.image_size, is_vit_name(args.backbone))
    if recipe is None:
        missing = [k for k in ("optimizer", "base_lr", "batch_size", "num_epochs",
                               "weight_decay") if getattr(args, k) is None]  # fmt: skip
        if missing:
            raise UserError(
                f"--model_name {args.model_name} declares no training recipe for "
                f"{args.image_size} px images on {args.backbone}: give "
                f"{', '.join('--' + k for k in missing)}"
            )
        recipe = Recipe("the toolkit's defaults", {}, args.optimizer, args.base_lr,
                        args.batch_size, args.num_epochs, args.weight_decay)  # fmt: skip
    saved = checkpoint["args"] if checkpoint is not None else {}
    # the values an official code sets by the schedule's length (BYOL's presets)
    epochs = args.num_epochs or saved.get("num_epochs") or recipe.num_epochs
    recipe = recipe.for_epochs(epochs)
    sources, filled = flags["sources"], {}
    hparams = hyper_parameters(cls)
    for key in (*RECIPE_FLAGS, *recipe.settings):
        alias = hparams[key].flag.alias if key in hparams else None  # given under its other name
        if getattr(args, key, None) is not None or getattr(args, alias or key, None) is not None:
            continue
        if key in saved and (saved[key] is not None or key in recipe.settings):
            filled[key], sources[key] = saved[key], "checkpoint"
            continue
        value = recipe.settings[key] if key in recipe.settings else getattr(recipe, key)
        where = recipe.source_of(key)
        filled[key] = list(value) if isinstance(value, tuple) else value
        sources[key] = f"method recipe: {where}" if where else "toolkit default"
    if getattr(args, "vit_heads", None) is None:  # a ViT's heads: the run's, else the method's
        if checkpoint is not None:
            filled["vit_heads"], sources["vit_heads"] = saved.get("vit_heads"), "checkpoint"
        elif cls.vit_heads.get(args.backbone) is not None:
            filled["vit_heads"], sources["vit_heads"] = cls.vit_heads[args.backbone], "method"
    # a ViT's registers and LayerScale: the run's, else --init_backbone's, else the method's
    init = getattr(args, "init_backbone", None)
    started = init_backbone_settings(init) if checkpoint is None else {}
    for key in ("vit_registers", "vit_layerscale"):
        if getattr(args, key, None) is not None:
            continue
        if checkpoint is not None:  # unrecorded (an older run): none
            filled[key], sources[key] = saved.get(key), "checkpoint"
        elif started:  # the architecture its weights need
            filled[key], sources[key] = started[key], "checkpoint"
        elif getattr(cls, key) and is_vit_name(args.backbone):
            filled[key], sources[key] = getattr(cls, key), "method"
    return Namespace(**{**vars(args), **filled}), recipe


def init_backbone_settings(path: str | None) -> dict:
    """The ViT settings recorded with --init_backbone's weights (pretrained.vit_settings), which
    its backbone must be built with again to take them; {} without one."""
    return read_backbone(path, False)[1].to_dict() if path else {}


class Record:
    """Settings by part, each {"value", "source"}; a flag's source from `sources`."""

    def __init__(self, args: Namespace, flags: dict[str, dict]) -> None:
        self.args, self.parts = args, {}
        self.sources, self.defaults = flags["sources"], flags["defaults"]

    def add(self, part: str, key: str, value, source: str) -> None:
        self.parts.setdefault(part, {})[key] = {"value": plain(value), "source": source}

    def flag(self, part: str, *keys: str) -> None:
        """Flags as they are in `args`, with their sources (None: not recorded, not used); a
        value main() set in place of the default (a resolved `None`) is `derived`."""
        for key in keys:
            value = getattr(self.args, key, None)
            if value is None:
                continue
            source = self.sources.get(key, "default")
            if source == "default" and self.defaults.get(key) != value:
                source = "derived"
            self.add(part, key, value, source)

    def given_or(self, part: str, key: str, value, otherwise: str) -> None:
        """`value` with the flag's source where the flag was given, else `otherwise`."""
        source = self.sources.get(key, "default")
        self.add(part, key, value, source if source != "default" else otherwise)

    def used(self, part: str, key: str, value) -> None:
        """The value the run used for flag `key`: the flag's, or `derived` where the run had to
        change it (the batch a --limit leaves, the loader workers the cores allow)."""
        same = value == getattr(self.args, key)
        self.add(part, key, value, self.sources.get(key, "default") if same else "derived")

    def resolved(self, part: str, key: str, value, method_default: bool) -> None:
        """A flag that the method resolves when unset: the flag's source if given, else
        `method` (`method_default`) or `derived`."""
        if getattr(self.args, key, None) is not None:
            self.add(part, key, value, self.sources.get(key, "command line"))
        else:
            self.add(part, key, value, "method" if method_default else "derived")

    def evaluated(self, part: str, key: str, evaluation: Evaluation, name: str) -> None:
        """Setting `name` of the resolved `evaluation` under `key`: a flag's source where it was
        given (the flag is `key`; one that main() filled is a resumed run's: `checkpoint`), else
        `checkpoint` or `method`."""
        source = evaluation.sources.get(name, "method")
        if source == "given":
            source = self.sources.get(key, "command line")
            source = "checkpoint" if source == "default" else source
        self.add(part, key, getattr(evaluation, name), source)

    def run(self, training: tuple[str, ...], world_size: int, git_sha: str) -> None:
        """The `run` part: name, seed, device, folders, the `training` loop's flags, recipe
        files, the number of processes and the code's version."""
        self.given_or("run", "run_name", self.args.run_name, "derived")
        self.flag("run", "seed", "device", "logs_dir", "ckpt_dir", "resume", *training)
        if self.args.config:
            self.given_or("run", "config", list(self.args.config), "command line")
        self.add("run", "world_size", world_size, "derived")
        self.add("run", "git_sha", git_sha, "derived")

    def as_dict(self) -> dict:
        return self.parts


def plain(value):
    """JSON's value of a setting: tuples as lists, everything else as it is."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def param_groups_of(optimizer) -> list[dict]:
    """The optimizer's parameter groups as the run has them at the start: name, number of
    tensors and of values, weight decay, lr scale, the fixed lr, LARS's exclusion."""
    groups = []
    for group in optimizer.param_groups:
        entry = {
            "name": group.get("name", "params"),
            "tensors": len(group["params"]),
            "values": sum(p.numel() for p in group["params"]),
            "weight_decay": group.get("weight_decay", 0.0),
        }
        for key in ("lr_scale", "fix_lr", "exclude_bias_and_norm"):
            if key in group:
                entry[key] = group[key]
        groups.append(entry)
    return groups


def views_of(transform) -> list[dict]:
    """Each view's transform settings (transformations.View.options)."""
    return [dict(view.options) for view in transform.view_transforms]


def pretraining_record(
    args: Namespace,
    flags: dict[str, dict],
    *,
    model: Method,
    feat_dim: int,
    transform,
    train_images: int,
    batch_size: int,
    steps_per_epoch: int,
    workers: int,
    lr: float,
    warmup_epochs: int,
    optimizer,
    probe_on: bool,
    git_sha: str,
    world_size: int,
    recipe: Recipe,
    evaluation: Evaluation,
) -> dict:
    """main.py's record (module docstring), from the flags (`flags`: flag_sources), the method's
    training recipe the run took its unset flags from, what the run built, and how its
    backbone is evaluated (by its monitors and, read back from the checkpoint, by main_linear.py,
    load_backbone and export.py)."""
    record = Record(args, flags)
    sources = flags["sources"]
    cls = METHODS[args.model_name]
    training = ("save_freq", "print_freq", "skip_nonfinite", "debug", "init_backbone")
    record.run(training, world_size, git_sha)

    data = "data"
    record.flag(data, "dataset_name", "data_dir", "image_size", "limit")
    record.add(data, "train_images", train_images, "derived")
    record.used(data, "batch_size", batch_size)
    record.add(data, "steps_per_epoch", steps_per_epoch, "derived")
    record.used(data, "num_workers", workers)
    record.flag(data, "in_memory", "gpu_augment")

    views = "views"
    builder = cls.augmentation
    record.add(views, "recipe", recipe_name(builder), "method")
    built = views_of(transform)
    for key, default in view_defaults(args.model_name).items():
        given = getattr(args, key, None)
        value = given if given is not None else default
        if value is None and key == "small_crop_size":  # the recipe's: image_size x 96/224
            small = [v["image_size"] for v in built if v["image_size"] != args.image_size]
            value = small[0] if small else None
        if value is not None:
            record.resolved(views, key, value, True)
    record.add(views, "views", built, "derived")

    method = "method"
    record.add(method, "model_name", args.model_name, sources.get("model_name", "default"))
    kwargs = {k: v for k, v in vars(args).items() if v is not None}
    for name, (value, given) in resolved_hparams(model, kwargs).items():
        source = sources.get(name, "command line") if given else "method"
        record.add(method, name, value, source)

    arch = "model"
    record.flag(arch, "backbone", "pretrained")
    zero_init = args.zero_init_residual
    record.resolved(arch, "zero_init_residual",
                    cls.zero_init_residual if zero_init is None else zero_init, True)  # fmt: skip
    if is_vit(model.backbone):
        record.evaluated(arch, "pool", replace(evaluation, pool=evaluation.pool or "token"), "pool")
    if isinstance(model.backbone, ViTBackbone):  # its heads, which evaluation sets again
        source = sources.get("vit_heads", "derived") if args.vit_heads else "derived"
        record.add(arch, "vit_heads", model.backbone.num_heads, source)
    if isinstance(model.backbone, MaskableViT):  # how evaluation runs its mean of patch tokens
        record.add(arch, "class_token_attends", model.backbone.class_token_attends, "method")
        # its registers and LayerScale, which evaluation builds again
        for key, value in (("vit_registers", model.backbone.num_registers),
                           ("vit_layerscale", model.backbone.layerscale)):  # fmt: skip
            given = getattr(args, key, None) is not None
            record.add(arch, key, value, sources.get(key, "command line") if given else "method")
    record.add(arch, "feat_dim", feat_dim, "derived")
    record.add(arch, "parameters", sum(p.numel() for p in model.parameters()), "derived")

    opt = "optimization"
    record.add(opt, "training_recipe", f"{recipe.source} ({recipe.regime()})", "method")
    record.flag(opt, "optimizer", "base_lr", "lr_scaling")
    record.add(opt, "lr", lr, "derived")
    record.flag(opt, "num_epochs", "warmup_lr", "final_lr")
    record.used(opt, "warmup_epochs", warmup_epochs)
    record.flag(opt, "weight_decay")
    if args.final_weight_decay is None:
        record.add(opt, "final_weight_decay", args.weight_decay, "derived")
    else:
        record.flag(opt, "final_weight_decay")
    record.flag(opt, "exclude_bias_and_norm")
    record.flag(opt, *OPTIMIZER_OPTIONS.get(args.optimizer, ()))
    record.add(opt, "param_groups", param_groups_of(optimizer), "derived")

    record.flag("speed", "amp", "channels_last", "compile", "sync_bn")

    watch = "monitors"
    record.flag(watch, "knn_freq")
    if args.knn_freq:
        record.flag(watch, "knn_k", "knn_temperature")
    record.resolved(watch, "online_probe", probe_on, False)
    if probe_on:
        record.flag(watch, "online_probe_lr", "online_probe_bn")
    record.flag(watch, "rankme_images", "tsne", "eval_data_dir")

    for name, (part, key) in RECORD_KEYS.items():
        if part == "evaluation":
            record.evaluated(part, key, evaluation, name)
    return record.as_dict()


FINETUNE_OPTIONS = ("backbone_lr", "layer_decay", "drop_path", "label_smoothing", "mixup")
FINETUNE_OPTIONS += ("cutmix", "randaugment", "random_erasing", "fc_norm", "decay_tokens")


def evaluation_record(
    args: Namespace,
    flags: dict[str, dict],
    *,
    pretrained,
    ckpt_source: str,
    train_images: int,
    test_images: int,
    num_classes: int,
    feat_dim: int,
    batch_size: int,
    workers: int,
    lr: float | None,
    warmup_epochs: int,
    git_sha: str,
    world_size: int,
    evaluation: Evaluation,
) -> dict:
    """main_linear.py's record: the evaluated backbone, the data, the evaluation's settings
    (`evaluation`: each resolved from the flag, the pretraining checkpoint's record or the
    method; its last blocks those the evaluation reads), and for a trained classifier its
    optimization. `pretrained`: the backbone's BackboneInfo (None with --random_init);
    `ckpt_source`: where --ckpt came from."""
    record = Record(args, flags)
    training = ("save_freq", "print_freq", "skip_nonfinite", "debug")
    record.run(training if args.eval == "linear" else (), world_size, git_sha)

    backbone = "backbone"
    record.flag(backbone, "model_name", "backbone", "random_init")
    if args.random_init:  # how the method initialised the untrained backbone, where given
        record.flag(backbone, *METHODS[args.model_name].init_flags)
    if pretrained is not None:
        record.add(backbone, "ckpt", args.ckpt, ckpt_source)
        record.add(backbone, "pretrain_epochs", pretrained.epoch, "checkpoint")
        record.given_or(backbone, "momentum_backbone", pretrained.momentum_backbone, "checkpoint")
    record.add(backbone, "feat_dim", feat_dim, "derived")

    data = "data"
    record.flag(data, "dataset_name", "data_dir", "image_size", "limit", "data_fraction")
    record.add(data, "train_images", train_images, "derived")
    record.add(data, "test_images", test_images, "derived")
    record.given_or(data, "num_classes", num_classes, "derived")
    record.used(data, "batch_size", batch_size)
    record.used(data, "num_workers", workers)
    record.flag(data, "in_memory")

    part = "evaluation"
    record.flag(part, "eval", "finetune", "precompute_features", "probe_bn")
    record.evaluated(part, "eval_interpolation", evaluation, "interpolation")
    if evaluation.pool is not None:
        record.evaluated(part, "pool", evaluation, "pool")
    record.evaluated(part, "n_last_blocks", evaluation, "last_blocks")
    record.flag(part, "avgpool_patchtokens")
    if args.eval == "knn":
        record.flag(part, "knn_k", "knn_temperature")
    if args.finetune:
        record.flag(part, *FINETUNE_OPTIONS)
    if args.eval == "linear":
        record.flag(part, "head_std")
    record.flag(part, "tsne")

    if args.eval == "linear":
        opt = "optimization"
        record.flag(opt, "optimizer", "base_lr", "lr_scaling")
        record.add(opt, "lr", lr, "derived")
        record.flag(opt, "num_epochs", "warmup_lr", "final_lr")
        record.used(opt, "warmup_epochs", warmup_epochs)
        record.flag(opt, "weight_decay", "exclude_bias_and_norm")
        record.flag(opt, *OPTIMIZER_OPTIONS.get(args.optimizer, ()))
    record.flag("speed", "amp", "channels_last")
    return record.as_dict()


def differences(
    saved: dict, record: dict, free: tuple[str, ...], flags: set[str] = frozenset()
) -> list[str]:
    """`<key> <saved> there, <now> here` for each setting not in `free` (nor FREE_KEYS) whose
    value differs between a checkpoint's record and this run's (a setting only one of them has,
    as the optional settings of a part, is not compared); `--<key>` for the `flags`."""
    found = []
    for part, settings in record.items():
        for key, entry in settings.items():
            if key in free or key in FREE_KEYS or key not in saved.get(part, {}):
                continue
            before = saved[part][key]["value"]
            if before != entry["value"]:
                name = f"--{key}" if key in flags else key
                found.append(f"{name} {shown(before)} there, {shown(entry['value'])} here")
    return found


def run_or_print(run: Callable[[Namespace], dict], args: Namespace) -> dict:
    """`run(args)`; with --print_config, the record it resolves printed as JSON on stdout (its
    start-up's other lines on stderr) and returned, nothing written (`run` returns
    {"config": record} before it writes)."""
    if not args.print_config:
        return run(args)
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        record = run(args)["config"]
    print(to_json(record), file=stdout)
    return {"config": record}


def to_json(record: dict) -> str:
    """The record as JSON, one setting a line: `"lr": {"value": 0.3, "source": "derived"}`."""
    parts = []
    for part, settings in record.items():
        lines = [f"  {json.dumps(key)}: {json.dumps(entry)}" for key, entry in settings.items()]
        parts.append(f" {json.dumps(part)}: {{\n" + ",\n".join(lines) + "\n }")
    return "{\n" + ",\n".join(parts) + "\n}"


def flat(record: dict) -> dict:
    """The record's values under their keys, parts merged: args.json (every setting the run
    used, resolved, none null; the keys are unique across parts)."""
    return {key: entry["value"] for settings in record.values() for key, entry in settings.items()}


def as_given(record: dict) -> dict:
    """The flags as they were given: the values of the defaults, recipe files and command line,
    and None where the method or the run resolved them (as an args.json of a run without a
    record holds them: scripts/methods_table.py reads both)."""
    given = ("default", "command line")
    return {
        key: entry["value"] if entry["source"] in given or entry["source"].startswith("recipe")
        else None
        for settings in record.values()
        for key, entry in settings.items()
    }  # fmt: skip


def write_record(log_dir: str, record: dict) -> None:
    """config.json (the record) and args.json (its values, flat) in the run's log folder."""
    with atomic_file(os.path.join(log_dir, "config.json")) as tmp, open(tmp, "w") as f:
        f.write(to_json(record) + "\n")
    write_json(os.path.join(log_dir, "args.json"), flat(record))


def values(record: dict) -> dict:
    """The record without the sources: part -> key -> value."""
    return {part: {k: v["value"] for k, v in settings.items()} for part, settings in record.items()}


def summary_lines(record: dict, log_dir: str, ckpt_dir: str) -> list[str]:
    """The start-up summary: what trains, on what, how, and where it is written."""
    v = values(record)
    opt, data, method, views = v["optimization"], v["data"], v["method"], v["views"]
    extras = [f"{k} {x}" for k in OPTIMIZER_OPTIONS.get(opt["optimizer"], ()) for x in
              [opt.get(k)] if x is not None]  # fmt: skip
    hparams = ", ".join(f"{k} {x}" for k, x in method.items() if k != "model_name")
    wd = opt["weight_decay"]
    wd_text = (
        f"{wd:g}" if opt["final_weight_decay"] == wd else f"{wd:g} -> {opt['final_weight_decay']:g}"
    )
    return [
        f"run: {v['run']['run_name']} (logs {log_dir}, checkpoints {ckpt_dir}; every setting "
        f"and its source in {log_dir}/config.json)",
        f"method: {method['model_name']} on {v['model']['backbone']} "
        f"({v['model']['feat_dim']}-d features, {v['model']['parameters'] / 1e6:.2f} M "
        f"parameters); {hparams}",
        f"data: {data['train_images']} images of {data['dataset_name']} at "
        f"{data['image_size']} px, batches of {data['batch_size']}, {data['steps_per_epoch']} "
        f"steps per epoch; views: {views['recipe']} recipe, {len(views['views'])} views",
        f"optimization: {opt['optimizer']}{' (' + ', '.join(extras) + ')' if extras else ''}, "
        f"lr {opt['lr']:.6g} ({opt['base_lr']:g} x {data['batch_size']}/256, "
        f"{opt['lr_scaling']} scaling), {opt['warmup_epochs']} warmup epoch(s) from "
        f"{opt['warmup_lr']:g}, cosine to {opt['final_lr']:g} (unscaled); weight decay {wd_text}; "
        f"{opt['num_epochs']} epochs; {len(opt['param_groups'])} parameter group(s)",
    ]
