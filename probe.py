"""The classifier of main_linear.py trained on a backbone: the linear probe (on images, or on
features computed once) and fine-tuning, one step function for engine.Engine and the
validation. main_linear.py says what is evaluated; this module how the head is trained."""

from argparse import Namespace
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine import Engine, fit
from networks.heads import LinearClassifier
from networks.vit import MaskableViT
from optimizers import Optimization, build_optimizer, param_groups
from utils.accel import Speed, autocast, device_ids, grad_scaler, to_device
from utils.checkpoint import restore
from utils.data import EpochSampler, ShardSampler
from utils.distributed import gather, is_main_process, world_size
from utils.knn import FeatureLoader, extract_features, topk_accuracy
from utils.logging import MetricsLogger, NullLogger
from utils.misc import settings_of
from utils.plots import plot_run
from utils.run import TrainingGuard, build_lr_schedule, make_loader

PROBE_STD = 0.01  # LinearClassifier's own initialisation (networks/heads.py)


@dataclass(frozen=True)
class HeadTraining:
    """How main_linear.py trains its classifier, resolved once in its main(): the probe (on
    images, or on features computed once) or fine-tuning, the head's initialisation, the
    backbone's lr and parameter groups, batch mixing and label smoothing, and the loop."""

    finetune: bool = False
    precompute_features: bool = False
    probe_bn: bool = False
    head_std: float = PROBE_STD  # main_linear.py: 2e-5 with --finetune
    base_lr: float = 0.0
    backbone_lr: float = 0.0
    exclude_bias_and_norm: bool = False
    decay_tokens: bool = False
    layer_decay: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    num_epochs: int = 1
    seed: int = 0
    num_workers: int = 0
    print_freq: int = 10
    save_freq: int | None = None
    skip_nonfinite: int = 0
    debug: bool = False

    @classmethod
    def of(cls, args: Namespace) -> "HeadTraining":
        return settings_of(cls, args)


def layer_scales(backbone: nn.Module, decay: float) -> dict[str, float]:
    """--layer_decay (MAE's `param_groups_lrd`): each parameter's lr multiplier decay^(d + 1 -
    its layer), the layers of MaskableViT.layer_id (embeddings 0, blocks 1..d, final norm d + 1,
    which the head shares at 1)."""
    top = backbone.depth + 1
    return {n: decay ** (top - backbone.layer_id(n)) for n, _ in backbone.named_parameters()}


def no_weight_decay(backbone: nn.Module) -> set[str]:
    """The backbone's parameters that fine-tuning leaves undecayed besides the 1-D ones, as MAE's
    `param_groups_lrd` (util/lr_decay.py:32) given the model's `no_weight_decay()`
    (main_finetune.py:284; timm's ViT: pos_embed, cls_token, reg_token, dist_token): a timm
    model's own list, and a ViT's class token, position embeddings and register tokens under
    their names here (torchvision's class_token, encoder.pos_embedding; register_tokens)."""
    own = getattr(backbone, "no_weight_decay", None)
    names = set(own()) if callable(own) else set()
    if isinstance(backbone, MaskableViT):
        tokens = {id(backbone.class_token), id(backbone.position_parameter)}
        if backbone.num_registers:
            tokens.add(id(backbone.register_tokens))
        names |= {name for name, p in backbone.named_parameters() if id(p) in tokens}
    return names


def add_backbone_groups(optimizer, backbone: nn.Module, head: HeadTraining, lr: float) -> None:
    """--finetune: the backbone's parameters join the head's optimizer (at scaled lr `lr`) in
    groups of their own whose lr is backbone_lr/base_lr times the head's at every step (their
    `lr_scale`), times the layer's decay with --layer_decay. With biases and norms excluded from
    weight decay, so are the parameters of `no_weight_decay` (a ViT's tokens and positions)."""
    scale = head.backbone_lr / head.base_lr
    exclude = head.exclude_bias_and_norm  # the policy build_optimizer follows too
    undecayed = no_weight_decay(backbone) if exclude and not head.decay_tokens else set()
    layers = layer_scales(backbone, head.layer_decay) if head.layer_decay else None

    def options(name: str, param: nn.Parameter) -> dict:
        # with the 1-D parameters' weight_decay 0.0: one group per layer scale and decay
        layer = {"layer_scale": layers[name]} if layers is not None else {}
        return layer | ({"weight_decay": 0.0} if name in undecayed else {})

    for group in param_groups(backbone, exclude, options):
        group_scale = scale * group.pop("layer_scale", 1.0)
        group.update(name=f"backbone_{group['name']}", lr_scale=group_scale, lr=lr * group_scale)
        optimizer.add_param_group(group)


