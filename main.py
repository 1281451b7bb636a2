"""Self-supervised pretraining of a backbone with one SSL method.

    python main.py --model_name=simclr --backbone=resnet18 --dataset_name=cifar10 ...

Writes <logs_dir>/<run_name>/{args.json, metrics.csv, loss.png, lr.png} and
<ckpt_dir>/<run_name>/{last.pt, epoch_NNNN.pt}; `main_linear.py` then evaluates the backbone.
"""

import inspect
import os
import time

import torch
from torch import nn

from engine import Engine, fit
from methods import METHODS, build_method, method_options
from methods.hparams import add_method_flags
from networks import BACKBONES, build_backbone, check_input_sizes
from optimizers import OPTIMIZERS, build_optimizer
from transformations import PRETRAIN_TRANSFORMS, BatchViews, eval_transform, pretrain_transform
from utils.accel import autocast, grad_scaler, prepare_model, to_device
from utils.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    set_rng_state,
)
from utils.data import DATASETS, InMemory, balanced_subset, build_dataset
from utils.distributed import (
    close_distributed,
    is_main_process,
    rank,
    world_size,
)
from utils.knn import knn_evaluate
from utils.logging import MetricsLogger, NullLogger, write_json
from utils.misc import (
    ArgumentParser,
    UserError,
    add_bool_flag,
    bool_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
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
    make_loader,
    make_run_dirs,
    print_args,
    save_args,
    start_process,
)
from utils.tsne import plot_tsne

# the view flags: each recipe takes some of them (transformations.PRETRAIN_TRANSFORMS)
VIEW_FLAGS = ("crop_min_scale", "jitter_strength", "num_crops", "small_crop_size")


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser("Self-supervised pretraining", add_help=add_help)

    # Run and output
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
    group.add_argument("--seed", type=int, default=123, help="random seed (default: 123)")
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
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH|auto",
        help="continue a run from a checkpoint, or the newest of --run_name / of "
        "the same method, backbone and data set with 'auto' (default: off)",
    )

    # Speed (docs/speed.md says when each helps); multi-GPU runs start with torchrun
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
        "--compile",
        "torch.compile the model's forward; pays a minute of compilation up front (default: false)",
    )
    add_bool_flag(
        group,
        "--sync_bn",
        "BatchNorm statistics over the global batch under DDP (torchrun); needs CUDA "
        "(default: false)",
    )

    # Data
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
        "--batch_size",
        type=positive_int,
        default=512,
        help="global batch size; lrs scale with it (default: %(default)s)",
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
    add_bool_flag(
        group,
        "--gpu_augment",
        "hold the images in memory as uint8 and draw the views of whole batches on the "
        "training device with kornia, so that CPU workers are no bottleneck (default: false)",
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

    # Model
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
        choices=sorted(BACKBONES),
        help="backbone network (default: resnet18)",
    )
    group.add_argument(
        "--pretrained",
        action="store_true",
        help="start from torchvision ImageNet weights in the local cache (default: off)",
    )
    add_bool_flag(
        group,
        "--zero_init_residual",
        "zero the last BatchNorm of each residual block at the start (ResNet, EfficientNet), as "
        "the official SimCLR, SimSiam, Barlow Twins, VICReg and MoCo v3 do (BYOL: of Bottleneck "
        "blocks only); never with --pretrained (default: the method's own)",
        default=None,
    )

    # Optimization
    group = parser.add_argument_group("optimization")
    group.add_argument(
        "--optimizer", default="sgd", choices=sorted(OPTIMIZERS), help="optimizer (default: sgd)"
    )
    group.add_argument(
        "--weight_decay", type=non_negative_float, default=5e-4, help="weight decay (default: 5e-4)"
    )
    group.add_argument(
        "--momentum", type=non_negative_float, default=0.9, help="momentum (default: 0.9)"
    )
    group.add_argument(
        "--warmup_epochs",
        type=non_negative_int,
        default=10,
        help="linear warmup epochs (default: 10)",
    )
    group.add_argument(
        "--warmup_lr",
        type=non_negative_float,
        default=0.0,
        help="lr at the start of warmup, before batch scaling (default: 0)",
    )
    group.add_argument(
        "--base_lr",
        type=non_negative_float,
        default=0.03,
        help="peak lr for a batch of 256 (default: %(default)s)",
    )
    group.add_argument(
        "--final_lr",
        type=non_negative_float,
        default=0.0,
        help="lr at the end of the cosine, before batch scaling (default: 0)",
    )
    group.add_argument(
        "--num_epochs",
        type=positive_int,
        default=800,
        help="training epochs (default: %(default)s)",
    )
    group.add_argument(
        "--lr_scaling",
        default="linear",
        choices=["linear", "sqrt", "none"],
        help="lr = base_lr x B/256 (linear), x sqrt(B/256), or as given; SimCLR's square-root "
        "rule 0.075 x sqrt(B) is sqrt with --base_lr 1.2 (default: linear)",
    )
    group.add_argument(
        "--lars_eta",
        type=positive_float,
        default=0.001,
        help="trust coefficient of lars and lars_simclr (default: 0.001)",
    )
    group.add_argument(
        "--larc_trust_coefficient",
        type=positive_float,
        default=0.02,
        help="trust coefficient of larc (default: 0.02, NVIDIA apex; SwAV uses 0.001)",
    )
    group.add_argument(
        "--larc_clip",
        type=bool_flag,
        default=True,
        help="larc clips the adaptive lr at the global lr (true) or scales it (false, SwAV) "
        "(default: true)",
    )

    # Augmentation
    group = parser.add_argument_group("augmentation")
    group.add_argument(
        "--crop_min_scale",
        type=positive_float,
        default=None,
        help="smallest area fraction of a (high-resolution) random resized crop "
        "(default: the method's recipe: 0.08; SupCon, SimSiam, MoCo v2 0.2; SwAV 0.14; DINO 0.4)",
    )
    group.add_argument(
        "--jitter_strength",
        type=non_negative_float,
        default=None,
        help="colour jitter strength s (default: the method's recipe: SimCLR, SupCon, SimSiam, "
        "MoCo v2 0.5 as SimCLR's CIFAR setting, i.e. jitter (0.4, 0.4, 0.4, 0.1); the others 1.0)",
    )
    group.add_argument(
        "--num_crops",
        type=non_negative_int,
        default=None,
        help="low-resolution crops besides the two high-resolution ones (SwAV: 6)",
    )
    group.add_argument(
        "--small_crop_size",
        type=positive_int,
        default=None,
        help="side of the low-resolution crops (default: image_size x 96/224, at least 8)",
    )

    # Method hyper-parameters: declared by each method (methods/hparams.py); None keeps its own
    add_method_flags(parser, METHODS)

    # Monitoring
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
        "--knn_temperature", type=float, default=0.1, help="kNN vote temperature (default: 0.1)"
    )
    return parser


