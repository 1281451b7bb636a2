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
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from engine import Engine, fit
from flags import (
    add_pretraining_flags,
    add_shared_flags,
    flags_given,
    hide_flags,
    pretraining_flags,
)
from networks import check_input_sizes
from networks.heads import LinearClassifier
from optimizers import build_optimizer, param_groups
from pretrained import load_backbone, load_pretrained, load_resumed
from transformations import eval_transform, linear_train_transform
from utils.accel import autocast, device_ids, grad_scaler, to_device
from utils.checkpoint import set_rng_state
from utils.data import (
    DATASETS,
    EpochSampler,
    ShardSampler,
    balanced_subset,
    build_dataset,
    dataset_targets,
    in_memory,
    num_classes_of,
)
from utils.distributed import (
    close_distributed,
    gather,
    is_main_process,
    world_size,
)
from utils.knn import FeatureLoader, extract_features, knn_evaluate, topk_accuracy
from utils.logging import MetricsLogger, NullLogger, write_json
from utils.misc import (
    ArgumentParser,
    UserError,
    add_bool_flag,
    non_negative_float,
    positive_int,
    run_cli,
    set_seed,
)
from utils.plots import plot_run
from utils.run import (
    TrainingGuard,
    build_lr_schedule,
    check_run_dirs,
    default_run_name,
    fit_batch_size,
    make_loader,
    make_run_dirs,
    print_args,
    save_args,
    start_process,
)
from utils.subsets import class_balanced_fraction
from utils.tsne import plot_tsne