def batch_mixing(mixup: float, cutmix: float, num_classes: int):
    """--mixup / --cutmix: torchvision.transforms.v2's MixUp and CutMix on a batch, one of the
    two chosen per batch with equal probability when both are on (MAE's fine-tuning: mixup 0.8,
    cutmix 1.0, switch prob 0.5); labels become class probabilities. None when both are off."""
    from torchvision.transforms import v2

    mixes = [
        mix(alpha=alpha, num_classes=num_classes)
        for mix, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix))
        if alpha > 0
    ]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def classifier_step(
    classifier, backbone, device: torch.device, speed: Speed, finetune: bool, mix=None,
    sharded: bool = True, label_smoothing: float = 0.0,
):  # fmt: skip
    """What one step of the probe (or of fine-tuning) computes, for engine.Engine: the
    backbone's features (with gradient only when fine-tuning), the head's cross-entropy (with
    --label_smoothing; on the class probabilities that `mix`, batch_mixing, makes), and its
    correct predictions (train_acc1, percent: of the most likely class of a mixed target).
    The image count is over all processes, whose sums the engine adds up: when each holds its
    share of the batch (`sharded`), or, on cached features, the whole batch, then 1/W each."""
    processes = world_size()
    share = 1.0 if sharded else 1.0 / processes

    def step(images, labels):
        images = to_device(images, device, speed.channels_last)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if mix is not None:
            images, targets = mix(images, labels)  # targets: [N, classes] probabilities
            labels = targets.argmax(dim=1)
        with torch.set_grad_enabled(finetune), autocast(speed, device):
            features = backbone(images)
        with autocast(speed, device):
            logits = classifier(features)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        correct = 100.0 * (logits.argmax(dim=1) == labels).sum()
        count = labels.shape[0] * (processes if sharded else 1)
        return loss, count, {"train_acc1": correct * share}

    return step


