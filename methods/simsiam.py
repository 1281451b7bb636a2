"""SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021
(https://arxiv.org/abs/2011.10566).

Loss: with p = h(f(x)) the prediction and z = f(x) the projection of each view,

    L = ½ D(p1, stopgrad(z2)) + ½ D(p2, stopgrad(z1)),   D(p, z) = -cos(p, z),

so the minimum is -1. No negatives and no momentum encoder: the stop-gradient and the predictor
prevent collapse.

Architecture as the official code (facebookresearch/simsiam simsiam/builder.py,
main_simsiam.py): the projector is 3 layers d-d-2048 with d the backbone's feature size
(`prev_dim`: 2048 for ResNet-50, 512 for ResNet-18), BatchNorm on every layer, the output's
without affine parameters; the predictor 2048 -> 512 -> 2048, BatchNorm only on its hidden layer;
each view goes through backbone, projector and predictor in its own call (`z1 = encoder(x1)`,
`z2 = encoder(x2)`: BatchNorm statistics per view; `--concat_views` gives one pass of 2N); the
last BatchNorm of each residual block starts at zero (`zero_init_residual=True`).

Default recipe (paper): SGD momentum 0.9, lr 0.05 x B/256 (0.03 on CIFAR), weight decay 1e-4
(5e-4 on CIFAR), cosine, the predictor's lr fixed at the peak (`fix_pred_lr`, in the official
README's command and the paper's section 4.4), crops of 20-100 % of the image.
"""

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import CONCAT_VIEWS, PRED_HIDDEN_DIM, PROJ_DIM, PROJ_WIDTH_OF_FEATURES, Flag
from methods.recipe import Recipe
from networks.heads import build_mlp


def negative_cosine_similarity(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch.

    Args:
        p: [N, D] predictions.
        z: [N, D] projections of the other view; no gradient flows into them.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


FIX_PRED_LR = Flag(
    "keep the predictor's lr at the peak lr, no decay, as the official README's command"
)


@register("simsiam")
class SimSiam(Method):
    """Backbone + projector (BN on the output) + predictor bottleneck; symmetric loss."""

    loss_summary = "`negative_cosine_similarity`"
    view_options = {"crop_min_scale": 0.2}  # official: RandomResizedCrop(224, scale=(0.2, 1.))
    collapse_hint = (
        "a missing stop-gradient or predictor, or too high a weight decay or predictor lr"
    )
    zero_init_residual = True
    recipes = (
        Recipe(
            source="Chen & He, arXiv 2011.10566, the paper's CIFAR-10 setting (the official "
            "code has none)",
            images="small",
            optimizer="sgd",
            momentum=0.9,
            exclude_bias_and_norm=False,
            base_lr=0.03,
            lr_scaling="linear",
            batch_size=512,
            num_epochs=800,
            weight_decay=5e-4,
            warmup_epochs=10,
            sources={
                "optimizer, momentum, base_lr, lr_scaling, batch_size, weight_decay": "paper, "
                "appendix 'CIFAR experiments' (SGD, base lr 0.03 x B/256, batch 512, wd 5e-4, "
                "momentum 0.9)",
                "num_epochs, final_lr": "paper, the CIFAR appendix (800 epochs, cosine decay to 0)",
                "warmup_epochs, warmup_lr": "the toolkit's documented default for its default "
                "method (10 epochs from 0; the paper states none)",
                "exclude_bias_and_norm, final_weight_decay": "main_simsiam.py:193-201 (SGD over "
                "all parameters, constant weight decay), as on ImageNet",
            },
        ),
        Recipe(
            source="facebookresearch/simsiam a7bc177, README's ImageNet command (ResNet-50, "
            "batch 512, 100 epochs, --fix-pred-lr)",
            images="large",
            optimizer="sgd",
            momentum=0.9,
            exclude_bias_and_norm=False,
            base_lr=0.05,
            lr_scaling="linear",
            batch_size=512,
            num_epochs=100,
            weight_decay=1e-4,
            warmup_epochs=0,
            warmup_lr=0.0,
            final_lr=0.0,
            sources={
                "num_epochs, batch_size": "main_simsiam.py:47-55 (--epochs 100, --batch-size 512); "
                "README.md:27-37",
                "base_lr, lr_scaling": "main_simsiam.py:56-57,157 (--lr 0.05; init_lr = lr x "
                "batch_size / 256)",
                "optimizer, momentum, exclude_bias_and_norm": "main_simsiam.py:193-201 (SGD over "
                "all parameters, momentum 0.9, weight_decay)",
                "weight_decay, final_weight_decay": "main_simsiam.py:60-62 (--wd 1e-4, constant)",
                "warmup_epochs, warmup_lr, final_lr": "main_simsiam.py:359-366 (init_lr x 0.5 x "
                "(1 + cos(pi epoch / epochs)): no warmup, to 0)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int | None, PROJ_WIDTH_OF_FEATURES] = None,
        proj_dim: Annotated[int, PROJ_DIM] = 2048,
        pred_hidden_dim: Annotated[int, PRED_HIDDEN_DIM] = 512,
        fix_pred_lr: Annotated[bool, FIX_PRED_LR] = True,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = proj_hidden_dim or feat_dim  # official: prev_dim, the backbone's width
        self.proj_hidden_dim = hidden  # resolved, for the run's record
        self.projector = build_mlp(3, feat_dim, hidden, proj_dim, last_bn=True)
        self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim)
        self.fix_pred_lr = fix_pred_lr
        self.concat_views = concat_views

    def param_group(self, name: str, param: nn.Parameter) -> dict:
        return {"fix_lr": True} if self.fix_pred_lr and name.startswith("predictor.") else {}

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        p1, p2 = self.per_view(self.predictor, (z1, z2))
        loss = 0.5 * (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1))
        return {"loss": loss, "z1": z1, "z2": z2}
