"""Vision Transformers `vit_tiny` and `vit_small` (Dosovitskiy et al., "An Image is Worth 16x16
Words", ICLR 2021, https://arxiv.org/abs/2010.11929; sizes of DeiT, Touvron et al. 2021, which
DINO uses), built with torchvision's `VisionTransformer`:

    name       embed dim  depth  heads  MLP   parameters (224 px, patch 16)
    vit_tiny   192        12     3      768   5.5 M
    vit_small  384        12     6      1536  21.7 M

The features are the class token after the final LayerNorm (the classification head is removed),
of the embedding's size. Patches are 16 px (ViT-S/16), or 4 px for small images (<= 64 px) so
that a 32 px image still gives an 8x8 grid of tokens (as in the CIFAR ViTs of the SSL
literature); `image_size` must be a multiple of the patch size.

Other input sizes (multi-crop's local crops) go through the same network with the position
embeddings resized by bicubic interpolation, as DINO's `interpolate_pos_encoding` does (its scale
factors, `position_embedding`); a border
narrower than a patch is dropped by the patch convolution, so choose crop sizes that are
multiples of the patch (e.g. `--small_crop_size 16` at `--image_size 32`).

torchvision publishes no weights for these two sizes (its ViTs start at vit_b_16), so
`pretrained=True` is an error. Stochastic depth is added to every block (`set_drop_path`: the
rate rising linearly over the blocks, as DINO's and MAE's `drop_path_rate`, or the same in every
block with `uniform`, DINOv2's `drop_path_uniform`; off by default).

Two options of DINOv2 (Oquab et al. 2024; its models/vision_transformer.py), both off by default
and set on a built ViT before a method copies it (main.py `--vit_registers`, `--vit_layerscale`,
recorded in the run and set again wherever its backbone is rebuilt):
  registers   `set_registers(n)`: n learnt tokens (Darcet et al., "Vision Transformers Need
              Registers", ICLR 2024), the parameter `register_tokens` [1, n, D], initialised
              N(0, 1e-6) as DINOv2's `init_weights`. As its `prepare_tokens_with_masks`, they go
              in right after the class token once the position embeddings are added (they have
              none; first in an encoder without a class token), take part in every block, and
              are left out of every output: `forward_tokens`, `block_outputs` and `run_blocks`
              return the class token and the patches, as without them. Layer 0 of lr decay.
  LayerScale  `set_layerscale(init)` (Touvron et al., "Going deeper with Image Transformers"
              (CaiT), ICCV 2021): each block's residual branches scaled by a learnt vector of
              the width, `x + drop_path(ls1(attn(norm1(x))))` and likewise `ls2` on the MLP,
              filled with `init` (DINOv2's `layerscale` 1e-5; its layers/layer_scale.py); the
              `gamma`s (`encoder.layers.*.ls1.gamma`, `ls2.gamma`; timm's `blocks.*.ls1.gamma`)
              are 1-D, so that `exclude_bias_and_norm` leaves them undecayed as DINOv2 does.
Without them the modules and state-dict keys are those of the plain ViT.

Recommended optimisation (ViTs train poorly with the toolkit's default SGD): AdamW with a linear
warmup and a cosine decay, e.g. DINO's `--optimizer adamw --base_lr 5e-4 --weight_decay 0.04
--final_weight_decay 0.4 --warmup_epochs 10 --final_lr 1e-6 --clip_grad 3` (lr scaled by
batch/256), or DeiT's lr 5e-4 x B/512 with weight decay 0.05 and 5 warmup epochs. With
`--optimizer adamw` the factory exempts biases and LayerNorm weights (1-D parameters) from weight
decay, as DINO does; the class token and position embeddings (3-D) are decayed, as in DINO,
whereas timm and MAE exempt them.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer
from torchvision.models.vision_transformer import EncoderBlock
from torchvision.ops import StochasticDepth

from networks import SMALL_IMAGE_SIZE, register
from utils.misc import UserError

# name -> (embedding size, depth, heads, MLP size), DeiT's tiny and small
VIT_SIZES = {
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
}


def patch_size_for(image_size: int) -> int:
    """16 px patches (ViT-S/16) at ImageNet sizes; 4 px for small images, so that 32 px gives
    8x8 tokens rather than 2x2."""
    return 4 if image_size <= SMALL_IMAGE_SIZE else 16


class LayerScale(nn.Module):
    """A residual branch times a learnt vector `gamma` [D], filled with `init` (CaiT's LayerScale;
    DINOv2's layers/layer_scale.py)."""

    def __init__(self, like: Tensor, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full_like(like, float(init)))  # on `like`'s device

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(EncoderBlock):
    """torchvision's encoder block with stochastic depth (drop path) on both residual branches,
    as the MAE/DeiT fine-tuning recipe trains ViTs (`drop_path`: a torchvision StochasticDepth,
    "row" mode: whole samples dropped; the identity at rate 0 and in eval mode), and LayerScale
    on both (`ls1`, `ls2`: the identity until `ViTBackbone.set_layerscale`)."""

    drop_path: nn.Module
    ls1: nn.Module
    ls2: nn.Module

    def forward(self, input: Tensor) -> Tensor:
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = input + self.drop_path(self.ls1(self.dropout(x)))
        return x + self.drop_path(self.ls2(self.mlp(self.ln_2(x))))


class MaskableViT:
    """What MAE, I-JEPA and MAE's fine-tuning protocol need of a Vision Transformer, shared by
    this toolkit's ViTs (`ViTBackbone`) and timm's (networks/timm_vit.py): the encoder on a
    subset of the patches (`forward_tokens`, `block_outputs`), its position embeddings
    (`position_parameter`, [1, 1 + L, D], the class token's first), register tokens
    (`set_registers`), drop path, LayerScale, fc_norm and the layers of layer-wise lr decay. A
    subclass gives the parts that differ by library: `embed_patches`, `apply_blocks`,
    `position_parameter`, `class_token`, `patch_projection`, `pools_class_token`, `image_size`,
    `patch_size`, `depth`, `num_heads`, `residual_projections`, `set_drop_path`,
    `set_layerscale`, `set_fc_norm` and `layer_id`."""

    image_size: int
    patch_size: int
    class_token: nn.Parameter  # [1, 1, D]
    patch_projection: nn.Conv2d  # p x p kernel, stride p
    pools_class_token: bool  # its features: the class token (else the patch tokens' mean)
    # whether the class token goes through the blocks when the features are the patch tokens'
    # mean (as MAE's global pooling: models_vit.py); False: an encoder without one (I-JEPA's)
    class_token_attends = True
    last_blocks = 1  # set_last_blocks
    avgpool_patchtokens = False  # set_avgpool_patchtokens
    layerscale = 0.0  # set_layerscale: the gammas' initial value (0: no LayerScale)

    @property
    def num_registers(self) -> int:
        """The register tokens of `set_registers` (0: none)."""
        tokens = getattr(self, "register_tokens", None)
        return 0 if tokens is None else tokens.shape[1]

    def set_registers(self, n: int) -> None:
        """`n` register tokens (Darcet et al. 2024; DINOv2's `num_register_tokens`): the
        parameter `register_tokens` [1, n, D], N(0, 1e-6) as DINOv2's `init_weights`, which
        `run_blocks` puts after the class token and takes out of its outputs. 0: none, nothing
        changes."""
        if n < 0:
            raise ValueError(f"{n} register tokens")
        if n == 0:
            return
        if self.num_registers:
            raise ValueError(f"the ViT has {self.num_registers} register tokens already")
        tokens = self.class_token.new_empty(1, n, self.class_token.shape[-1])
        self.register_tokens = nn.Parameter(nn.init.normal_(tokens, std=1e-6))

    def patch_tokens(self, x: Tensor, masked: tuple[Tensor, Tensor] | None = None):
        """The embedded patches [N, L, D] with their position embeddings added, and the class
        token's position embedding [1, 1, D]. `masked` (mask [N, h // p, w // p] of 0/1, token
        [1, 1, D]): the masked patches' embeddings replaced by the token before the positions
        are added (SimMIM's `VisionTransformerForSimMIM`)."""
        n, _, h, w = x.shape
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"input {h}x{w} is smaller than one {self.patch_size} px patch")
        grid = self.embed_patches(x)  # [N, h // p, w // p, D]
        if masked is not None:
            mask, token = masked
            weight = mask.unsqueeze(-1).to(grid.dtype)
            grid = grid * (1 - weight) + token * weight
        pos = self.position_embedding((grid.shape[1], grid.shape[2]))
        return grid.flatten(1, 2) + pos[:, 1:], pos[:, :1]

    def forward_tokens(
        self,
        x: Tensor,
        keep: Tensor | None = None,
        cls: bool = True,
        masked: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The encoder's output tokens after the final norm: [N, 1 + K, D] with the class token
        first (`cls`), where K is all L patches or the `keep` [N, K] indices of each image (in
        row-major patch order), each with its own position embedding; `masked` as in
        `patch_tokens`."""
        return self.block_outputs(x, keep, cls, masked=masked)[-1]

    def block_outputs(
        self,
        x: Tensor,
        keep: Tensor | None = None,
        cls: bool = True,
        last: int = 1,
        masked: tuple[Tensor, Tensor] | None = None,
    ) -> list[Tensor]:
        """The tokens of `forward_tokens` after each of the last `last` blocks, each through the
        final norm (DINO's `get_intermediate_layers`), the last block's last."""
        if not 1 <= last <= self.depth:
            raise ValueError(f"last {last} of {self.depth} blocks")
        patches, cls_pos = self.patch_tokens(x, masked)
        if keep is not None:
            index = keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            patches = torch.gather(patches, 1, index)
        if cls:
            token = (self.class_token + cls_pos).expand(patches.shape[0], -1, -1)
            patches = torch.cat([token, patches], dim=1)
        return self.run_blocks(patches, last, cls)

    def run_blocks(self, tokens: Tensor, last: int, cls: bool = True) -> list[Tensor]:
        """The blocks on embedded tokens [N, T, D] (the class token first with `cls`): the
        outputs of the last `last`, each through the final norm, [N, T, D] each. The register
        tokens (`set_registers`) go in after the class token (first without one), through every
        block, and out of the outputs again (DINOv2's `prepare_tokens_with_masks`)."""
        n = self.num_registers
        if not n:
            return self.apply_blocks(tokens, last)
        at = int(cls)
        registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :at], registers, tokens[:, at:]], dim=1)
        outputs = self.apply_blocks(tokens, last)
        return [torch.cat([x[:, :at], x[:, at + n :]], dim=1) for x in outputs]

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """[1, 1 + gh * gw, D]: the class token's embedding, then the patch embeddings resized
        bicubically from the native square grid to `grid` as DINO's `interpolate_pos_encoding`
        (vision_transformer.py) does: by the scale factors (g + 0.1) / side, which `interpolate`
        uses as given to place its samples (not the sizes' ratio g / side: a 2x2 grid from 8x8
        samples other positions)."""
        pos = self.position_parameter
        side = self.image_size // self.patch_size
        if tuple(grid) == (side, side):
            return pos
        dim = pos.shape[-1]
        patches = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)  # + 0.1: DINO's rounding guard
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
        return torch.cat([pos[:, :1], patches], dim=1)

    def pooled_blocks(self, x: Tensor) -> Tensor:
        """The last `last_blocks` blocks' outputs (each after the final norm), each pooled as
        the model pools, concatenated (DINO's eval_linear.py `--n_last_blocks`); with
        `avgpool_patchtokens`, followed by the mean of the last block's patch tokens (its
        `--avgpool_patchtokens`). Without `class_token_attends` (and not pooling the class
        token) the blocks run on the patch tokens alone, as an encoder without a class token."""
        token = self.pools_class_token
        cls = token or self.class_token_attends  # avgpool_patchtokens needs the token
        blocks = self.block_outputs(x, cls=cls, last=self.last_blocks)
        first = int(cls)  # the first patch token
        pooled = [tokens[:, 0] if token else tokens[:, first:].mean(dim=1) for tokens in blocks]
        if self.avgpool_patchtokens:
            pooled.append(blocks[-1][:, 1:].mean(dim=1))
        return torch.cat(pooled, dim=-1)

    def drop_path_rates(self, rate: float, uniform: bool = False) -> list[float]:
        """Stochastic depth rising linearly with depth from 0 to `rate` (DeiT's, MAE's), or
        `rate` in every block with `uniform` (DINOv2's `drop_path_uniform`)."""
        if uniform:
            return [rate] * self.depth
        return [rate * i / max(self.depth - 1, 1) for i in range(self.depth)]

    def check_layerscale(self, init: float) -> bool:
        """Whether `set_layerscale(init)` adds LayerScale: not at 0; refused below 0 and twice."""
        if init < 0:
            raise ValueError(f"LayerScale's initial value {init} is negative")
        if init and self.layerscale:
            raise ValueError(f"the ViT has LayerScale already (initial value {self.layerscale})")
        return init > 0


