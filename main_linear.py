"""Evaluation of a pretrained backbone: a linear classifier trained on frozen features (or kNN,
or fine-tuning).

    python main_linear.py --model_name=simclr --backbone=resnet18 --dataset_name=cifar10 ...

Loads the pretraining checkpoint (--ckpt, or the newest one of the same method, backbone and data
set under --ckpt_dir), freezes the backbone in eval mode (BatchNorm statistics stay as trained),
trains the classifier with the same optimizer and schedule flags as main.py, validates every epoch
and ends by printing `Acc@1 X.XX Acc@5 Y.YY`. `--eval knn` gives the weighted kNN accuracy instead,
and `--random_init` evaluates the same backbone untrained: the baseline for every result.

Variants (docs/evaluation.md): `--precompute_features` trains the head on features computed once
(no augmentation; seconds instead of hours), `--finetune` trains backbone and head together,
`--data_fraction 0.01` keeps a class-balanced 1% of the labels, `--tsne` draws the test features.
"""

import argparse
import json
import os
import time
from dataclasses import replace

import torch
from torch.utils.data import Dataset, Subset

from config import evaluation_record, flag_sources, run_or_print, write_record
from evaluation import plain_transform, resolve_evaluation
from flags import (
    add_pretraining_flags,
    add_shared_flags,
    pretraining_flags,
)
from flags.method_help import last_blocks_help, momentum_backbone_help
from methods import METHODS
from networks import check_input_sizes
from networks.vit import (
    MaskableViT,
    set_avgpool_patchtokens,
    set_last_blocks,
    set_pool,
)
from optimizers import Optimization, scale_lr
from pretrained import (
    Evaluated,
    evaluated_backbone,
    load_pretrained,
    load_resumed,
    resumed_values,
)
from probe import PROBE_STD, HeadTraining, linear_evaluation
from transformations import linear_train_transform
from utils.accel import Speed
from utils.checkpoint import check_same_data, check_unchanged, restore_epoch_file
from utils.data import (
    DATASETS,
    UNLABELLED,
    balanced_subset,
    build_dataset,
    dataset_targets,
    in_memory,
    num_classes_of,
)
from utils.distributed import close_distributed, is_main_process, world_size
from utils.knn import extract_features, knn_evaluate
from utils.logging import write_json
from utils.misc import (
    ArgumentParser,
    UserError,
    add_bool_flag,
    git_sha,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
    set_seed,
    unit_float,
)
from utils.run import (
    Run,
    default_run_name,
    fit_batch_size,
    make_loader,
    make_run_dirs,
    run_folders,
    start_process,
    with_values,
)
from utils.runfolder import releases_locks
from utils.subsets import class_balanced_fraction
from utils.tsne import plot_tsne


def unit_fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value!r}")
    return number