def unit_fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value!r}")
    return number


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser("Linear evaluation", add_help=add_help)
    add_shared_flags(parser)
    add_pretraining_flags(parser)  # parsed only to be refused (check_args), not in --help
    hide_flags(parser, pretraining_flags(parser))
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--ckpt",
        default=None,
        help="pretraining checkpoint (default: the newest under --ckpt_dir with the "
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
        "evaluate the checkpoint's momentum (EMA) backbone instead of the trained one: BYOL's "
        "and MoCo's target, DINO's teacher, which DINO's paper reports (default: false)",
    )
    add_bool_flag(
        group,
        "--probe_bn",
        "BatchNorm without affine before the linear layer, as MAE: the probe no longer "
        "depends on the feature scale, which matters for untrained backbones (default: false)",
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
    if args.finetune and args.precompute_features:
        raise UserError(
            "--finetune trains the backbone, so its features cannot be precomputed: "
            "drop --precompute_features"
        )
    if args.finetune and args.eval == "knn":
        raise UserError("--finetune trains a classifier, --eval knn has none: drop one of them")
    if args.backbone_lr is not None and not args.finetune:
        raise UserError("--backbone_lr is the lr of --finetune: add --finetune or drop it")
    for flag in ("compile", "gpu_augment"):
        if getattr(args, flag):
            raise UserError(f"--{flag} is a pretraining option (main.py): drop it here")
    parser = get_args_parser()
    given = flags_given(args, parser, pretraining_flags(parser))
    if given:  # they shape the pretraining; the checkpoint's method is what it is
        flags = ", ".join(f"--{k}" for k in given)
        raise UserError(f"{flags}: pretraining flags of main.py, unused here: drop them")
    if args.finetune and args.base_lr == 0:
        raise UserError(
            "--finetune: the backbone's lr follows the head's schedule scaled by "
            "backbone_lr/base_lr, so --base_lr must be > 0"
        )


def build_datasets(args) -> tuple[Dataset, Dataset]:
    """Training set (augmented only for the image-based linear probe and fine-tuning; cut by
    --limit, then --data_fraction) and test set (eval transform)."""
    info = DATASETS[args.dataset_name]
    plain = eval_transform(
        image_size=args.image_size, native_size=info.image_size, mean=info.mean, std=info.std
    )
    augmented = args.eval == "linear" and not args.precompute_features
    transform = (
        linear_train_transform(image_size=args.image_size, mean=info.mean, std=info.std)
        if augmented
        else plain
    )
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


def add_backbone_groups(optimizer, backbone: nn.Module, args, lr: float) -> None:
    """--finetune: the backbone's parameters join the head's optimizer (at scaled lr `lr`) in
    groups of their own whose lr is backbone_lr/base_lr times the head's at every step (their
    `lr_scale`)."""
    scale = args.backbone_lr / args.base_lr
    exclude = args.optimizer == "adamw"  # same weight-decay policy as build_optimizer
    for group in param_groups(backbone, exclude_bias_and_norm_from_wd=exclude):
        group.update(name=f"backbone_{group['name']}", lr_scale=scale, lr=lr * scale)
        optimizer.add_param_group(group)


def classifier_step(classifier, backbone, device: torch.device, args, finetune: bool):
    """What one step of the probe (or of fine-tuning) computes, for engine.Engine: the
    backbone's features (with gradient only when fine-tuning), the head's cross-entropy, and
    its correct predictions (train_acc1, percent). Counts are this process's images."""

    def step(images, labels):
        images = to_device(images, device, args.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.set_grad_enabled(finetune), autocast(args, device):
            features = backbone(images)
        with autocast(args, device):
            logits = classifier(features)
        loss = F.cross_entropy(logits.float(), labels)
        correct = 100.0 * (logits.argmax(dim=1) == labels).sum()
        return loss, labels.shape[0], {"train_acc1": correct}

    return step


@torch.no_grad()
def evaluate(classifier, backbone, loader, device, args) -> dict[str, float]:
    """Validation loss, Acc@1 and Acc@5 (percent) over the whole loader (under DDP, over the
    shards of all processes, gathered)."""
    classifier.eval()
    backbone.eval()
    scores, targets = [], []
    for images, labels in loader:
        with autocast(args, device):
            logits = classifier(backbone(to_device(images, device, args.channels_last)))
        scores.append(logits.float())
        targets.append(labels.to(device))
    scores, targets = torch.cat(scores), torch.cat(targets)
    if isinstance(getattr(loader, "sampler", None), ShardSampler):  # padded shards: N rows
        count = len(loader.dataset)
        scores, targets = gather(scores)[:count], gather(targets)[:count]
    val_loss = F.cross_entropy(scores, targets).item()
    acc1, acc5 = topk_accuracy(scores.cpu(), targets.cpu())
    return {"val_loss": val_loss, "val_acc1": acc1, "val_acc5": acc5}


def train_classifier(
    args, classifier, backbone, train_loader, test_loader, device, log_dir, ckpt_dir, title,
    batch_size: int, resumed: dict | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Train the head (and the backbone with --finetune) for --num_epochs, validating every
    epoch; returns the last epoch's Acc@1 and Acc@5. The loaders yield images, or cached
    features with `backbone` an nn.Identity (then every DDP process trains the same head on
    all the features; on images each process takes its share of every batch). `resumed`: a
    checkpoint of this run to continue (--resume); `batch_size` the global batch."""
    lr_schedule, lr = build_lr_schedule(args, len(train_loader), batch_size)
    optimizer = build_optimizer(args, classifier, lr)
    if args.finetune:
        add_backbone_groups(optimizer, backbone, args, lr)
        print(f"backbone lr = {args.backbone_lr:g}/{args.base_lr:g} x the head's lr")
    head, body = classifier, backbone
    if world_size() > 1 and isinstance(train_loader.sampler, EpochSampler):
        head = DistributedDataParallel(classifier, device_ids=device_ids(device))
        if args.finetune:
            body = DistributedDataParallel(backbone, device_ids=device_ids(device))
    start = (0, 0)
    if resumed is not None:
        classifier.load_state_dict(resumed["model"])
        if args.finetune:
            backbone.load_state_dict(resumed["backbone"])
        optimizer.load_state_dict(resumed["optimizer"])
        set_rng_state(resumed["rng"])
        start = (resumed["epoch"], resumed.get("step_in_epoch", 0))
        print(f"resumed at epoch {start[0]}, step {start[1]} of the epoch")
    main_rank = is_main_process()
    if main_rank:
        save_args(log_dir, args, lr=lr, batch_size=batch_size)
    columns = ["loss", "lr", "images_per_s", "train_acc1", "val_loss", "val_acc1", "val_acc5"]
    logger = MetricsLogger(log_dir, columns) if main_rank else NullLogger()
    steps = len(train_loader)

    def before_epoch(epoch: int) -> None:
        classifier.train()
        backbone.train(args.finetune)  # frozen: eval mode, BatchNorm keeps its statistics

    def state(epoch: int, step_in_epoch: int) -> dict:
        saved = {
            "args": vars(args),
            "kind": "finetune" if args.finetune else "linear",
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "step": epoch * steps + step_in_epoch,
            "model": classifier.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        return {**saved, "backbone": backbone.state_dict()} if args.finetune else saved

    engine = Engine(
        optimizer, lr_schedule, steps, args.num_epochs, device, grad_scaler(args, device),
        TrainingGuard(args.skip_nonfinite), logger, 1 if args.debug else args.print_freq,
        args.debug,
    )  # fmt: skip
    stats = fit(
        engine,
        train_loader,
        classifier_step(head, body, device, args, args.finetune),
        state,
        ckpt_dir,
        start=start,
        before_epoch=before_epoch,
        after_epoch=lambda epoch: evaluate(classifier, backbone, test_loader, device, args),
    )
    if main_rank:
        print("plots: " + " ".join(plot_run(log_dir, title)))
    if not stats:  # resumed after the last epoch: its results are in the checkpoint's run
        stats = evaluate(classifier, backbone, test_loader, device, args)
    return stats["val_acc1"], stats["val_acc5"]


def linear_evaluation(
    args, backbone, feat_dim, num_classes, train_set, train_loader, test_loader, device,
    log_dir, ckpt_dir, batch_size, resumed,
) -> tuple[float, float, tuple | None]:  # fmt: skip
    """The probe (on images, or on features computed once) or the fine-tuning: Acc@1, Acc@5,
    and the test features when they were computed on the way."""
    classifier = LinearClassifier(feat_dim, num_classes, args.probe_bn).to(device)
    head_input, train_batches, test_batches = backbone, train_loader, test_loader
    test_features = None
    if args.precompute_features:
        plain_train = make_loader(train_set, args, device, train=False, batch_size=batch_size)
        train_x, train_y = extract_features(backbone, plain_train, device)
        test_features = extract_features(backbone, test_loader, device)
        print(f"features: {tuple(train_x.shape)} train, {tuple(test_features[0].shape)} test")
        head_input = nn.Identity()
        train_batches = FeatureLoader(
            train_x.to(device), train_y, batch_size, shuffle=True, seed=args.seed
        )
        test_batches = FeatureLoader(
            test_features[0].to(device), test_features[1], batch_size, shuffle=False
        )
    label = "finetune" if args.finetune else "linear"
    label += " (precomputed features)" if args.precompute_features else ""
    title = f"{label} / {args.model_name} / {args.backbone} / {args.dataset_name}"
    acc1, acc5 = train_classifier(
        args, classifier, head_input, train_batches, test_batches, device, log_dir, ckpt_dir,
        title, batch_size, resumed,
    )  # fmt: skip
    return acc1, acc5, test_features


def results_of(args, train_images: int, checkpoint, acc1: float, acc5: float, seconds: float):
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
        "pretrain_epochs": checkpoint["epoch"] if checkpoint else 0,
        "epochs": args.num_epochs if args.eval == "linear" else 0,
        "acc1": acc1,
        "acc5": acc5,
        "wall_time_s": round(seconds, 1),
    }


def main(args) -> dict:
    check_args(args)
    device = start_process(args)  # under torchrun: one process per GPU
    set_seed(args.seed)
    if args.finetune and args.backbone_lr is None:
        args.backbone_lr = 0.1 * args.base_lr

    # ============ pretrained backbone (and this run's own checkpoint with --resume) ============
    resumed = load_resumed(args)
    checkpoint = load_pretrained(args)
    backbone, feat_dim = load_backbone(args, checkpoint)
    backbone.requires_grad_(args.finetune)
    backbone.eval().to(device)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    mode = "finetune" if args.finetune else args.eval
    args.run_name = args.run_name or default_run_name(
        args, prefix=f"{mode}_{'random_' if args.random_init else ''}"
    )
    # checked now, created once the evaluation can start: a failed start leaves nothing behind
    log_dir, ckpt_dir = check_run_dirs(args, resuming=resumed is not None)
    print_args(args)

    # ============ data ============
    train_set, test_set = build_datasets(args)
    num_classes = args.num_classes or num_classes_of(train_set)
    train = args.eval == "linear"  # a kNN memory bank is read in order, every image
    batch_size = args.batch_size
    if train:
        batch_size = fit_batch_size(batch_size, len(train_set), args.limit)
    train_loader = make_loader(train_set, args, device, train=train, batch_size=batch_size)
    test_loader = make_loader(test_set, args, device, train=False, batch_size=batch_size)
    check_input_sizes(backbone, args.backbone, {args.image_size}, args.image_size, device)
    make_run_dirs(log_dir, ckpt_dir)
    start_time = time.time()
    test_features = None  # (features, labels) of the test set, when computed anyway
    if args.eval == "knn":
        if is_main_process():
            save_args(log_dir, args)
        # ============ weighted kNN ============
        (acc1, acc5), test_features = knn_evaluate(
            backbone, train_loader, test_loader, device, args.knn_k, args.knn_temperature,
            num_classes,
        )  # fmt: skip
    else:
        # ============ linear classifier (or fine-tuning) ============
        run = (device, log_dir, ckpt_dir, batch_size, resumed)
        acc1, acc5, test_features = linear_evaluation(
            args, backbone, feat_dim, num_classes, train_set, train_loader, test_loader, *run
        )
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

    results = results_of(args, len(train_set), checkpoint, acc1, acc5, wall_time)
    write_json(os.path.join(log_dir, "results.json"), results)
    print(f"results: {os.path.join(log_dir, 'results.json')}")
    print(f"Acc@1 {acc1:.2f} Acc@5 {acc5:.2f}")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
