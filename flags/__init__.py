"""The command-line flags both entry points share (main.py, main_linear.py), in one place:
run and output, speed, data, model, optimization, monitoring; and, in flags/pretraining.py, the
pretraining ones (views, method hyper-parameters, the online probe), which main_linear.py parses
only to refuse them with one line.

Each entry point builds its parser from these groups and adds its own (main_linear.py's
evaluation group); flags keep the names of the original commands, which scripts and checks call.
"""

import argparse

from flags.method_help import eval_interpolation_help, pool_help
from methods import METHODS
from networks import BACKBONES, TIMM_PREFIX
from networks.timm_models import check_timm_name
from optimizers import OPTIMIZERS
from utils.data import DATASETS
from utils.misc import (
    UserError,
    add_bool_flag,
    bool_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)


def add_shared_flags(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """The groups of flags main.py and main_linear.py share; with `recipe` (main.py) the
    training's defaults are the method's recipe (add_optimization_flags)."""
    add_run_flags(parser)
    add_speed_flags(parser)
    add_data_flags(parser, recipe)
    add_model_flags(parser)
    add_optimization_flags(parser, recipe)
    add_monitoring_flags(parser)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Run and output: folders, seed, checkpoints, resume."""
    group = parser.add_argument_group("run")
    group.add_argument(
        "--debug",
        action="store_true",
        help="5 steps per epoch, every step logged, autograd anomaly detection (default: off)",
    )
    group.add_argument(
        "--data_dir", default="./data/", help="data sets live here (default: ./data/)"
    )
    group.add_argument("--ckpt_dir", default="./ckpts/", help="checkpoints (default: ./ckpts/)")
    group.add_argument(
        "--logs_dir", default="./logs/", help="metrics, args and plots (default: ./logs/)"
    )
    group.add_argument(
        "--run_name",
        default=None,
        help="run folder name (default: method_backbone_dataset_timestamp)",
    )
    group.add_argument(
        "--device",
        default="cuda",
        help="cuda, cuda:N or cpu; cuda falls back to cpu (default: cuda)",
    )
    group.add_argument(
        "--seed", type=seed_int, default=123, help="random seed, 0 to 2^32 - 1 (default: 123)"
    )
    group.add_argument(
        "--save_freq",
        type=positive_int,
        default=10,
        help="write epoch_NNNN.pt every N epochs; last.pt every epoch (default: 10)",
    )
    group.add_argument(
        "--print_freq",
        type=positive_int,
        default=10,
        help="log a metrics.csv row every N steps (default: 10)",
    )
    group.add_argument(
        "--skip_nonfinite",
        type=non_negative_int,
        default=0,
        help="steps with a NaN or infinite loss to skip (no update) before stopping the run "
        "(default: 0, stop at the first)",
    )
    group.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="a recipe file (recipes/): flags as on the command line, # comments; they set the "
        "defaults, so flags given here win; may be repeated, later files win (default: none)",
    )
    group.add_argument(
        "--print_config",
        action="store_true",
        help="print the run's resolved configuration as JSON (every setting, its value and where "
        "it came from: the record config.json would hold) and exit, writing nothing",
    )
    group.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH|auto",
        help="continue a run from a checkpoint, or the newest of --run_name / of "
        "the same method, backbone and data set with 'auto' (default: off)",
    )


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """Speed and scale (docs/speed.md says when each helps; multi-GPU runs start with torchrun)."""
    group = parser.add_argument_group("speed and scale")
    group.add_argument(
        "--amp",
        choices=["none", "fp16", "bf16"],
        default="none",
        help="mixed precision: fp16 (CUDA, with a gradient scaler) or bf16 (CUDA from Ampere, "
        "or recent CPUs) (default: none)",
    )
    add_bool_flag(
        group,
        "--channels_last",
        "NHWC memory layout for model and images; helps convnets under --amp on tensor-core "
        "GPUs (default: false)",
    )
    add_bool_flag(
        group,
        "--sync_bn",
        "BatchNorm statistics over the global batch under DDP (torchrun); needs CUDA "
        "(default: false)",
    )


def add_data_flags(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """The data set and its loading."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        default="cifar10",
        choices=sorted(DATASETS),
        help="data set (default: cifar10)",
    )
    group.add_argument(
        "--image_size",
        type=positive_int,
        default=32,
        help="crop size fed to the network (default: 32)",
    )
    group.add_argument(
        "--eval_interpolation",
        choices=["bilinear", "bicubic"],
        default=None,
        help=eval_interpolation_help(),
    )
    group.add_argument(
        "--batch_size",
        type=positive_int,
        default=None if recipe else 512,
        help="global batch size; lrs scale with it (default: "
        + ("the method's recipe" if recipe else "%(default)s")
        + ")",
    )
    group.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=4,
        help="data loading processes (default: 4)",
    )
    add_bool_flag(
        group,
        "--in_memory",
        "decode the images once and keep them in memory as uint8 (CIFAR: 150 MB), so that "
        "epochs read no files (default: false)",
    )
    group.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="use only the first N training images, class-balanced (default: all)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the data set (default: off)",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Method and backbone."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_name",
        default="simsiam",
        choices=sorted(METHODS),
        help="SSL method (default: simsiam)",
    )
    group.add_argument(
        "--backbone",
        default="resnet18",
        type=backbone_name,
        help=f"backbone network: {', '.join(sorted(BACKBONES))}; or {TIMM_PREFIX}<name> for any "
        "model of the timm package (pip install timm), e.g. timm:convnext_tiny, adapted to small "
        "images for the ResNet, ConvNeXt and ViT families (default: resnet18)",
    )
    group.add_argument(
        "--pool",
        choices=["token", "mean"],
        default=None,
        help=pool_help(),
    )