def magnitude(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 10:
        raise argparse.ArgumentTypeError(f"expected a magnitude from 0 to 10, got {value!r}")
    return number


# main_linear.py's optimizers that leave biases and norms out of weight decay (and LARS out of
# its adaptation) unless told otherwise: AdamW as MAE's fine-tuning, LARS as every LARS code
EXCLUDING_OPTIMIZERS = ("adamw", "lars", "lars_simclr")


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser("Linear evaluation", add_help=add_help)
    add_shared_flags(parser)
    add_pretraining_flags(parser, refused=True)  # parsed only to be refused (check_args)
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--ckpt",
        default=None,
        help="pretraining checkpoint, or a backbone file of export.py (default: the newest "
        "checkpoint under --ckpt_dir with the "
        "same --model_name, --backbone and --dataset_name)",
    )
    group.add_argument(
        "--num_classes",
        type=positive_int,
        default=None,
        help="classifier outputs (default: inferred from the data set)",
    )
    group.add_argument(
        "--eval",
        default="linear",
        choices=["linear", "knn"],
        help="linear probe or weighted kNN (default: linear)",
    )
    group.add_argument(
        "--random_init",
        action="store_true",
        help="evaluate the backbone at random initialisation: the baseline (default: off)",
    )
    add_bool_flag(
        group,
        "--momentum_backbone",
        momentum_backbone_help(),
        default=None,
    )
    add_bool_flag(
        group,
        "--probe_bn",
        "BatchNorm without affine before the linear layer, as MAE: the probe no longer "
        "depends on the feature scale, which matters for untrained backbones (default: false)",
    )
    group.add_argument(
        "--n_last_blocks",
        type=positive_int,
        default=None,
        help=last_blocks_help(),
    )
    add_bool_flag(
        group,
        "--avgpool_patchtokens",
        "a ViT's features (vit_*, plain timm ViTs) followed by the mean of its last block's patch "
        "tokens after the final norm (DINO's eval_linear.py: its ViT-B setting, with "
        "--n_last_blocks 1) (default: false, DINO's ViT-S setting)",
    )
    add_bool_flag(
        group,
        "--precompute_features",
        "compute the frozen backbone's features of the un-augmented training and test "
        "images once and train the head on them: same optimizer, schedule and epochs, seconds "
        "instead of hours, but no augmentation (default: false)",
    )
    add_bool_flag(
        group,
        "--finetune",
        "train backbone and head together, backbone in train mode, with the linear "
        "probe's augmentation (default: false)",
    )
    group.add_argument(
        "--backbone_lr",
        type=non_negative_float,
        default=None,
        help="--finetune: the backbone's lr for a batch of 256, scaled and scheduled like "
        "--base_lr (default: 0.1 x --base_lr)",
    )
    group = parser.add_argument_group(
        "fine-tuning of Vision Transformers (MAE's protocol: --layer_decay 0.75 --drop_path 0.1 "
        "--label_smoothing 0.1 --mixup 0.8 --cutmix 1.0 --randaugment 9 --random_erasing 0.25 "
        "--pool mean --fc_norm --optimizer adamw --betas 0.9 0.999)"
    )
    group.add_argument(
        "--head_std",
        type=positive_float,
        default=None,
        help="standard deviation of the classifier's initial weights, its bias 0 (default: MAE's: "
        "2e-5, truncated normal, with --finetune (main_finetune.py); 0.01 for the probe "
        "(main_linprobe.py))",
    )
    add_bool_flag(
        group,
        "--decay_tokens",
        "--finetune: decay a ViT's class token and position embeddings, which MAE's fine-tuning "
        "leaves undecayed with biases and norms (its no_weight_decay()) (default: false)",
    )
    group.add_argument(
        "--layer_decay",
        type=unit_fraction,
        default=None,
        help="--finetune: layer-wise lr decay: block i of d gets decay^(d + 1 - i) of the lr, the "
        "embeddings decay^(d + 1), the final norm and the head 1 (default: none)",
    )
    group.add_argument(
        "--drop_path",
        type=unit_float,
        default=0.0,
        help="--finetune: stochastic depth of the ViT's blocks, rising linearly to this rate "
        "(default: 0)",
    )
    group.add_argument(
        "--label_smoothing",
        type=unit_float,
        default=0.0,
        help="cross-entropy label smoothing (default: 0)",
    )
    group.add_argument(
        "--mixup",
        type=non_negative_float,
        default=0.0,
        help="--finetune: mixup with this Beta(alpha, alpha) (torchvision.transforms.v2.MixUp); "
        "with --cutmix, one of the two per batch (default: 0, off)",
    )
    group.add_argument(
        "--cutmix",
        type=non_negative_float,
        default=0.0,
        help="--finetune: CutMix with this alpha (torchvision.transforms.v2.CutMix) (default: 0)",
    )
    group.add_argument(
        "--randaugment",
        type=magnitude,
        default=0,
        help="--finetune: RandAugment of 2 operations at this magnitude on timm's 0-10 scale "
        "(MAE: 9; torchvision's RandAugment, no magnitude noise) (default: 0, off)",
    )
    group.add_argument(
        "--random_erasing",
        type=unit_float,
        default=0.0,
        help="--finetune: random erasing with this probability, noise per pixel (MAE: 0.25) "
        "(default: 0)",
    )
    add_bool_flag(
        group,
        "--fc_norm",
        "--finetune with --pool mean: drop the ViT's final norm and normalise the mean of the "
        "patch tokens with a fresh LayerNorm, as MAE's fine-tuning (models_vit.py, "
        "global_pool) (default: false)",
    )
    group = parser.add_argument_group("evaluation data")
    group.add_argument(
        "--data_fraction",
        type=unit_fraction,
        default=1.0,
        help="train on this class-balanced fraction of the labelled training set, chosen by "
        "--seed; 0.01 and 0.1 are the 1%% and 10%% label regimes (default: 1.0)",
    )
    parser.set_defaults(batch_size=256, base_lr=30.0, num_epochs=100)
    return parser


