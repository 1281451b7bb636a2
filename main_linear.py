"""Linear evaluation of a pretrained backbone: a linear classifier trained on frozen features.

    python main_linear.py --model_name=simclr --backbone=resnet18 --dataset_name=cifar10 ...

Loads the pretraining checkpoint (--ckpt, or the newest one of the same method, backbone and data
set under --ckpt_dir), freezes the backbone in eval mode (BatchNorm statistics stay as trained),
trains the classifier with the same optimizer and schedule flags as main.py, validates every epoch
and ends by printing `Acc@1 X.XX Acc@5 Y.YY`. `--eval knn` gives the weighted kNN accuracy instead,
and `--random_init` evaluates the same backbone untrained: the baseline for every result.
"""

import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import main as pretrain
from networks import build_backbone
from networks.heads import LinearClassifier
from optimizers import build_optimizer
from optimizers.cosine_decay_warmup import adjust_learning_rate
from transformations import eval_transform, linear_train_transform
from utils.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from utils.data import DATASETS, balanced_subset, build_dataset, num_classes_of
from utils.knn import extract_features, knn_scores, topk_accuracy
from utils.logging import MetricsLogger, write_json
from utils.misc import (
    ArgumentParser,
    UserError,
    bool_flag,
    positive_int,
    resolve_device,
    run_cli,
    set_seed,
)
from utils.plots import plot_run
from utils.run import (
    build_lr_schedule,
    default_run_name,
    make_loader,
    prepare_run_dirs,
    print_args,
    save_args,
    seed_epoch,
)


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser(
        "Linear evaluation", parents=[pretrain.get_args_parser(add_help=False)], add_help=add_help
    )
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
    group.add_argument(
        "--probe_bn",
        type=bool_flag,
        nargs="?",
        const=True,
        default=False,
        help="BatchNorm without affine before the linear layer, as MAE: the probe no longer "
        "depends on the feature scale, which matters for untrained backbones (default: false)",
    )
    parser.set_defaults(batch_size=256, base_lr=30.0, num_epochs=100)
    return parser


def load_backbone(args, checkpoint: dict | None) -> tuple[nn.Module, int]:
    """The backbone with its pretrained weights (strictly: every backbone key must be there)."""
    backbone, feat_dim = build_backbone(args.backbone, args.image_size)
    if checkpoint is None:
        return backbone, feat_dim
    trained = checkpoint["args"]
    for key in ("backbone", "image_size"):
        if trained.get(key) != getattr(args, key):
            raise UserError(
                f"checkpoint {args.ckpt} was pretrained with {key}={trained.get(key)}, "
                f"but --{key} is {getattr(args, key)}: pass the same value"
            )
    prefix = "backbone."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {args.ckpt} does not fit {args.backbone}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights"
        )
    return backbone, feat_dim