class ViTBackbone(MaskableViT, VisionTransformer):
    """torchvision's VisionTransformer without its head (`heads` is the identity), returning the
    class token after the final norm (`pool` "token"), or the mean of the patch tokens after it
    (`pool` "mean", I-JEPA's evaluation), for any input size of at least one patch; with
    `last_blocks` n > 1, those of each of the last n blocks (each after the final norm),
    concatenated: n x D features (DINO's linear probe, eval_linear.py `--n_last_blocks`); with
    `avgpool_patchtokens`, followed by the mean of the last block's patch tokens (its
    `--avgpool_patchtokens`).

    `forward_tokens` is the encoder on a subset of the patches (MAE's visible ones, I-JEPA's
    context), with or without the class token. The blocks are `Block`s: `set_drop_path(rate)`
    turns on stochastic depth (rates rising linearly with depth to `rate`, as DeiT and MAE),
    `set_layerscale(init)` LayerScale; `set_registers(n)` adds register tokens."""

    pool = "token"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for layer in self.encoder.layers:  # the same weights and keys, with drop path
            layer.__class__ = Block
            layer.drop_path = StochasticDepth(0.0, "row")
            layer.ls1, layer.ls2 = nn.Identity(), nn.Identity()  # set_layerscale
        self.fc_norm: nn.Module | None = None  # set_fc_norm

    @property
    def depth(self) -> int:
        return len(self.encoder.layers)

    @property
    def num_heads(self) -> int:
        return self.encoder.layers[0].num_heads

    @property
    def position_parameter(self) -> nn.Parameter:
        return self.encoder.pos_embedding

    @property
    def patch_projection(self) -> nn.Conv2d:
        return self.conv_proj

    @property
    def pools_class_token(self) -> bool:
        return self.pool == "token"

    def residual_projections(self) -> list[tuple[Tensor, Tensor]]:
        return residual_projections(self.encoder.layers)

    def set_drop_path(self, rate: float, uniform: bool = False) -> None:
        rates = self.drop_path_rates(rate, uniform)
        for layer, p in zip(self.encoder.layers, rates, strict=True):
            layer.drop_path.p = p

    def set_layerscale(self, init: float) -> None:
        """LayerScale on both residual branches of every block (`Block.ls1`, `ls2`), gamma
        filled with `init`; 0 changes nothing."""
        if not self.check_layerscale(init):
            return
        for layer in self.encoder.layers:
            like = layer.ln_1.weight
            layer.ls1, layer.ls2 = LayerScale(like, init), LayerScale(like, init)
        self.layerscale = init

    def set_fc_norm(self) -> None:
        """MAE's fine-tuning with global pooling (models_vit.py, global_pool=True): the final norm
        is dropped (its pretrained weights unused) and a fresh LayerNorm normalises the mean of the
        patch tokens instead. Needs `pool` "mean"; its parameters sit with the final norm's for
        layer-wise lr decay (`layer_id`)."""
        if self.pool != "mean":
            raise ValueError("fc_norm normalises the mean of the patch tokens: set pool 'mean'")
        self.encoder.ln = nn.Identity()
        self.fc_norm = nn.LayerNorm(self.hidden_dim, eps=1e-6)  # torchvision's and MAE's eps

    def forward(self, x: Tensor) -> Tensor:
        native = x.shape[-2:] == (self.image_size, self.image_size)
        plain = self.pool == "token" and self.last_blocks == 1 and not self.avgpool_patchtokens
        if plain and native and not self.num_registers:
            return super().forward(x)  # torchvision's own path
        pooled = self.pooled_blocks(x)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return self.heads(pooled)

    def forward_any_size(self, x: Tensor) -> Tensor:
        """The class token of `forward_tokens`: torchvision's forward at any input size."""
        return self.heads(self.forward_tokens(x)[:, 0])

    def embed_patches(self, x: Tensor) -> Tensor:
        """[N, h // p, w // p, D]: the patch projection, channels last."""
        return self.conv_proj(x).permute(0, 2, 3, 1)

    def apply_blocks(self, tokens: Tensor, last: int) -> list[Tensor]:
        """The blocks on the embedded tokens as given (registers included); the outputs of the
        last `last`, each through the final norm."""
        x, outputs = self.encoder.dropout(tokens), []
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if i >= self.depth - last:
                outputs.append(self.encoder.ln(x))
        return outputs

    def layer_id(self, name: str) -> int:
        """A parameter's depth for layer-wise lr decay, as MAE's `get_layer_id_for_vit`: 0 for
        the embeddings (patches, positions, class token, registers), i + 1 for block i (its
        LayerScale too), depth + 1 for the final norm or fc_norm (which the head's layer
        shares)."""
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2].rsplit("_", 1)[1]) + 1
        embeddings = ("conv_proj", "class_token", "register_tokens", "encoder.pos_embedding")
        if name.startswith(embeddings):
            return 0
        return self.depth + 1


