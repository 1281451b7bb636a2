"""A new method touches its own file only: one defined here, outside methods/, with its own
hyper-parameter, views, training recipe, EMA backbone and collapse hint, registered at run time,
pretrains through main.py (its recipe's optimizer, lr, batch and epochs), is refused another
method's flag, is evaluated by main_linear.py (kNN and the linear probe, of its trained and of its
EMA backbone), and loads through pretrained.load_backbone; the help texts that list methods name
it. Nothing outside this file knows it."""

import json
import os
from typing import Annotated

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import main
import main_linear
from methods import METHODS, Method, register
from methods.hparams import Flag
from methods.momentum import ema_update, frozen_copy
from methods.recipe import Recipe
from networks.heads import build_mlp
from pretrained import load_backbone
from transformations import MultiView, View, simclr_jitter
from utils.misc import UserError, unit_float

pytestmark = [pytest.mark.full, pytest.mark.usefixtures("small_test_set")]


def toy_views(*, image_size: int, mean, std, crop_min_scale: float = 0.5) -> MultiView:
    """Two views alike: a crop of crop_min_scale-100 %, a flip, mild colour jitter, no blur."""
    view = View(
        image_size=image_size, mean=mean, std=std, crop_scale=(crop_min_scale, 1.0),
        jitter=simclr_jitter(0.5), blur_prob=0.0,
    )  # fmt: skip
    return MultiView([view, view])


class Toy(Method):
    """An online network against an EMA copy of itself (BYOL without its predictor): the cosine
    distance between the online projection of one view and the target's of the other."""

    augmentation = toy_views
    momentum_backbone = "target_backbone"
    collapse_hint = "a target that follows the online network too closely (--toy_momentum)"
    loss_summary = "cosine distance to an EMA target"
    recipes = (
        Recipe(
            source="tests/test_new_method.py, a toy's recipe",
            images="small",
            optimizer="sgd",
            momentum=0.9,
            base_lr=0.2,
            batch_size=50,
            num_epochs=2,
            weight_decay=1e-4,
            exclude_bias_and_norm=True,
            warmup_epochs=0,
            sources={
                "optimizer, momentum, base_lr, lr_scaling": "test_new_method.py (sgd 0.2)",
                "batch_size, num_epochs, warmup_epochs, warmup_lr, final_lr": "here",
                "weight_decay, exclude_bias_and_norm, final_weight_decay": "here",
            },
        ),  # fmt: skip
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        toy_dim: Annotated[int, Flag("the toy's projection size")] = 32,
        toy_momentum: Annotated[float, Flag("the toy's EMA momentum", unit_float)] = 0.9,
    ) -> None:
        super().__init__()
        self.backbone, self.momentum = backbone, toy_momentum
        self.projector = build_mlp(2, feat_dim, 64, toy_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_backbone(v)) for v in views[:2])
        loss = 2 - F.cosine_similarity(z1, t2).mean() - F.cosine_similarity(z2, t1).mean()
        return {"loss": loss, "z1": z1, "z2": z2}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)


@pytest.fixture
def toy():
    """`toy` in the registry for one test (as `@register("toy")` on a class in methods/)."""
    register("toy")(Toy)
    try:
        yield
    finally:
        METHODS.pop("toy")


FLAGS = ["--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
         "--device", "cpu", "--num_workers", "0", "--limit", "200", "--batch_size", "50",
         "--model_name", "toy"]  # fmt: skip


def test_a_method_defined_outside_methods_trains_and_is_evaluated(toy, run_dirs, capsys):
    parser = main.get_args_parser()
    with pytest.raises(UserError, match="not a flag of --model_name toy, which takes"):
        main.main(parser.parse_args([*FLAGS, *run_dirs, "--temperature", "0.3"]))
    argv = [*FLAGS, *run_dirs, "--run_name", "toy", "--print_freq", "1", "--knn_freq", "1"]
    out = main.main(parser.parse_args([*argv, "--toy_dim", "16", "--crop_min_scale", "0.6"]))
    assert "views: toy_views recipe" in capsys.readouterr().out
    with open(os.path.join(out["log_dir"], "config.json")) as f:
        optimization = json.load(f)["optimization"]  # the unset flags: its recipe's
    assert optimization["optimizer"]["source"] == "method recipe: test_new_method.py (sgd 0.2)"
    assert (
        optimization["num_epochs"]["value"] == 2 and optimization["lr"]["value"] == 0.2 * 50 / 256
    )
    decay = {g["name"]: g["weight_decay"] for g in optimization["param_groups"]["value"]}
    assert decay == {"params": 1e-4, "weight_decay=0.0": 0.0}  # biases and norms excluded
    ckpt = os.path.join(out["ckpt_dir"], "last.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["model"]["projector.3.weight"].shape[0] == 16  # its flag reached it
    assert state["args"]["crop_min_scale"] == 0.6
    assert 0 < out["knn_acc1"] <= 100 and out["loss"] < 2

    # evaluated as the built-in methods are: kNN and the linear probe, of either backbone
    probe = main_linear.get_args_parser()
    flags = [*FLAGS, *run_dirs, "--ckpt", ckpt]
    knn = main_linear.main(probe.parse_args([*flags, "--eval", "knn", "--run_name", "knn"]))
    ema = main_linear.main(probe.parse_args([*flags, "--eval", "knn", "--momentum_backbone",
                                             "--run_name", "knn_ema"]))  # fmt: skip
    assert knn["momentum_backbone"] is False and ema["momentum_backbone"] is True
    assert knn["acc1"] != ema["acc1"] or knn["acc5"] != ema["acc5"]  # two backbones
    linear = main_linear.main(probe.parse_args([*flags, "--num_epochs", "1", "--run_name", "lin"]))
    assert 0 <= linear["acc1"] <= linear["acc5"] <= 100

    backbone, info = load_backbone(ckpt, momentum=True)
    target = {k[len("target_backbone.") :]: v for k, v in state["model"].items()
              if k.startswith("target_backbone.")}  # fmt: skip
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in target.items())
    assert info.model_name == "toy" and info.momentum_backbone

    # the help texts that list methods are made from their declarations
    flat = " ".join(probe.format_help().split())
    assert "methods that keep one: byol, dino, dinov2, ijepa, mocov2, mocov3, toy" in flat
    assert "0.5: toy" in " ".join(main.get_args_parser().format_help().split())
