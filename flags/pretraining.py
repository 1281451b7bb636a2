"""The flags that only pretraining (main.py) takes: its start and monitor data, the online
probe, the views and every method's hyper-parameters; main_linear.py parses them only to refuse
them with one line (`Refusing`), and main.py refuses those the chosen method does not take
(`check_method_flags`).
"""

import argparse
import inspect

from flags.method_help import (
    VIEW_FLAGS,
    interpolation_help,
    view_default_help,
    vit_heads_help,
    vit_layerscale_help,
    vit_registers_help,
    zero_init_help,
)
from methods import METHODS, method_options
from methods.hparams import add_method_flags
from transformations import view_builder
from utils.misc import (
    UserError,
    add_bool_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def add_pretraining_flags(parser: argparse.ArgumentParser, refused: bool = False) -> None:
    """The pretraining's start and monitor data, the view flags and every method's
    hyper-parameters (methods/hparams.py); `refused`: parsed only to be refused (Refusing)."""
    if refused:
        parser = Refusing(parser)
    group = parser.add_argument_group("pretraining: the backbone's start, speed")
    group.add_argument(
        "--pretrained",
        action="store_true",
        help="start from torchvision ImageNet weights in the local cache; not with timm:<name> "
        "(default: off)",
    )
    group.add_argument(
        "--vit_heads",
        type=positive_int,
        default=None,
        help=vit_heads_help(),
    )
    group.add_argument(
        "--vit_registers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=vit_registers_help(),
    )
    group.add_argument(
        "--vit_layerscale",
        type=non_negative_float,
        default=None,
        metavar="VALUE",
        help=vit_layerscale_help(),
    )
    add_bool_flag(
        group,
        "--zero_init_residual",
        zero_init_help(),
        default=None,
    )
    group.add_argument(
        "--init_backbone",
        default=None,
        metavar="PATH",
        help="start the backbone from these weights: a main.py checkpoint (its online "
        "backbone) or a file of export.py; a new run, not a resume (default: off)",
    )
    add_bool_flag(
        group,
        "--compile",
        "torch.compile the model's forward; pays a minute of compilation up front (default: false)",
    )
    add_bool_flag(
        group,
        "--gpu_augment",
        "hold the images in memory as uint8 and draw the views of whole batches on the "
        "training device with kornia, so that CPU workers are no bottleneck (default: false)",
    )
    group = parser.add_argument_group("pretraining: monitors")
    group.add_argument(
        "--eval_data_dir",
        default=None,
        metavar="PATH",
        help="--dataset_name folder: a labelled set for the kNN monitor, train/ and test/ (or "
        "val/) class folders as --dataset_name imagefolder (default: none, kNN off)",
    )
    add_bool_flag(
        group,
        "--online_probe",
        "train a linear classifier on the detached features of each batch's first view alongside "
        "pretraining (its own SGD; no gradient into the backbone), its test accuracy measured "
        "with the kNN monitor and at the end (default: on when the data set has labels)",
        default=None,
    )
    add_bool_flag(
        group,
        "--online_probe_bn",
        "a BatchNorm without affine parameters before the online probe's linear layer, as MAE's "
        "linear probe: it reads features whatever their scale (without it, a ViT's mean-pooled "
        "tokens left it at chance) (default: on; false: solo-learn's plain linear layer; a "
        "resumed run keeps its own)",
        default=None,
    )
    group.add_argument(
        "--online_probe_lr",
        type=positive_float,
        default=0.1,
        help="the online probe's lr, constant, momentum 0.9 (default: 0.1, solo-learn's)",
    )
    group.add_argument(
        "--rankme_images",
        type=non_negative_int,
        default=1024,
        help="RankMe, the effective rank of the backbone's features, on the first N test images "
        "(training images of an unlabelled folder) every epoch; 0 = off (default: 1024)",
    )
    group = parser.add_argument_group("augmentation")
    group.add_argument(
        "--crop_min_scale",
        type=positive_float,
        default=None,
        help="smallest area fraction of a (high-resolution) random resized crop (default: the "
        f"method's recipe: {view_default_help('crop_min_scale')})",
    )
    group.add_argument(
        "--jitter_strength",
        type=non_negative_float,
        default=None,
        help="colour jitter strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s) (default: the method's "
        f"recipe: {view_default_help('jitter_strength')})",
    )
    group.add_argument(
        "--num_crops",
        type=non_negative_int,
        default=None,
        help="low-resolution crops besides the two high-resolution ones (default: the method's "
        f"recipe: {view_default_help('num_crops')})",
    )
    group.add_argument(
        "--small_crop_size",
        type=positive_int,
        default=None,
        help="side of the low-resolution crops (default: image_size x 96/224, at least 8)",
    )
    group.add_argument(
        "--interpolation",
        choices=["bilinear", "bicubic"],
        default=None,
        help=interpolation_help(),
    )

    # Method hyper-parameters: declared by each method (methods/hparams.py); None keeps its own
    add_method_flags(parser, METHODS)


def pretraining_flags() -> list[str]:
    """The dests of the flags that only pretraining uses: those add_pretraining_flags adds."""
    parser = argparse.ArgumentParser(add_help=False)
    add_pretraining_flags(parser)
    return sorted(vars(parser.parse_args([])))


class Refusing:
    """A parser's stand-in that adds flags only to refuse them with one line (main_linear.py:
    the pretraining ones): left out of --help, and absent from the parsed namespace unless
    given (on the command line or by a --config recipe), so that being there is what "given"
    means."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_argument_group(self, *args, **kwargs) -> "Refusing":
        return self

    def add_argument(self, *names, **kwargs) -> argparse.Action:
        kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        return self.parser.add_argument(*names, **kwargs)


def check_method_flags(args) -> None:
    """Refuse a method or view flag that the chosen method does not take (`--model_name
    barlowtwins --temperature 0.3`), naming the ones it does take: such flags are None unless
    given, and would otherwise be dropped without a word."""
    name = args.model_name
    recipe = inspect.signature(view_builder(METHODS[name].augmentation)).parameters
    taken = method_options(name) | (set(recipe) & set(VIEW_FLAGS))
    every = set(VIEW_FLAGS).union(*(method_options(m) for m in METHODS))
    given = sorted(k for k in every - taken if getattr(args, k, None) is not None)
    if given:
        listed = ", ".join(f"--{k}" for k in sorted(taken & set(vars(args))))
        raise UserError(
            f"{', '.join('--' + k for k in given)}: not a flag of --model_name {name}, which "
            f"takes {listed}; drop {'it' if len(given) == 1 else 'them'}"
        )