def sincos_position_embedding(dim: int, side: int, rows_first: bool = False) -> Tensor:
    """[1 + side * side, dim]: the fixed 2-D sine-cosine embeddings of MAE and I-JEPA
    (util/pos_embed.py get_2d_sincos_pos_embed, cls_token=True): a zero row for the class token,
    then per patch, in row-major order, the first dim / 2 values encode its column and the last
    dim / 2 its row, each as [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim / 4)).
    `rows_first`: the row's half first, as MoCo v3's `build_2d_sincos_position_embedding`
    (vits.py: its `meshgrid` is indexed ij, so its "w" grid runs down the rows)."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def encode(position: Tensor) -> Tensor:
        angles = position.flatten().double()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    halves = [encode(rows), encode(cols)] if rows_first else [encode(cols), encode(rows)]
    patches = torch.cat(halves, dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float()


def trunc_normal_init(module: nn.Module, conv: bool = False) -> None:
    """DeiT's `_init_weights`, which DINO and I-JEPA keep: truncated N(0, 0.02) weights of the
    Linear layers and the attention's input projection (the patch projection's too with `conv`),
    zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear) or (conv and isinstance(m, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def xavier_init(module: nn.Module, split_qkv: bool = False) -> None:
    """MAE's `initialize_weights` / `_init_weights`: Xavier-uniform Linear weights, attention
    input projection (torchvision's `in_proj_weight`, timm's `qkv`; q, k and v each as its own
    [D, D] matrix with `split_qkv`, as MoCo v3's vits.py) and patch projection (as a Linear over
    its flattened kernel), zero biases, unit LayerNorms."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            parts = 3 if split_qkv and name.endswith("qkv") else 1
            for weight in m.weight.chunk(parts):  # views: in place
                nn.init.xavier_uniform_(weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            for weight in m.in_proj_weight.chunk(3 if split_qkv else 1):  # views: in place
                nn.init.xavier_uniform_(weight)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):  # the patch projection
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)


def fix_position_embedding(backbone: MaskableViT, rows_first: bool = False) -> None:
    """Fixed sine-cosine position embeddings (MAE, I-JEPA, MoCo v3) in place of the learnt ones
    (`requires_grad` off: the optimizer never sees them)."""
    side = backbone.image_size // backbone.patch_size
    pos = backbone.position_parameter
    with torch.no_grad():
        pos.copy_(sincos_position_embedding(pos.shape[-1], side, rows_first).unsqueeze(0))
    pos.requires_grad_(False)


def transformer_blocks(depth: int, dim: int, heads: int) -> nn.Sequential:
    """`depth` pre-norm Transformer blocks of width `dim`, `heads` heads and 4x MLPs (LayerNorm
    eps 1e-6), as the ViT's own: MAE's decoder, I-JEPA's predictor."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(*(EncoderBlock(heads, dim, 4 * dim, 0.0, 0.0, norm) for _ in range(depth)))


def residual_projections(blocks: nn.Sequential) -> list[tuple[Tensor, Tensor]]:
    """Per torchvision encoder block, the weights that end its two residual branches: the
    attention's output projection and the MLP's second layer (I-JEPA rescales them)."""
    return [(block.self_attention.out_proj.weight, block.mlp[3].weight) for block in blocks]


def set_last_blocks(backbone: nn.Module, last: int, name: str) -> int:
    """--n_last_blocks: a ViT's features from its last `last` blocks, concatenated (DINO's
    linear probe); returns the factor on its feature width. 1 changes nothing; more is refused,
    in one line, for backbones other than vit_tiny, vit_small and plain timm ViTs."""
    if last == 1:
        return 1
    if not isinstance(backbone, MaskableViT):
        raise UserError(
            f"--n_last_blocks {last}: {name} is not a Vision Transformer with one class token "
            "(vit_tiny, vit_small, a plain timm ViT): drop it"
        )
    if last > backbone.depth:
        raise UserError(
            f"--n_last_blocks {last}: {name} has {backbone.depth} blocks: give at most "
            f"{backbone.depth}"
        )
    backbone.last_blocks = last
    return last


def set_avgpool_patchtokens(backbone: nn.Module, on: bool, name: str) -> int:
    """--avgpool_patchtokens: the mean of a ViT's last-block patch tokens (after the final norm)
    concatenated to its class tokens, as DINO's eval_linear.py (its ViT-B setting, with
    n_last_blocks 1; it concatenates the two feature by feature, an order a linear head does not
    see). Returns the number of D-wide features it adds; refused, in one line, for anything but
    a ViT with one class token, reading it."""
    if not on:
        return 0
    if not isinstance(backbone, MaskableViT):
        raise UserError(
            f"--avgpool_patchtokens: {name} is not a Vision Transformer with one class token "
            "(vit_tiny, vit_small, a plain timm ViT): drop it"
        )
    fc_norm = getattr(backbone, "fc_norm", None)  # timm's is the identity until set_fc_norm
    if not backbone.pools_class_token or not isinstance(fc_norm, (type(None), nn.Identity)):
        raise UserError(
            "--avgpool_patchtokens adds the patch tokens' mean to the class token: drop --pool "
            "mean and --fc_norm, or drop --avgpool_patchtokens"
        )
    backbone.avgpool_patchtokens = True
    return 1


def set_pool(backbone: nn.Module, pool: str | None, name: str) -> None:
    """--pool: a ViT's features from its class token ("token") or the mean of its patch tokens
    ("mean"); None keeps the backbone's. Other backbones pool spatially: one line refuses it."""
    if pool is None:
        return
    if isinstance(backbone, ViTBackbone):
        backbone.pool = pool
    elif hasattr(backbone, "global_pool") and hasattr(backbone, "cls_token"):  # a timm ViT
        backbone.global_pool = {"token": "token", "mean": "avg"}[pool]
    else:
        raise UserError(f"--pool {pool}: {name} is not a Vision Transformer: drop --pool")


def set_heads(backbone: nn.Module, heads: int | None, name: str) -> None:
    """A ViT's attention heads (--vit_heads; MoCo v3's ViT-Small has 12 where DeiT-S has 6, with
    the same weights' shapes): each block's attention splits its width into `heads` heads. None
    keeps the backbone's. Only this toolkit's ViTs; one line refuses the others."""
    if heads is None:
        return
    if not isinstance(backbone, ViTBackbone):
        raise UserError(f"--vit_heads {heads}: {name} is not one of this toolkit's ViTs "
                        "(vit_tiny, vit_small): drop --vit_heads")  # fmt: skip
    width = backbone.hidden_dim
    if width % heads:
        raise UserError(f"--vit_heads {heads}: {name}'s width {width} is not a multiple of it")
    for layer in backbone.encoder.layers:
        layer.num_heads = layer.self_attention.num_heads = heads
        layer.self_attention.head_dim = width // heads


def set_vit_registers(backbone: nn.Module, n: int | None, name: str) -> None:
    """--vit_registers: `n` register tokens on a ViT (MaskableViT.set_registers); None or 0 adds
    none. Only ViTs with the MaskableViT interface; one line refuses the others."""
    _vit_option(backbone, "--vit_registers", n, name, lambda vit: vit.set_registers(n))


def set_vit_layerscale(backbone: nn.Module, init: float | None, name: str) -> None:
    """--vit_layerscale: LayerScale with gammas filled with `init` on a ViT's blocks
    (MaskableViT.set_layerscale); None or 0 adds none. Only ViTs with the MaskableViT interface
    (and, of timm's, blocks with timm's `ls1`/`ls2` places); one line refuses the others."""
    _vit_option(backbone, "--vit_layerscale", init, name, lambda vit: vit.set_layerscale(init))


def _vit_option(backbone: nn.Module, flag: str, value, name: str, apply) -> None:
    """`apply(backbone)` for a given (nonzero) `value` of `flag`; one line for a backbone
    without the MaskableViT interface or a value it refuses."""
    if not value:
        return
    given = f"{flag} {value:g}"
    if not isinstance(backbone, MaskableViT):
        raise UserError(
            f"{given}: {name} is not a Vision Transformer with one class token (vit_tiny, "
            f"vit_small, a plain timm ViT): pass {flag} 0 or drop it"
        )
    try:
        apply(backbone)
    except ValueError as err:
        raise UserError(f"{given}: {name}: {err}") from None


def _vit(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    if pretrained:
        raise UserError(
            f"--pretrained: torchvision has no ImageNet weights for {name} (its ViTs start at "
            "vit_b_16); drop --pretrained"
        )
    patch = patch_size_for(image_size)
    if image_size % patch:
        raise UserError(
            f"--image_size {image_size}: {name} needs a multiple of its patch size {patch} "
            f"({patch} px patches {'up to' if patch == 4 else 'above'} {SMALL_IMAGE_SIZE} px)"
        )
    dim, depth, heads, mlp = VIT_SIZES[name]
    model = ViTBackbone(
        image_size=image_size,
        patch_size=patch,
        num_layers=depth,
        num_heads=heads,
        hidden_dim=dim,
        mlp_dim=mlp,
    )
    model.heads = nn.Identity()
    return model, dim


for _name in VIT_SIZES:
    register(_name)(lambda image_size, pretrained, _n=_name: _vit(_n, image_size, pretrained))
