"""Self-supervised pretraining of a backbone with one SSL method.

    python main.py --model_name=simclr --backbone=resnet18 --dataset_name=cifar10 ...

Writes <logs_dir>/<run_name>/{args.json, metrics.csv, loss.png, lr.png} and
<ckpt_dir>/<run_name>/{last.pt, epoch_NNNN.pt}; `main_linear.py` then evaluates the backbone.
"""

import json
import os
import time
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import Subset

from config import (
    differences,
    flag_sources,
    pretraining_record,
    run_or_print,
    summary_lines,
    with_recipe,
    write_record,
)
from engine import Engine, fit
from evaluation import Evaluation, recorded_evaluation, resolve_evaluation
from flags import VIEW_FLAGS, add_pretraining_flags, add_shared_flags, check_method_flags
from methods import METHODS, build_method
from monitors import FeatureTap, Monitoring, Monitors, OnlineProbe, epoch_monitor
from networks import build_backbone, check_input_sizes
from networks.vit import set_heads, set_pool, set_vit_layerscale, set_vit_registers
from optimizers import Optimization, build_optimizer
from pretrained import load_weights, read_backbone
from transformations import BatchViews, pretrain_transform
from utils.accel import Speed, autocast, grad_scaler, prepare_model, to_device
from utils.checkpoint import (
    RESUME_ENTRIES,
    RESUME_FREE,
    check_entries,
    check_same_data,
    check_unchanged,
    kind_of,
    load_checkpoint,
    restore,
    restore_epoch_file,
)
from utils.data import (
    DATASETS,
    UNLABELLED,
    balanced_subset,
    build_dataset,
    in_memory,
    num_classes_of,
)
from utils.distributed import (
    close_distributed,
    is_main_process,
    rank,
    world_size,
)
from utils.logging import MetricsLogger, NullLogger, read_metrics, write_json
from utils.misc import (
    ArgumentParser,
    UserError,
    git_sha,
    run_cli,
    set_seed,
)
from utils.plots import plot_reconstructions, plot_run
from utils.run import (
    Run,
    TrainingGuard,
    build_lr_schedule,
    build_wd_schedule,
    default_run_name,
    fit_batch_size,
    make_loader,
    make_run_dirs,
    resume_path,
    run_folders,
    start_process,
    with_values,
)
from utils.runfolder import releases_locks

# the columns of a pretraining's metrics.csv (monitors.py says what each is)
METRICS = ["loss", "lr", "images_per_s", "data_wait", "knn_acc1", "online_train_acc1"]
METRICS += ["online_acc1", "online_acc5", "collapse_std", "alignment", "uniformity", "rankme"]


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser("Self-supervised pretraining", add_help=add_help)
    add_shared_flags(parser, recipe=True)  # training defaults: the method's recipe
    add_pretraining_flags(parser)
    return parser


def pretraining_step(
    forward: nn.Module, device: torch.device, speed: Speed, augment=None, monitors=None,
    backbone=None,
):  # fmt: skip
    """What one pretraining step computes (engine.Engine does the rest): the views on the
    device (drawn there by `augment`, the BatchViews of --gpu_augment, when the loader gives
    uint8 images), the method's loss under autocast, and the monitors' figures (the online
    probe's update, the collapse monitors: monitors.Monitors). `forward` is the module to call
    (DDP / torch.compile wrappers of the method; `backbone` the method's, which the monitors
    read). The image count is over all DDP processes, the monitors' sums this process's (the
    engine sums them over the processes where it logs)."""

    def step(views, labels):
        if augment is not None:  # the loader gave the batch's uint8 images
            views = augment(views.to(device, non_blocking=True))
        views = [to_device(v, device, speed.channels_last) for v in views]
        labels = labels.to(device, non_blocking=True)
        tap = monitors.tap if monitors is not None else None
        with autocast(speed, device), tap or nullcontext():
            out = forward(views, labels)
        sums = monitors.step(out, views, labels, backbone) if monitors is not None else {}
        return out["loss"], labels.shape[0] * world_size(), sums

    return step