def backbone_name(value: str) -> str:
    """--backbone: a registered name, or `timm:<name>` that timm knows (checked here, so that a
    typo is refused with the other flags)."""
    if value in BACKBONES:
        return value
    if value.startswith(TIMM_PREFIX):
        try:
            check_timm_name(value[len(TIMM_PREFIX) :])
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from {', '.join(sorted(BACKBONES))}; "
        f"or {TIMM_PREFIX}<name> for a timm model)"
    )


def add_optimization_flags(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """Optimizer and lr schedule. With `recipe` (main.py) every default is None: the chosen
    method's training recipe fills what is not given (methods/recipe.py, config.with_recipe);
    main_linear.py keeps the classifier's defaults shown."""
    group = parser.add_argument_group("optimization")

    def add(name: str, default, help: str, **kwargs) -> None:
        shown = kwargs.pop("shown", str(default))
        shown = "the method's recipe" if recipe else shown
        group.add_argument(
            name, default=None if recipe else default, help=f"{help} (default: {shown})", **kwargs
        )

    add("--optimizer", "sgd", "optimizer", choices=sorted(OPTIMIZERS))
    add("--weight_decay", 5e-4, "weight decay", type=non_negative_float)
    add(
        "--final_weight_decay",
        None,
        "raise (or lower) the weight decay from --weight_decay to this on a cosine over the run, "
        "as DINO and I-JEPA (0.04 -> 0.4); equal to --weight_decay: constant",
        type=non_negative_float,
        shown="none, constant",
    )
    add(
        "--exclude_bias_and_norm",
        None,
        "no weight decay for biases and norm parameters (every parameter of at most one "
        "dimension; with main_linear.py --finetune also a ViT's class token and position "
        "embeddings, as MAE's), and no adaptation under lars and larc",
        type=bool_flag,
        nargs="?",
        const=True,
        shown="true under adamw, lars and lars_simclr, false otherwise",
    )
    add(
        "--betas",
        [0.9, 0.999],
        "Adam and AdamW's moment coefficients",
        type=unit_float,
        nargs=2,
        metavar=("BETA1", "BETA2"),
        shown="0.9 0.999",
    )
    add("--momentum", 0.9, "momentum of sgd, lars and larc", type=non_negative_float)
    add("--warmup_epochs", 10, "linear warmup epochs", type=non_negative_int)
    add(
        "--warmup_lr",
        0.0,
        "lr at the start of warmup, scaled with the batch as --base_lr",
        type=non_negative_float,
    )
    add("--base_lr", 0.03, "peak lr for a batch of 256", type=non_negative_float)
    add(
        "--final_lr",
        0.0,
        "lr at the end of the cosine, scaled with the batch as --base_lr",
        type=non_negative_float,
    )
    add("--num_epochs", 800, "training epochs", type=positive_int)
    add(
        "--lr_scaling",
        "linear",
        "lr = base_lr x B/256 (linear), x sqrt(B/256), or as given; SimCLR's square-root rule "
        "0.075 x sqrt(B) is sqrt with --base_lr 1.2",
        choices=["linear", "sqrt", "none"],
    )
    add("--lars_eta", 0.001, "trust coefficient of lars and lars_simclr", type=positive_float)
    add("--larc_trust_coefficient", 0.02, "trust coefficient of larc", type=positive_float)
    add(
        "--larc_clip",
        True,
        "larc clips the adaptive lr at the global lr (true) or scales it (false, SwAV)",
        type=bool_flag,
        shown="true",
    )


def add_monitoring_flags(parser: argparse.ArgumentParser) -> None:
    """KNN monitor and t-SNE."""
    group = parser.add_argument_group("monitoring")
    group.add_argument(
        "--knn_freq",
        type=non_negative_int,
        default=0,
        help="weighted kNN accuracy on the test set every N epochs, 0 = off (default: 0)",
    )
    group.add_argument(
        "--knn_k", type=positive_int, default=200, help="kNN neighbours (default: 200)"
    )
    add_bool_flag(
        group,
        "--tsne",
        "tsne.png of the test-set features in the run folder: at the last kNN evaluation "
        "(with --knn_freq), or after main_linear.py's evaluation (default: false)",
    )
    group.add_argument(
        "--knn_temperature",
        type=positive_float,
        default=0.1,
        help="kNN vote temperature, > 0 (default: 0.1)",
    )


from flags.method_help import VIEW_FLAGS  # noqa: E402
from flags.pretraining import (  # noqa: E402  (main.py's and main_linear.py's one import)
    add_pretraining_flags,
    check_method_flags,
    pretraining_flags,
)

__all__ = ["VIEW_FLAGS", "add_pretraining_flags"]
__all__ += ["add_shared_flags"]
__all__ += ["check_method_flags", "pretraining_flags"]
