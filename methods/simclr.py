"""SimCLR: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020 (https://arxiv.org/abs/2002.05709).

Loss (NT-Xent): with z the 2N L2-normalised projections of N images under two views and
sim(a, b) = a.b / T, the loss of anchor i whose positive is j(i) is

    l_i = -log( exp(sim(z_i, z_j(i))) / sum_{k != i} exp(sim(z_i, z_k)) ),

averaged over all 2N anchors.

The method's loss is twice that mean (`nt_xent_scale` 2): the official objective.py sums the
two directions, `tf.reduce_mean(loss_a + loss_b)` over the N images. The factor matters for
SGD and LARS, where it weighs the loss against the weight decay; Adam ignores it.

Architecture as the official code (google-research/simclr model_util.py, resnet.py): the
projection head is Linear(d, d)-BN-ReLU-Linear(d, 128)-BN with d the backbone's feature size
(2048 for ResNet-50, 512 for ResNet-18), no biases (BatchNorm follows every Linear), weights
drawn from N(0, 0.01) (`linear_layer`'s kernel_initializer; `--head_init pytorch` gives
nn.Linear's own, which the short CPU recipe keeps), and a last BatchNorm with a scale but no
shift (TF's center=False); the last BatchNorm of each residual
block starts at zero; both views go through the network as one batch of 2N, so BatchNorm
statistics cover both (as official, where the views are concatenated along the batch).

Default recipe (paper, CIFAR-10): ResNet-50 with a 3x3 stem, T = 0.5, LARS with lr 1.0 x B/256,
batch 512-1024, 10 warmup epochs then cosine, weight decay 1e-6 (1e-4 in this project's original
command), 1000 epochs. The paper's square-root scaling, lr = 0.075 sqrt(B), is `--lr_scaling
sqrt --base_lr 1.2` here (base_lr x sqrt(B/256): 0.075 x sqrt(256) = 1.2).
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import HEAD_INIT, PROJ_DIM, PROJ_WIDTH_OF_FEATURES, TEMPERATURE, Flag
from methods.recipe import Recipe
from networks.heads import build_mlp, init_linears
from utils.distributed import gather_with_grad
from utils.misc import non_negative_float


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent over the 2N views of a batch.

    Args:
        z1: [N, D] projections of the first views.
        z2: [N, D] projections of the second views; row i is the positive of z1's row i.
        temperature: T dividing the cosine similarities.

    Returns:
        Scalar: mean over the 2N anchors of the cross-entropy of the positive among the other 2N-1.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2N x D
    logits = z @ z.T / temperature  # 2N x 2N
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own negative
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)


NT_XENT_SCALE = Flag(
    "factor on NT-Xent's mean over the 2N anchors (2: the official loss_a + loss_b; 1: the mean)",
    non_negative_float,
)


# google-research/simclr 383d414 (TF1 run.py, model_util.py, lars_optimizer.py, README.md)
_LARS_SOURCES = {
    "optimizer, momentum, lars_eta": "run.py:170-176 (optimizer lars, momentum 0.9); "
    "lars_optimizer.py:26,44 (eeta 0.001)",
    "exclude_bias_and_norm": "model_util.py:94-100 (exclude_from_weight_decay "
    "['batch_normalization', 'bias']); lars_optimizer.py:78-81 (adaptation)",
    "warmup_epochs, warmup_lr": "run.py:50-52 (warmup_epochs 10); model_util.py:71-72 "
    "(linear from 0)",
    "final_lr": "model_util.py:76-81 (tf.train.cosine_decay to 0 after warmup)",
}


@register("simclr")
class SimCLR(Method):
    """Backbone + projection MLP; NT-Xent between the projections of two views."""

    loss_summary = "`nt_xent_loss`"
    # official tf2/data_util.py: crop_and_resize and center_crop resize with BICUBIC
    view_options = {"interpolation": "bicubic"}
    eval_interpolation = "bicubic"
    zero_init_residual = True
    recipes = (
        Recipe(
            source="google-research/simclr 383d414, README's CIFAR-10 command (ResNet-18, 32 px)",
            images="small",
            optimizer="lars_simclr",
            momentum=0.9,
            lars_eta=0.001,
            exclude_bias_and_norm=True,
            base_lr=1.0,
            lr_scaling="linear",
            batch_size=512,
            num_epochs=1000,
            weight_decay=1e-4,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=0.0,
            sources={
                **_LARS_SOURCES,
                "batch_size, num_epochs, base_lr, weight_decay, final_weight_decay": "README.md:"
                "79-81 (--train_batch_size=512 --train_epochs=1000 --learning_rate=1.0 "
                "--weight_decay=1e-4, constant)",
                "lr_scaling": "run.py:46-48 (learning_rate_scaling linear); model_util.py:64-65",
            },
        ),
        Recipe(
            source="google-research/simclr 383d414, README's ImageNet command (ResNet-50, batch "
            "4096, 100 epochs)",
            images="large",
            optimizer="lars_simclr",
            momentum=0.9,
            lars_eta=0.001,
            exclude_bias_and_norm=True,
            base_lr=1.2,
            lr_scaling="sqrt",
            batch_size=4096,
            num_epochs=100,
            weight_decay=1e-4,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=0.0,
            settings={"temperature": 0.1, "jitter_strength": 1.0},
            sources={
                **_LARS_SOURCES,
                "batch_size, num_epochs, temperature": "README.md:101-102 (--train_batch_size=4096 "
                "--train_epochs=100 --temperature=0.1)",
                "base_lr, lr_scaling": "README.md:103 (--learning_rate=0.075 "
                "--learning_rate_scaling=sqrt); model_util.py:66-67 (x sqrt(B): 1.2 at 256)",
                "weight_decay, final_weight_decay": "README.md:103 (--weight_decay=1e-4, constant)",
                "jitter_strength": "run.py:239-241 (color_jitter_strength 1.0; README leaves it)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int | None, PROJ_WIDTH_OF_FEATURES] = None,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        temperature: Annotated[float, TEMPERATURE] = 0.5,
        nt_xent_scale: Annotated[float, NT_XENT_SCALE] = 2.0,
        head_init: Annotated[str, HEAD_INIT] = "normal",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = proj_hidden_dim or feat_dim  # official: the backbone's width
        self.proj_hidden_dim = hidden  # resolved, for the run's record
        self.projector = build_mlp(2, feat_dim, hidden, proj_dim, last_bn=True, last_bn_scale=True)
        init_linears(self.projector, head_init)  # official linear_layer: N(0, 0.01)
        self.temperature = temperature
        self.nt_xent_scale = nt_xent_scale

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # one pass over both views: BatchNorm sees all 2N images, as in the official code
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        loss = nt_xent_loss(gather_with_grad(z1), gather_with_grad(z2), self.temperature)
        return {"loss": self.nt_xent_scale * loss, "z1": z1, "z2": z2}