def pretraining_step(forward: nn.Module, device: torch.device, args, augment=None):
    """What one pretraining step computes (engine.Engine does the rest): the views on the
    device (drawn there by `augment`, the BatchViews of --gpu_augment, when the loader gives
    uint8 images), and the method's loss under autocast. `forward` is the module to call (DDP /
    torch.compile wrappers of the method). The image count is over all DDP processes."""

    def step(views, labels):
        if augment is not None:  # the loader gave the batch's uint8 images
            views = augment(views.to(device, non_blocking=True))
        views = [to_device(v, device, args.channels_last) for v in views]
        labels = labels.to(device, non_blocking=True)
        with autocast(args, device):
            loss = forward(views, labels)["loss"]
        return loss, labels.shape[0] * world_size(), {}

    return step


def training_state(args, model, optimizer, epoch: int, step_in_epoch: int, steps: int) -> dict:
    """What `--resume` needs (engine.fit adds the RNG state): `epoch` epochs completed plus
    `step_in_epoch` steps of the next."""
    return {
        "args": vars(args),
        "kind": "pretrain",
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "step": epoch * steps + step_in_epoch,
        "model": model.state_dict(),  # BYOL's target network, SwAV's queue included
        "optimizer": optimizer.state_dict(),
    }


def training_set(args) -> tuple:
    """The pretraining images (--limit, --in_memory) and their transform, the method's views."""
    info = DATASETS[args.dataset_name]
    method = METHODS[args.model_name]
    flags = {key: getattr(args, key) for key in VIEW_FLAGS}
    # the method's own view defaults (official crop scales), then the flags given
    options = {**method.view_options, **{k: v for k, v in flags.items() if v is not None}}
    transform = pretrain_transform(
        method.augmentation, image_size=args.image_size, mean=info.mean, std=info.std, **options
    )
    dataset = build_dataset(args.dataset_name, args.data_dir, True, transform, args.download)
    return in_memory(balanced_subset(dataset, args.limit), args, raw=args.gpu_augment), transform