def train_one_epoch(
    classifier, backbone, optimizer, loader, lr_schedule, device, epoch, args, logger: MetricsLogger
) -> dict[str, float]:
    classifier.train()
    backbone.eval()  # frozen: BatchNorm keeps its pretrained statistics
    steps = len(loader) if not args.debug else min(len(loader), 5)
    total_loss, seen, start = 0.0, 0, time.time()
    bar = tqdm(
        loader,
        total=steps,
        desc=f"epoch {epoch + 1}/{args.num_epochs}",
        dynamic_ncols=True,
        mininterval=1.0,
        leave=False,
    )
    for i, (images, labels) in enumerate(bar):
        if i == steps:
            break
        it = epoch * len(loader) + i
        lr = float(lr_schedule[it])
        adjust_learning_rate(optimizer, lr)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.no_grad():
            features = backbone(images)
        loss = F.cross_entropy(classifier(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()  # one host sync per step, reused below
        total_loss += loss_value * labels.shape[0]
        seen += labels.shape[0]
        if (i + 1) % args.print_freq == 0 or i + 1 == steps:
            speed = seen / (time.time() - start)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}", img_s=f"{speed:.1f}")
            logger.log(
                "step", epoch + (i + 1) / steps, it + 1, loss=loss_value, lr=lr, images_per_s=speed
            )
    bar.close()
    return {
        "loss": total_loss / max(seen, 1),
        "lr": lr,
        "images_per_s": seen / (time.time() - start),
    }


@torch.no_grad()
def evaluate(classifier, backbone, loader, device) -> dict[str, float]:
    """Validation loss, Acc@1 and Acc@5 (percent) over the whole loader."""
    classifier.eval()
    backbone.eval()
    total_loss, scores, targets = 0.0, [], []
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = classifier(backbone(images))
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        scores.append(logits.cpu())
        targets.append(labels.cpu())
    scores, targets = torch.cat(scores), torch.cat(targets)
    acc1, acc5 = topk_accuracy(scores, targets)
    return {"val_loss": total_loss / len(targets), "val_acc1": acc1, "val_acc5": acc5}


def main(args) -> dict:
    device = resolve_device(args.device)
    set_seed(args.seed)

    # ============ pretrained backbone ============
    checkpoint = None
    if not args.random_init:
        args.ckpt = args.ckpt or find_checkpoint(
            args.ckpt_dir, args.model_name, args.backbone, args.dataset_name
        )
        if args.ckpt is None:
            raise UserError(
                f"no pretraining checkpoint of {args.model_name}/{args.backbone}/"
                f"{args.dataset_name} under {args.ckpt_dir}: pass --ckpt PATH, run main.py "
                f"first, or use --random_init for the untrained baseline"
            )
        checkpoint = load_checkpoint(args.ckpt)
        if checkpoint.get("kind") != "pretrain":
            raise UserError(f"{args.ckpt} is not a pretraining checkpoint")
    backbone, feat_dim = load_backbone(args, checkpoint)
    backbone.requires_grad_(False)
    backbone.eval().to(device)
    prefix = f"{args.eval}_{'random_' if args.random_init else ''}"
    args.run_name = args.run_name or default_run_name(args, prefix=prefix)
    log_dir, ckpt_dir = prepare_run_dirs(args, resuming=False)
    print_args(args)

    # ============ data ============
    info = DATASETS[args.dataset_name]
    plain = eval_transform(
        image_size=args.image_size, native_size=info.image_size, mean=info.mean, std=info.std
    )
    augment = linear_train_transform(image_size=args.image_size, mean=info.mean, std=info.std)
    train_transform = plain if args.eval == "knn" else augment
    train_set = balanced_subset(
        build_dataset(args.dataset_name, args.data_dir, True, train_transform, args.download),
        args.limit,
    )
    test_set = build_dataset(args.dataset_name, args.data_dir, False, plain, args.download)
    num_classes = args.num_classes or num_classes_of(train_set)
    train_loader = make_loader(train_set, args, device, train=args.eval == "linear")
    test_loader = make_loader(test_set, args, device, train=False)
    start_time = time.time()
    if args.eval == "knn":
        save_args(log_dir, args)
        # ============ weighted kNN ============
        train_x, train_y = extract_features(backbone, train_loader, device)
        test_x, test_y = extract_features(backbone, test_loader, device)
        scores = knn_scores(train_x, train_y, test_x, num_classes, args.knn_k, args.knn_temperature)
        acc1, acc5 = topk_accuracy(scores, test_y)
    else:
        # ============ linear classifier ============
        classifier = LinearClassifier(feat_dim, num_classes, args.probe_bn).to(device)
        lr_schedule = build_lr_schedule(args, len(train_loader))
        optimizer = build_optimizer(args, classifier)
        save_args(log_dir, args)
        logger = MetricsLogger(
            log_dir, ["loss", "lr", "images_per_s", "val_loss", "val_acc1", "val_acc5"]
        )
        title = f"linear / {args.model_name} / {args.backbone} / {args.dataset_name}"
        for epoch in range(args.num_epochs):
            seed_epoch(train_loader, args.seed, epoch)
            stats = train_one_epoch(
                classifier,
                backbone,
                optimizer,
                train_loader,
                lr_schedule,
                device,
                epoch,
                args,
                logger,
            )
            stats.update(evaluate(classifier, backbone, test_loader, device))
            logger.log("epoch", epoch + 1, (epoch + 1) * len(train_loader), **stats)
            print(
                f"epoch {epoch + 1}/{args.num_epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            )
            save_checkpoint(
                {
                    "args": vars(args),
                    "kind": "linear",
                    "epoch": epoch + 1,
                    "model": classifier.state_dict(),
                    "optimizer": optimizer.state_dict(),
                },
                os.path.join(ckpt_dir, "last.pt"),
            )
        logger.close()
        acc1, acc5 = stats["val_acc1"], stats["val_acc5"]
        print("plots: " + " ".join(plot_run(log_dir, title)))

    results = {
        "model_name": args.model_name,
        "backbone": args.backbone,
        "dataset_name": args.dataset_name,
        "eval": args.eval,
        "random_init": args.random_init,
        "pretrain_checkpoint": args.ckpt,
        "pretrain_epochs": checkpoint["epoch"] if checkpoint else 0,
        "epochs": args.num_epochs if args.eval == "linear" else 0,
        "acc1": acc1,
        "acc5": acc5,
        "wall_time_s": round(time.time() - start_time, 1),
    }
    write_json(os.path.join(log_dir, "results.json"), results)
    print(f"results: {os.path.join(log_dir, 'results.json')}")
    print(f"Acc@1 {acc1:.2f} Acc@5 {acc5:.2f}")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