@torch.no_grad()
def evaluate(classifier, backbone, loader, device, speed: Speed) -> dict[str, float]:
    """Validation loss, Acc@1 and Acc@5 (percent) over the whole loader (under DDP, over the
    shards of all processes, gathered)."""
    classifier.eval()
    backbone.eval()
    scores, targets = [], []
    for images, labels in loader:
        with autocast(speed, device):
            logits = classifier(backbone(to_device(images, device, speed.channels_last)))
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
    head: HeadTraining, opt: Optimization, speed: Speed, flags: dict, classifier, backbone,
    train_loader, test_loader, device, log_dir, ckpt_dir, title, batch_size: int,
    resumed: dict | None = None, train_images: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """Train the head (and the backbone with --finetune) for --num_epochs, validating every
    epoch; returns the last epoch's Acc@1 and Acc@5. The loaders yield images, or cached
    features with `backbone` an nn.Identity (then every DDP process trains the same head on
    all the features; on images each process takes its share of every batch). `resumed`: a
    checkpoint of this run to continue (--resume); `batch_size` the global batch;
    `train_images` the training set's size, recorded for a resume to check; `flags` the run's
    resolved flags, which its checkpoints hold."""
    lr_schedule, lr = build_lr_schedule(opt, len(train_loader), batch_size)
    optimizer = build_optimizer(opt, classifier, lr)
    if head.finetune:
        add_backbone_groups(optimizer, backbone, head, lr)
        print(f"backbone lr = {head.backbone_lr:g}/{head.base_lr:g} x the head's lr")
    top, body = classifier, backbone
    mix = batch_mixing(head.mixup, head.cutmix, classifier.fc.out_features)  # fine-tuning's
    # images: each process loads its share of every batch; cached features: all of it
    sharded = train_loader.sampler.num_replicas > 1
    if world_size() > 1 and isinstance(train_loader.sampler, EpochSampler):
        top = DistributedDataParallel(classifier, device_ids=device_ids(device))
        if head.finetune:
            body = DistributedDataParallel(backbone, device_ids=device_ids(device))
    start, purge, main_rank = (0, 0), None, is_main_process()
    if resumed is not None:
        modules = {"model": classifier, **({"backbone": backbone} if head.finetune else {})}
        start = restore(resumed, optimizer, **modules)
        purge = resumed["step"] + 1  # TensorBoard: the steps logged again
        print(f"resumed at epoch {start[0]}, step {start[1]} of the epoch")
    columns = ["loss", "lr", "images_per_s", "train_acc1", "val_loss", "val_acc1", "val_acc5"]
    logger = MetricsLogger(log_dir, columns, purge_step=purge) if main_rank else NullLogger()
    steps = len(train_loader)

    def before_epoch(epoch: int) -> None:
        classifier.train()
        backbone.train(head.finetune)  # frozen: eval mode, BatchNorm keeps its statistics

    def state(epoch: int, step_in_epoch: int) -> dict:
        saved = {
            "args": flags,
            "kind": "finetune" if head.finetune else "linear",
            "data": {"train_images": train_images},
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "step": epoch * steps + step_in_epoch,
            "model": classifier.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        return {**saved, "backbone": backbone.state_dict()} if head.finetune else saved

    step = classifier_step(
        top, body, device, speed, head.finetune, mix, sharded, head.label_smoothing
    )
    engine = Engine(
        optimizer, lr_schedule, steps, head.num_epochs, device, grad_scaler(speed, device),
        TrainingGuard(head.skip_nonfinite), logger, 1 if head.debug else head.print_freq,
        head.debug,
    )  # fmt: skip
    stats = fit(
        engine,
        train_loader,
        step,
        state,
        ckpt_dir,
        start=start,
        before_epoch=before_epoch,
        after_epoch=lambda epoch: evaluate(classifier, backbone, test_loader, device, speed),
        save_freq=head.save_freq,
        on_save=lambda: plot_run(log_dir, title),
        partial=resumed.get("epoch_sums") if resumed is not None else None,
    )
    if main_rank:
        print("plots: " + " ".join(plot_run(log_dir, title)))
    if not stats:  # resumed after the last epoch: its results are in the checkpoint's run
        stats = evaluate(classifier, backbone, test_loader, device, speed)
    return stats["val_acc1"], stats["val_acc5"]


def build_classifier(head: HeadTraining, feat_dim: int, num_classes: int) -> LinearClassifier:
    """The head: the probe's (weights of std 0.01, as main_linprobe.py:218), or with --finetune
    MAE's fine-tuning head (main_finetune.py:257: trunc_normal_ of std 2e-5, whose bounds ±2 are
    absolute; the bias zero, as timm's ViT initialises every Linear); --head_std another std
    (0.01: the probe's own draw, also under --finetune)."""
    classifier = LinearClassifier(feat_dim, num_classes, head.probe_bn)
    if head.head_std != PROBE_STD:  # resolved by main_linear.py: 2e-5 with --finetune
        nn.init.trunc_normal_(classifier.fc.weight, std=head.head_std)
        nn.init.zeros_(classifier.fc.bias)
    return classifier


def linear_evaluation(
    head: HeadTraining, opt: Optimization, speed: Speed, flags: dict, what: str, backbone,
    feat_dim, num_classes, train_set, train_loader, test_loader, device, log_dir, ckpt_dir,
    batch_size, resumed,
) -> tuple[float, float, tuple | None]:  # fmt: skip
    """The probe (on images, or on features computed once) or the fine-tuning: Acc@1, Acc@5,
    and the test features when they were computed on the way. `what`: the evaluated backbone
    in the plots' titles; `flags`: the run's resolved flags, which its checkpoints hold."""
    classifier = build_classifier(head, feat_dim, num_classes).to(device)
    head_input, train_batches, test_batches = backbone, train_loader, test_loader
    test_features = None
    if head.precompute_features:
        plain_train = make_loader(train_set, device, False, batch_size, head.seed, head.num_workers)
        train_x, train_y = extract_features(backbone, plain_train, device)
        test_features = extract_features(backbone, test_loader, device)
        print(f"features: {tuple(train_x.shape)} train, {tuple(test_features[0].shape)} test")
        head_input = nn.Identity()
        train_batches = FeatureLoader(
            train_x.to(device), train_y, batch_size, shuffle=True, seed=head.seed
        )
        test_batches = FeatureLoader(
            test_features[0].to(device), test_features[1], batch_size, shuffle=False
        )
    label = "finetune" if head.finetune else "linear"
    label += " (precomputed features)" if head.precompute_features else ""
    acc1, acc5 = train_classifier(
        head, opt, speed, flags, classifier, head_input, train_batches, test_batches, device,
        log_dir, ckpt_dir, f"{label} / {what}", batch_size, resumed, len(train_set),
    )  # fmt: skip
    return acc1, acc5, test_features