def check_args(args) -> None:
    """Combinations that cannot work end the run before anything is loaded."""
    if args.dataset_name in UNLABELLED:
        raise UserError(
            f"--dataset_name {args.dataset_name} has no labels to evaluate with: use a labelled "
            "set, e.g. --dataset_name imagefolder with train/ and test/ class folders"
        )
    if args.finetune and args.precompute_features:
        raise UserError(
            "--finetune trains the backbone, so its features cannot be precomputed: "
            "drop --precompute_features"
        )
    if args.resume is not None and args.eval == "knn":
        raise UserError("--resume: a kNN evaluation trains nothing to continue: drop --resume")
    if args.finetune and args.eval == "knn":
        raise UserError("--finetune trains a classifier, --eval knn has none: drop one of them")
    if args.random_init and args.ckpt:
        raise UserError(
            "--random_init evaluates an untrained backbone, --ckpt a pretrained one: drop one"
        )
    if args.random_init and args.momentum_backbone:
        raise UserError(
            "--momentum_backbone picks a checkpoint's EMA backbone, and --random_init evaluates "
            "none: drop --momentum_backbone"
        )
    if args.backbone_lr is not None and not args.finetune:
        raise UserError("--backbone_lr is the lr of --finetune: add --finetune or drop it")
    given = sorted(set(vars(args)) & set(pretraining_flags()))  # present only when given
    if args.random_init:  # the untrained backbone as the method initialises it: its init flags
        given = [k for k in given if k not in METHODS[args.model_name].init_flags]
    if "interpolation" in given:  # main.py's views; the evaluation's resize has its own flag
        raise UserError(
            "--interpolation resamples main.py's views; main_linear.py's crops and resize are "
            "--eval_interpolation: pass that instead"
        )
    if given:  # they shape the pretraining; the checkpoint's method is what it is
        flags = ", ".join(f"--{k}" for k in given)
        many = len(given) > 1
        raise UserError(
            f"{flags} {'are' if many else 'is a'} pretraining option{'s' if many else ''} "
            f"(main.py), unused here: drop {'them' if many else 'it'}"
        )
    tuning = {"layer_decay": args.layer_decay, "drop_path": args.drop_path}
    tuning |= {"mixup": args.mixup, "cutmix": args.cutmix, "randaugment": args.randaugment}
    tuning |= {"random_erasing": args.random_erasing, "fc_norm": args.fc_norm}
    given = [f"--{k}" for k, v in tuning.items() if v]
    if given and not args.finetune:
        raise UserError(f"{', '.join(given)}: fine-tuning options: add --finetune or drop them")
    if args.finetune and args.base_lr == 0:
        raise UserError(
            "--finetune: the backbone's lr follows the head's schedule scaled by "
            "backbone_lr/base_lr, so --base_lr must be > 0"
        )


def build_datasets(args) -> tuple[Dataset, Dataset]:
    """Training set (augmented only for the image-based linear probe and fine-tuning; cut by
    --limit, then --data_fraction) and test set (eval transform)."""
    info = DATASETS[args.dataset_name]
    plain = plain_transform(args.dataset_name, args.image_size, args.eval_interpolation)
    augmented = args.eval == "linear" and not args.precompute_features
    transform = plain
    if augmented:
        transform = linear_train_transform(
            image_size=args.image_size, mean=info.mean, std=info.std,
            randaugment=args.randaugment, random_erasing=args.random_erasing,
            interpolation=args.eval_interpolation,
        )  # fmt: skip
    train_set = build_dataset(args.dataset_name, args.data_dir, True, transform, args.download)
    train_set = balanced_subset(train_set, args.limit)
    if args.data_fraction < 1:
        keep = class_balanced_fraction(dataset_targets(train_set), args.data_fraction, args.seed)
        train_set = Subset(train_set, keep)
    test_set = build_dataset(args.dataset_name, args.data_dir, False, plain, args.download)
    train_set, test_set = in_memory(train_set, args.in_memory), in_memory(test_set, args.in_memory)
    print(
        f"data: {len(train_set)} training images ({args.data_fraction:g} of "
        f"{args.dataset_name}{', --limit ' + str(args.limit) if args.limit else ''}), "
        f"{len(test_set)} test images"
    )
    return train_set, test_set


def class_names(dataset: Dataset) -> list[str] | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "classes", None)


def results_of(args, train_images: int, pretrained, acc1: float, acc5: float, seconds: float):
    """results.json: what was evaluated, how, and its accuracy."""
    return {
        "model_name": args.model_name,
        "backbone": args.backbone,
        "dataset_name": args.dataset_name,
        "eval": args.eval,
        "finetune": args.finetune,
        "precompute_features": args.precompute_features,
        "data_fraction": args.data_fraction,
        "train_images": train_images,
        "random_init": args.random_init,
        "pretrain_checkpoint": args.ckpt,
        "pretrain_epochs": pretrained.epoch if pretrained else 0,
        "momentum_backbone": pretrained.momentum_backbone if pretrained else False,
        "epochs": args.num_epochs if args.eval == "linear" else 0,
        "acc1": acc1,
        "acc5": acc5,
        "wall_time_s": round(seconds, 1),
    }