def training_state(
    args, model, optimizer, probe, epoch: int, step_in_epoch: int, steps: int, images: int
):
    """What `--resume` needs (engine.fit adds the RNG state): `epoch` epochs completed plus
    `step_in_epoch` steps of the next; the online probe's head and optimizer; the number of
    training images, which a resumed run must find again."""
    return {
        **({"online_probe": probe.state()} if probe is not None else {}),
        "args": vars(args),
        "data": {"train_images": images},
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
    dataset = balanced_subset(dataset, args.limit)
    wanted, side = args.in_memory or args.gpu_augment, round(args.image_size * 256 / 224)
    # --gpu_augment squares images of several sizes first, resampled as the views' crops (the
    # views' own setting: a flag, the method's view_options or its recipe's default)
    mode = transform.view_transforms[0].options["interpolation"]
    dataset = in_memory(dataset, wanted, raw=args.gpu_augment, side=side, interpolation=mode)
    return dataset, transform


def resumed_checkpoint(args, run: Run) -> tuple[str | None, dict | None]:
    """--resume: the checkpoint to continue and its path, checked against the flags: a
    pretraining checkpoint (not main_linear.py's) of the same method, backbone and data set,
    with everything resuming reads."""
    ckpt_path = resume_path(run)
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path else None
    if checkpoint is not None:
        if checkpoint.get("kind") != "pretrain":
            raise UserError(
                f"--resume {ckpt_path} is {kind_of(checkpoint)} "
                "checkpoint (main_linear.py), not a pretraining one: pass the last.pt of a "
                "main.py run"
            )
        check_entries(checkpoint, ckpt_path, (*RESUME_ENTRIES, "config"))
        for key in ("model_name", "backbone", "dataset_name"):
            if checkpoint["args"][key] != getattr(args, key):
                raise UserError(
                    f"--resume {ckpt_path}: checkpoint has {key}="
                    f"{checkpoint['args'][key]}, but --{key} is {getattr(args, key)}"
                )
    elif args.resume is not None:
        where = f"run {args.run_name}" if args.run_name else "a matching run"
        print(f"--resume auto: no checkpoint of {where} under {args.ckpt_dir}; a new run starts")
    return ckpt_path, checkpoint


def online_probe_bn(args, checkpoint: dict | None) -> bool:
    """--online_probe_bn: as given; unset, on, but a resumed run keeps its own probe."""
    if args.online_probe_bn is not None:
        return args.online_probe_bn
    return checkpoint["args"]["online_probe_bn"] if checkpoint else True


def check_data(args) -> tuple[bool, bool]:
    """Whether a labelled evaluation set exists (the data set's test split, or an unlabelled
    folder's --eval_data_dir: said in one line when there is none) and whether the online probe
    runs (on the pretraining images' labels; --online_probe). A method that trains on labels
    (SupCon) cannot run on unlabelled images."""
    if args.dataset_name not in UNLABELLED:
        if args.eval_data_dir is not None:
            raise UserError("--eval_data_dir is for --dataset_name folder: drop it")
        return True, args.online_probe is not False
    if METHODS[args.model_name].needs_labels:
        raise UserError(
            f"--model_name {args.model_name} trains on labels, and --dataset_name "
            f"{args.dataset_name} has none: choose a self-supervised method"
        )
    if args.online_probe:
        raise UserError(
            f"--online_probe learns the labels of the pretraining images, and --dataset_name "
            f"{args.dataset_name} has none: drop it"
        )
    if args.eval_data_dir is None:
        print(
            f"note: --dataset_name {args.dataset_name} has no labels, so the kNN monitor is off: "
            "pass --eval_data_dir with train/ and test/ class folders (and --knn_freq N) for one"
        )
        return False, False
    return True, False


def monitor_data(args, device, batch_size: int, labelled: bool, evaluation: Evaluation) -> tuple:
    """The monitors' loaders, un-augmented: the kNN memory bank (the --limit training images;
    None without --knn_freq), the test set (None without labels), and the first --rankme_images
    of the test set (of the training images, for an unlabelled folder): RankMe's fixed set. An
    unlabelled folder's test set is --eval_data_dir's (with the folder's normalisation)."""
    name, root = args.dataset_name, args.data_dir
    if name in UNLABELLED and labelled:
        name, root = "imagefolder", args.eval_data_dir
    plain = evaluation.transform(args.dataset_name, args.image_size)
    loader = lambda d: make_loader(  # noqa: E731
        in_memory(d, args.in_memory), device, False, batch_size, args.seed, args.num_workers
    )
    if not labelled:
        images = build_dataset(name, root, True, plain)
        return None, None, loader(Subset(images, range(min(args.rankme_images, len(images)))))
    test = build_dataset(name, root, False, plain)
    bank = None
    if args.knn_freq:
        bank = loader(balanced_subset(build_dataset(name, root, True, plain), args.limit))
    return bank, loader(test), loader(Subset(test, range(min(args.rankme_images, len(test)))))


def build_monitors(args, model, feat_dim: int, dataset, device, probe_on: bool) -> Monitors:
    """The monitors of the step (monitors.py): the online probe (with labels), the collapse
    figures, from the backbone's outputs (a forward hook; with --compile an extra pass)."""
    probe = None
    if probe_on:
        classes = num_classes_of(dataset)
        probe = OnlineProbe(
            feat_dim, classes, args.online_probe_lr, args.seed, args.online_probe_bn
        ).to(device)
    tap = FeatureTap(model.backbone) if not args.compile else None
    return Monitors(tap, probe, args.model_name)


def build_model(
    args, device, train_transform, speed: Speed, pool: str | None
) -> tuple[nn.Module, nn.Module, int]:
    """The method on its backbone, checked against the views' sizes with one forward pass, the
    module to call for the forward pass (DDP / torch.compile wrappers), and the feature size."""
    backbone, feat_dim = build_backbone(args.backbone, args.image_size, args.pretrained)
    set_heads(backbone, args.vit_heads, args.backbone)
    set_vit_registers(backbone, args.vit_registers, args.backbone)  # before EMA copies
    set_vit_layerscale(backbone, args.vit_layerscale, args.backbone)
    if args.init_backbone:  # before the method copies it (EMA targets), not zero-initialised
        # the online backbone
        weights, info = read_backbone(args.init_backbone, False)
        if info.backbone != args.backbone:
            raise UserError(
                f"--init_backbone {args.init_backbone} holds a {info.backbone} backbone, but "
                f"--backbone is {args.backbone}: pass --backbone {info.backbone}"
            )
        load_weights(backbone, weights, args.init_backbone, args.backbone)
        print(f"backbone: from {args.init_backbone} ({info.model_name}, epoch {info.epoch})")
    started = args.pretrained or args.init_backbone is not None
    try:
        flags = {**vars(args), "pretrained": started}
        model = build_method(args.model_name, backbone, feat_dim, **flags).to(device)
    except ValueError as err:  # a hyper-parameter the method refuses (its own range checks)
        raise UserError(f"--model_name {args.model_name}: {err}") from None
    set_pool(model.backbone, pool, args.backbone)
    sizes = {v.options["image_size"] for v in train_transform.view_transforms}
    check_input_sizes(model.backbone, args.backbone, sizes, args.image_size, device)
    forward = prepare_model(model, speed, device)  # DDP, compile: wrappers for the forward only
    print(
        f"model: {args.model_name} on {args.backbone} ({feat_dim}-d features), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )
    return model, forward, feat_dim


@torch.no_grad()
def reconstruction_plot(
    args, model: nn.Module, device, log_dir: str, title: str, evaluation: Evaluation
) -> str:
    """reconstructions.png: 8 test images (training images of an unlabelled folder), masked as
    in training, and the method's reconstruction of them."""
    info = DATASETS[args.dataset_name]
    plain = evaluation.transform(args.dataset_name, args.image_size)
    split = args.dataset_name not in UNLABELLED  # the test split, where there is one
    images = build_dataset(args.dataset_name, args.data_dir, not split, plain)
    batch = torch.stack([images[i][0] for i in range(min(8, len(images)))]).to(device)
    model.eval()
    masked, reconstructed = model.reconstruct(batch)
    rows = {"original": batch, "masked": masked, "reconstructed": reconstructed}
    path = os.path.join(log_dir, "reconstructions.png")
    return plot_reconstructions(rows, info.mean, info.std, path, f"{title}: test images")


def log_baseline(values: dict, logger) -> None:
    """The monitors of the untrained network (kNN, RankMe): epoch 0 of metrics.csv."""
    if values:
        logger.log("epoch", 0, 0, **values)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"epoch 0 (random initialisation): {shown}")


def draw(args, model: nn.Module, device, log_dir: str, title: str, evaluation: Evaluation) -> None:
    """The run's plots (utils.plots), and MAE's reconstructions: users judge it by looking."""
    plots = plot_run(log_dir, title)
    if hasattr(model, "reconstruct"):
        plots.append(reconstruction_plot(args, model, device, log_dir, title, evaluation))
    print("plots: " + " ".join(plots))


def write_summary(args, log_dir: str, last_path: str, stats: dict, steps: int, seconds: float):
    """summary.json: what ran, the last epoch's figures and the wall time of this process (a
    resumed run counts from its resume)."""
    summary = {
        "model_name": args.model_name,
        "backbone": args.backbone,
        "dataset_name": args.dataset_name,
        "epochs": args.num_epochs,
        "steps": args.num_epochs * steps,
        "checkpoint": last_path,
        **stats,
        "wall_time_s": round(seconds, 1),
    }
    write_json(os.path.join(log_dir, "summary.json"), summary)
    print(f"done in {seconds:.0f} s; checkpoint {last_path}")


def finished(args, checkpoint: dict, ckpt_path: str, log_dir: str, ckpt_dir: str, fork: bool):
    """--resume of a run that has trained all its epochs: nothing to train and nothing rewritten;
    in its own folder, the epoch_NNNN.pt and summary.json that a run stopped while writing them
    lacks are completed (the summary from metrics.csv's last epoch row)."""
    print(f"--resume {ckpt_path}: the run has trained all its {args.num_epochs} epochs already")
    summary_path = os.path.join(log_dir, "summary.json")
    if fork or not is_main_process():
        return {"run_name": args.run_name, "log_dir": log_dir, "ckpt_dir": ckpt_dir}
    make_run_dirs(log_dir, ckpt_dir, resume_step=checkpoint["step"], metrics_from=log_dir)
    restore_epoch_file(ckpt_path, ckpt_dir, checkpoint["epoch"], args.save_freq, args.num_epochs)
    if not os.path.isfile(summary_path):
        rows = [r for r in read_metrics(log_dir) if r["kind"] == "epoch"]
        stats = {k: float(v) for k, v in (rows[-1] if rows else {}).items() if k in METRICS and v}
        steps = checkpoint["step"] // max(checkpoint["epoch"], 1)
        write_summary(args, log_dir, os.path.join(ckpt_dir, "last.pt"), stats, steps, 0.0)
    with open(summary_path) as f:
        return {"run_name": args.run_name, "log_dir": log_dir, "ckpt_dir": ckpt_dir, **json.load(f)}


@releases_locks
def main(args) -> dict:
    """Pretrain (train); with --print_config, print the run's resolved configuration and return
    it, writing nothing (config.run_or_print)."""
    return run_or_print(train, args)


def train(args) -> dict:
    sources = flag_sources(get_args_parser(), args)  # where each flag's value came from
    check_method_flags(args)
    labelled, probe_on = check_data(args)
    run, speed = Run.of(args), Speed.of(args)  # where the run lives, how fast it runs
    device = start_process(run, speed)  # under torchrun: one process per GPU
    set_seed(args.seed)  # the same initial weights on every process
    torch.autograd.set_detect_anomaly(args.debug)  # names the op behind a NaN gradient; slow

    # ============ resume: the run folder comes from the checkpoint ============
    ckpt_path, checkpoint = resumed_checkpoint(args, run)
    # the training settings left unset: the checkpoint's, else the method's recipe
    args, recipe = with_recipe(args, sources, checkpoint)
    print(f"recipe: {args.model_name}'s for {recipe.regime()}, after {recipe.source}")
    # the typed parts the modules below are built from: the optimizer and its schedules, the
    # monitors, and how the monitors evaluate the backbone (recorded for main_linear.py,
    # load_backbone and export.py)
    opt, watch = Optimization.of(args), Monitoring.of(args)
    evaluation = resolve_evaluation(
        args.model_name, {"interpolation": args.eval_interpolation, "pool": args.pool},
        recorded_evaluation(checkpoint) if checkpoint is not None else None,
    )  # fmt: skip
    # checked (and locked) now, created once the run can start: a failed start leaves nothing
    run_name, log_dir, ckpt_dir, metrics_from = run_folders(
        run, ckpt_path, checkpoint, run.run_name or default_run_name(run)
    )
    # what args.json and the checkpoints record
    args = with_values(args, run_name=run_name, online_probe_bn=online_probe_bn(args, checkpoint))
    if checkpoint is not None:
        check_unchanged(checkpoint["args"], vars(args), ckpt_path)
        if checkpoint["epoch"] >= args.num_epochs:
            if args.print_config:  # nothing to train: the run's own record
                return {"config": checkpoint["config"]}
            fork = metrics_from != log_dir
            done = finished(args, checkpoint, ckpt_path, log_dir, ckpt_dir, fork)
            close_distributed()
            return done

    # ============ data ============
    dataset, train_transform = training_set(args)
    if checkpoint is not None:
        check_same_data(checkpoint, len(dataset), ckpt_path, args.dataset_name, args.data_dir)
    batch_size = fit_batch_size(args.batch_size, len(dataset), args.limit, 2)  # the global batch
    loader = make_loader(dataset, device, True, batch_size, args.seed, args.num_workers)
    augment = BatchViews(train_transform).to(device) if args.gpu_augment else None
    if augment is not None:
        print(f"views: drawn on the {device.type} by kornia (--gpu_augment)")
    monitor_loaders = monitor_data(args, device, batch_size, labelled, evaluation)

    # ============ model, and the monitors that watch it ============
    model, forward, feat_dim = build_model(args, device, train_transform, speed, evaluation.pool)
    monitors = build_monitors(args, model, feat_dim, dataset, device, probe_on)
    probe = monitors.probe

    # ============ optimizer and per-step schedule ============
    lr_schedule, lr = build_lr_schedule(opt, len(loader), batch_size)
    optimizer = build_optimizer(opt, model, lr)

    # ============ the record of what runs: config.json, the checkpoints ============
    record = pretraining_record(
        args, sources, model=model, feat_dim=feat_dim, transform=train_transform,
        train_images=len(dataset), batch_size=batch_size, steps_per_epoch=len(loader),
        workers=loader.num_workers, lr=lr, warmup_epochs=opt.warmup_used, optimizer=optimizer,
        probe_on=probe_on, git_sha=git_sha(), world_size=world_size(), recipe=recipe,
        evaluation=evaluation,
    )  # fmt: skip
    if checkpoint is not None:  # the resolved values, defaults too
        changed = differences(checkpoint["config"], record, RESUME_FREE, set(sources["defaults"]))
        if changed:
            raise UserError(
                f"--resume {ckpt_path}: the run was trained with other settings: "
                f"{'; '.join(changed)}. Give the run's values (its config.json)"
            )
    if args.print_config:
        return {"config": record}
    print("\n".join(summary_lines(record, log_dir, ckpt_dir)))
    main_rank = is_main_process()
    resume_step = checkpoint["step"] if checkpoint is not None else None
    make_run_dirs(log_dir, ckpt_dir, resume_step, metrics_from)
    if main_rank:
        write_record(log_dir, record)

    start_epoch, start_step = 0, 0
    if checkpoint is not None:
        # each process its own random state (a checkpoint of another number of processes: rank
        # 0's, the other ranks seeded below)
        start_epoch, start_step = restore(checkpoint, optimizer, model=model)
        if probe is not None and "online_probe" in checkpoint:
            probe.restore(checkpoint["online_probe"])
        print(f"resumed from {ckpt_path} at epoch {start_epoch}, step {start_step} of the epoch")
        if main_rank and start_step == 0 and start_epoch > 0:  # killed writing epoch_NNNN.pt?
            restore_epoch_file(ckpt_path, ckpt_dir, start_epoch, args.save_freq, args.num_epochs)
    per_rank = checkpoint is not None and len(checkpoint.get("rng_per_rank", [])) == world_size()
    if not main_rank and not per_rank:  # different augmentations per process
        set_seed(args.seed + 7919 * rank() + start_epoch * 100_003 + start_step)

    # ============ training ============
    steps_per_epoch = len(loader)
    purge = resume_step + 1 if resume_step is not None else None  # TensorBoard: logged again
    logger = MetricsLogger(log_dir, METRICS, purge_step=purge) if main_rank else NullLogger()
    title = f"{args.model_name} / {args.backbone} / {args.dataset_name}"
    start_time = time.time()
    tsne_path = os.path.join(log_dir, "tsne.png") if main_rank else None
    after_epoch = epoch_monitor(
        watch, model.backbone, monitor_loaders, probe, device, tsne_path, title
    )
    if start_epoch == start_step == 0:
        log_baseline(after_epoch(-1), logger)

    engine = Engine(
        optimizer, lr_schedule, steps_per_epoch, args.num_epochs, device,
        grad_scaler(speed, device), TrainingGuard(args.skip_nonfinite), logger,
        1 if args.debug else args.print_freq, args.debug,
        model.before_optimizer_step, model.after_optimizer_step,
        build_wd_schedule(opt, steps_per_epoch), monitors.check,
        lambda step: model.set_step(step, steps_per_epoch),
    )  # fmt: skip
    stats = fit(
        engine,
        loader,
        pretraining_step(forward, device, speed, augment, monitors, model.backbone),
        lambda epoch, step: {
            **training_state(
                args, model, optimizer, probe, epoch, step, steps_per_epoch, len(dataset)
            ),
            "config": record,
        },
        ckpt_dir,
        start=(start_epoch, start_step),
        before_epoch=model.set_epoch,
        after_epoch=after_epoch,
        save_freq=args.save_freq,
        on_save=lambda: plot_run(log_dir, title),
        partial=checkpoint.get("epoch_sums") if checkpoint is not None else None,
    )
    last_path = os.path.join(ckpt_dir, "last.pt")
    close_distributed()
    if main_rank:
        write_summary(args, log_dir, last_path, stats, steps_per_epoch, time.time() - start_time)
        draw(args, model, device, log_dir, title, evaluation)
    return {"run_name": args.run_name, "log_dir": log_dir, "ckpt_dir": ckpt_dir, **stats}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