def check_method_flags(args) -> None:
    """Refuse a method or view flag that the chosen method does not take (`--model_name
    barlowtwins --temperature 0.3`), naming the ones it does take: such flags are None unless
    given, and would otherwise be dropped without a word."""
    name = args.model_name
    recipe = inspect.signature(PRETRAIN_TRANSFORMS[METHODS[name].augmentation]).parameters
    taken = method_options(name) | (set(recipe) & set(VIEW_FLAGS))
    every = set(VIEW_FLAGS).union(*(method_options(m) for m in METHODS))
    given = sorted(k for k in every - taken if getattr(args, k, None) is not None)
    if given:
        listed = ", ".join(f"--{k}" for k in sorted(taken & set(vars(args))))
        raise UserError(
            f"{', '.join('--' + k for k in given)}: not a flag of --model_name {name}, which "
            f"takes {listed}; drop {'it' if len(given) == 1 else 'them'}"
        )


def method_flags_given(args) -> list[str]:
    """The method, view and initialisation flags given (not None): pretraining flags, which an
    evaluation of a trained backbone has no use for."""
    every = set(VIEW_FLAGS).union(*(method_options(m) for m in METHODS), {"zero_init_residual"})
    return sorted(k for k in every if getattr(args, k, None) is not None)


def in_memory(dataset, args, raw: bool = False):
    """The data set held in memory when --in_memory asks for it (utils.data.InMemory); `raw`
    (--gpu_augment) keeps it there as uint8 tensors for BatchViews."""
    if not (args.in_memory or raw):
        return dataset
    start = time.time()
    dataset = InMemory(dataset, raw=raw)
    print(f"in memory: {len(dataset)} images in {time.time() - start:.0f} s")
    return dataset


def knn_monitor(backbone: nn.Module, train_loader, test_loader, device, args) -> tuple:
    """Weighted kNN Acc@1 of the backbone, and the test features with their labels."""
    (acc1,), test_features = knn_evaluate(
        backbone, train_loader, test_loader, device, args.knn_k, args.knn_temperature, ks=(1,)
    )
    return acc1, test_features


def resume_path(args) -> str | None:
    if args.resume is None:
        return None
    if args.resume != "auto":
        return args.resume
    if args.run_name:
        path = os.path.join(args.ckpt_dir, args.run_name, "last.pt")
        return path if os.path.isfile(path) else None
    return find_checkpoint(args.ckpt_dir, args.model_name, args.backbone, args.dataset_name)