@releases_locks
def main(args) -> dict:
    """Evaluate (evaluate); with --print_config, print the evaluation's resolved configuration
    and return it, writing nothing (config.run_or_print)."""
    return run_or_print(evaluate, args)


def evaluate(args) -> dict:
    flags = flag_sources(get_args_parser(), args)  # where each flag's value came from
    check_args(args)
    run, speed = Run.of(args), Speed.of(args)  # where the run lives, how fast it runs
    device = start_process(run, speed)  # under torchrun: one process per GPU
    set_seed(args.seed)

    # ============ pretrained backbone (and this run's own checkpoint with --resume) ============
    kind = "finetune" if args.finetune else "linear"
    resumed_path, resumed = load_resumed(run, kind)
    if resumed:  # flags left to the method: the stopped run's values
        args = with_values(args, **resumed_values(vars(args), resumed))
    # a resumed evaluation continues with the pretraining checkpoint it started from
    ckpt = args.ckpt or (resumed and resumed["args"].get("ckpt"))
    ckpt_source = flags["sources"]["ckpt"] if args.ckpt else "checkpoint" if ckpt else "derived"
    want = Evaluated.of(args)  # what is evaluated
    weights, pretrained, ckpt = load_pretrained(want, ckpt)  # a checkpoint or an exported file
    # recorded as evaluated (None: the method's choice), so that --resume needs no flag for it
    args = with_values(
        args, momentum_backbone=pretrained.momentum_backbone if pretrained else False
    )
    mode = "finetune" if args.finetune else args.eval
    prefix = f"{mode}_{'random_' if args.random_init else ''}"
    # checked (and locked) now, created once the evaluation can start: a failed start leaves
    # nothing behind
    run_name, log_dir, ckpt_dir, metrics_from = run_folders(
        run, resumed_path, resumed, run.run_name or default_run_name(run, prefix=prefix)
    )
    backbone_lr = args.backbone_lr
    if args.finetune and backbone_lr is None:
        backbone_lr = 0.1 * args.base_lr
    # how it is evaluated: the flags, else its pretraining run's record, else the method's
    # (the backbone's copy: load_pretrained's, from --momentum_backbone or the record)
    given = {"interpolation": args.eval_interpolation, "pool": args.pool}
    given["last_blocks"] = args.n_last_blocks
    evaluation = resolve_evaluation(
        args.model_name, given, pretrained.evaluation() if pretrained else None
    )
    # the values derived from the flags, in what args.json and the checkpoints record
    exclude = args.exclude_bias_and_norm  # unset: those optimizers' usual policy (MAE's AdamW)
    exclude = args.optimizer in EXCLUDING_OPTIMIZERS if exclude is None else exclude
    head_std = args.head_std or (2e-5 if args.finetune else PROBE_STD)  # MAE's fine-tuning, probe
    args = with_values(
        args, run_name=run_name, ckpt=ckpt, backbone_lr=backbone_lr,
        eval_interpolation=evaluation.interpolation, exclude_bias_and_norm=exclude,
        head_std=head_std,
    )  # fmt: skip
    backbone, feat_dim = evaluated_backbone(want, weights, pretrained, ckpt)
    # a ViT's features as its pretraining evaluated them (I-JEPA: the patch tokens' mean)
    pool = evaluation.pool
    set_pool(backbone, pool, args.backbone)
    if (args.drop_path or args.layer_decay or args.fc_norm) and not isinstance(
        backbone, MaskableViT
    ):
        raise UserError(
            f"--drop_path, --layer_decay and --fc_norm need a Vision Transformer (vit_tiny, "
            f"vit_small, or a timm ViT with one class token), not {args.backbone}: drop them"
        )
    if args.drop_path:
        backbone.set_drop_path(args.drop_path)
    # DINO probes a ViT on the class tokens of its last 4 blocks (eval_linear.py); its kNN and
    # every fine-tuning read the last block alone
    probe = args.eval == "linear" and not args.finetune and isinstance(backbone, MaskableViT)
    last_blocks = evaluation.last_blocks
    if evaluation.sources["last_blocks"] != "given" and not probe:
        last_blocks = 1
    width = feat_dim
    feat_dim *= set_last_blocks(backbone, last_blocks, args.backbone)
    args = with_values(args, n_last_blocks=last_blocks)
    if resumed:
        check_unchanged(resumed["args"], vars(args), resumed_path)
        results_path = os.path.join(log_dir, "results.json")
        if resumed["epoch"] >= args.num_epochs and os.path.isfile(results_path):
            print(f"--resume {resumed_path}: the evaluation has finished; results {results_path}")
            with open(results_path) as f:
                return json.load(f)
    if args.fc_norm:
        if pool != "mean" or last_blocks > 1:
            raise UserError(
                "--fc_norm normalises the mean of the last block's patch tokens: add --pool mean "
                "and drop --n_last_blocks"
            )
        backbone.set_fc_norm()
    feat_dim += width * set_avgpool_patchtokens(backbone, args.avgpool_patchtokens, args.backbone)
    backbone.requires_grad_(args.finetune)
    backbone.eval().to(device)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)

    # ============ data ============
    train_set, test_set = build_datasets(args)
    if resumed:
        check_same_data(resumed, len(train_set), resumed_path, args.dataset_name, args.data_dir)
    num_classes = args.num_classes or num_classes_of(train_set)
    train = args.eval == "linear"  # a kNN memory bank is read in order, every image
    batch_size = args.batch_size
    if train:
        batch_norm = args.finetune or args.probe_bn  # normalises over the training batch
        batch_size = fit_batch_size(batch_size, len(train_set), args.limit, 1 + batch_norm)
    train_loader = make_loader(train_set, device, train, batch_size, args.seed, args.num_workers)
    test_loader = make_loader(test_set, device, False, batch_size, args.seed, args.num_workers)
    check_input_sizes(backbone, args.backbone, {args.image_size}, args.image_size, device)
    record = evaluation_record(
        args, flags, pretrained=pretrained, ckpt_source=ckpt_source,
        train_images=len(train_set), test_images=len(test_set), num_classes=num_classes,
        feat_dim=feat_dim, batch_size=batch_size, workers=train_loader.num_workers,
        lr=scale_lr(args.base_lr, batch_size, args.lr_scaling) if train else None,
        warmup_epochs=Optimization.of(args).warmup_used, git_sha=git_sha(), world_size=world_size(),
        evaluation=replace(evaluation, last_blocks=last_blocks),
    )  # fmt: skip
    if args.print_config:
        return {"config": record}
    print(f"run: {run_name} (logs {log_dir}; every setting and its source in "
          f"{log_dir}/config.json)")  # fmt: skip
    make_run_dirs(log_dir, ckpt_dir, resumed["step"] if resumed else None, metrics_from)
    if is_main_process():
        write_record(log_dir, record)
    if resumed and is_main_process() and resumed.get("step_in_epoch", 0) == 0:
        # killed while writing its epoch_NNNN.pt?
        restore_epoch_file(
            resumed_path, ckpt_dir, resumed["epoch"], args.save_freq, args.num_epochs
        )
    start_time = time.time()
    test_features = None  # (features, labels) of the test set, when computed anyway
    if args.eval == "knn":
        # ============ weighted kNN ============
        (acc1, acc5), test_features = knn_evaluate(
            backbone, train_loader, test_loader, device, args.knn_k, args.knn_temperature,
            num_classes,
        )  # fmt: skip
    else:
        # ============ linear classifier (or fine-tuning) ============
        run = (device, log_dir, ckpt_dir, batch_size, resumed)
        what = f"{args.model_name} / {args.backbone} / {args.dataset_name}"
        acc1, acc5, test_features = linear_evaluation(
            HeadTraining.of(args), Optimization.of(args), speed, vars(args), what,
            backbone, feat_dim, num_classes, train_set, train_loader, test_loader, *run,
        )  # fmt: skip
    wall_time = time.time() - start_time
    if args.tsne and test_features is None:  # linear on images or fine-tuned: the final backbone's
        test_features = extract_features(backbone, test_loader, device)  # all processes take part
    main_rank = is_main_process()  # asked before the process group is gone
    close_distributed()
    if not main_rank:
        return {"acc1": acc1, "acc5": acc5}

    if args.tsne:  # ============ t-SNE of the test features ============
        title = f"{args.model_name} / {args.backbone}: {args.dataset_name} test features"
        path = os.path.join(log_dir, "tsne.png")
        plot_tsne(*test_features, path, title, seed=args.seed, class_names=class_names(test_set))
        print(f"t-SNE: {path}")

    results = results_of(args, len(train_set), pretrained, acc1, acc5, wall_time)
    write_json(os.path.join(log_dir, "results.json"), results)
    print(f"results: {os.path.join(log_dir, 'results.json')}")
    print(f"Acc@1 {acc1:.2f} Acc@5 {acc5:.2f}")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