def main(args) -> dict:
    check_method_flags(args)
    device = start_process(args)  # under torchrun: one process per GPU
    set_seed(args.seed)  # the same initial weights on every process
    torch.autograd.set_detect_anomaly(args.debug)  # names the op behind a NaN gradient; slow
    if args.debug:
        args.print_freq = 1

    # ============ resume: the run folder comes from the checkpoint ============
    ckpt_path = resume_path(args)
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path else None
    if checkpoint is not None:
        for key in ("model_name", "backbone", "dataset_name"):
            if checkpoint["args"][key] != getattr(args, key):
                raise UserError(
                    f"--resume {ckpt_path}: checkpoint has {key}="
                    f"{checkpoint['args'][key]}, but --{key} is {getattr(args, key)}"
                )
        args.run_name = os.path.basename(os.path.dirname(os.path.abspath(ckpt_path)))
    elif args.resume is not None:
        print("--resume auto: no checkpoint found, starting a new run")
    args.run_name = args.run_name or default_run_name(args)
    # checked now, created once the run can start: a failed start leaves nothing behind
    log_dir, ckpt_dir = check_run_dirs(args, resuming=checkpoint is not None)
    print_args(args)

    # ============ data ============
    info = DATASETS[args.dataset_name]
    dataset, train_transform = training_set(args)
    loader = make_loader(dataset, args, device, train=True)
    augment = BatchViews(train_transform).to(device) if args.gpu_augment else None
    print(
        f"data: {len(dataset)} training images of {args.dataset_name}, "
        f"{len(loader)} steps of {args.batch_size} per epoch, "
        f"{len(train_transform.view_transforms)} views each "
        f"({METHODS[args.model_name].augmentation} recipe"
        f"{', drawn on the ' + device.type + ' by kornia' if augment else ''})"
    )
    if args.knn_freq:
        plain = eval_transform(
            image_size=args.image_size, native_size=info.image_size, mean=info.mean, std=info.std
        )
        knn_train = balanced_subset(
            build_dataset(args.dataset_name, args.data_dir, True, plain), args.limit
        )
        knn_test = build_dataset(args.dataset_name, args.data_dir, False, plain)
        knn_train, knn_test = in_memory(knn_train, args), in_memory(knn_test, args)
        knn_loaders = [make_loader(d, args, device, train=False) for d in (knn_train, knn_test)]

    # ============ model ============
    backbone, feat_dim = build_backbone(args.backbone, args.image_size, args.pretrained)
    try:
        model = build_method(args.model_name, backbone, feat_dim, **vars(args)).to(device)
    except ValueError as err:  # a hyper-parameter the method refuses (its own range checks)
        raise UserError(f"--model_name {args.model_name}: {err}") from None
    sizes = {v.options["image_size"] for v in train_transform.view_transforms}
    check_input_sizes(model.backbone, args.backbone, sizes, args.image_size, device)
    forward = prepare_model(model, args, device)  # DDP, compile: wrappers for the forward only
    print(
        f"model: {args.model_name} on {args.backbone} ({feat_dim}-d features), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )

    # ============ optimizer and per-step schedule ============
    lr_schedule = build_lr_schedule(args, len(loader))
    optimizer = build_optimizer(args, model)
    scaler = grad_scaler(args, device)
    main_rank = is_main_process()
    make_run_dirs(log_dir, ckpt_dir)
    if main_rank:
        save_args(log_dir, args)

    start_epoch, start_step = 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])  # rank 0's; the others draw their own below
        start_epoch, start_step = checkpoint["epoch"], checkpoint.get("step_in_epoch", 0)
        print(f"resumed from {ckpt_path} at epoch {start_epoch}, step {start_step} of the epoch")
    if not main_rank:  # different augmentations per process (when loading in this process)
        set_seed(args.seed + 7919 * rank() + start_epoch * 100_003 + start_step)

    # ============ training ============
    steps_per_epoch = len(loader)
    columns = ["loss", "lr", "images_per_s", "knn_acc1"]
    logger = MetricsLogger(log_dir, columns) if main_rank else NullLogger()
    title = f"{args.model_name} / {args.backbone} / {args.dataset_name}"
    start_time = time.time()
    if args.knn_freq and start_epoch == start_step == 0:  # the untrained network: the baseline
        knn_acc1, _ = knn_monitor(model.backbone, *knn_loaders, device, args)
        logger.log("epoch", 0, 0, knn_acc1=knn_acc1)
        print(f"epoch 0 (random initialisation): knn_acc1 {knn_acc1:.4g}")

    def after_epoch(epoch: int) -> dict:
        if not args.knn_freq or ((epoch + 1) % args.knn_freq and epoch + 1 < args.num_epochs):
            return {}
        knn_acc1, test_features = knn_monitor(model.backbone, *knn_loaders, device, args)
        if args.tsne and epoch + 1 == args.num_epochs and main_rank:
            path = os.path.join(log_dir, "tsne.png")
            plot_tsne(*test_features, path, f"{title}: test features, epoch {epoch + 1}")
        return {"knn_acc1": knn_acc1}

    engine = Engine(
        optimizer, lr_schedule, steps_per_epoch, args.num_epochs, device, scaler,
        TrainingGuard(args.skip_nonfinite), logger, args.print_freq, args.debug,
        model.before_optimizer_step, model.after_optimizer_step,
    )  # fmt: skip
    stats = fit(
        engine,
        loader,
        pretraining_step(forward, device, args, augment),
        lambda epoch, step: training_state(args, model, optimizer, epoch, step, steps_per_epoch),
        ckpt_dir,
        start=(start_epoch, start_step),
        before_epoch=model.set_epoch,
        after_epoch=after_epoch,
        save_freq=args.save_freq,
        on_save=lambda: plot_run(log_dir, title),
    )
    last_path = os.path.join(ckpt_dir, "last.pt")
    close_distributed()
    if not main_rank:
        return {"run_name": args.run_name, "log_dir": log_dir, "ckpt_dir": ckpt_dir, **stats}

    plots = plot_run(log_dir, title)
    wall_time = time.time() - start_time
    summary = {
        "model_name": args.model_name,
        "backbone": args.backbone,
        "dataset_name": args.dataset_name,
        "epochs": args.num_epochs,
        "steps": args.num_epochs * steps_per_epoch,
        "checkpoint": last_path,
        **stats,
        "wall_time_s": round(wall_time, 1),  # of this process: a resumed run counts from resume
    }
    write_json(os.path.join(log_dir, "summary.json"), summary)
    print(f"done in {wall_time:.0f} s; checkpoint {last_path}")
    print("plots: " + " ".join(plots))
    return {"run_name": args.run_name, "log_dir": log_dir, "ckpt_dir": ckpt_dir, **stats}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
