"""timm's plain Vision Transformers (`--backbone timm:vit_*`, `timm:deit_*`) with the interface of
networks/vit.MaskableViT, so that MAE, I-JEPA and MAE's fine-tuning protocol (drop path, fc_norm,
layer-wise lr decay) take them as they take vit_tiny and vit_small.

The model's class is swapped in place for a subclass of its own class that adds the interface
(named Maskable<its name>, e.g. MaskableVisionTransformer): the module tree, the state-dict keys
and timm's own forward stay as they were, so checkpoints load either way. MAE's official
encoder is built of timm's blocks, and its names are timm's:

    patch_embed.proj   the patch projection (a Conv2d; the grid comes out channels last, as
                       networks/timm_models.py builds ViTs with dynamic_img_size)
    cls_token          the class token; pos_embed [1, 1 + L, D], the class token's position first
    pos_drop, norm_pre the dropout and (identity) norm before the blocks, as timm's forward
    blocks[i]          attn.qkv, attn.proj, mlp.fc1, mlp.fc2; drop_path1 / drop_path2
    norm, fc_norm      the final norm; the norm after global pooling (MAE's fine-tuning)

Layer ids for lr decay are MAE's `get_layer_id_for_vit` on these names. Only plain models take
the interface: one class token with its own position embedding and no other prefix tokens
(no registers of timm's, no distillation token), learnt absolute position embeddings (no RoPE),
no attention pooling; the others stay as timm builds them, and MAE / I-JEPA refuse them.

DINOv2's options (networks/vit.py's docstring) on these names:
    register_tokens    `set_registers(n)`: the interface's registers [1, n, D], N(0, 1e-6), put
                       after the class token with no position embedding as DINOv2 does (timm's
                       own `reg_token`, which models built with `reg_tokens` have, stays refused:
                       timm adds position embeddings to it unless `no_embed_class`). timm's
                       forward does not know them: with registers the model's forward goes
                       through the interface (`forward_tokens`, then timm's `forward_head`: its
                       pooling, fc_norm and head), whose position embeddings at other input
                       sizes are DINO's bicubic resize (MaskableViT.position_embedding).
    blocks[i].ls1/ls2  `set_layerscale(init)`: timm's own `LayerScale` (gamma [D], filled with
                       `init`) where timm builds the identity without `init_values`; blocks
                       built with LayerScale already (DeiT III's) refuse another.
"""

from torch import Tensor, nn

from networks.vit import MaskableViT

_WITH_INTERFACE: dict[type, type] = {}  # timm class -> its subclass with the interface
PREFIX = "Maskable"  # the subclasses' names: MaskableVisionTransformer, ...


class TimmViT(MaskableViT):
    """The interface on timm's module names (mixed into the model's own timm class)."""

    @property
    def image_size(self) -> int:
        return self.patch_embed.img_size[0]

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def class_token(self) -> nn.Parameter:
        return self.cls_token

    @property
    def position_parameter(self) -> nn.Parameter:
        return self.pos_embed

    @property
    def patch_projection(self) -> nn.Conv2d:
        return self.patch_embed.proj

    @property
    def pools_class_token(self) -> bool:
        return self.global_pool == "token"

    def forward(self, x: Tensor) -> Tensor:
        """timm's own forward (its pooling, fc_norm, any input size), or with set_last_blocks /
        set_avgpool_patchtokens, or a mean of patch tokens computed without the class token, the
        pooled tokens of the blocks (MaskableViT.pooled_blocks); with register tokens, timm's
        head (pooling, fc_norm, head) on `forward_tokens`, which runs them."""
        plain_mean = self.pools_class_token or self.class_token_attends
        if self.last_blocks == 1 and not self.avgpool_patchtokens and plain_mean:
            if self.num_registers:
                return self.forward_head(self.forward_tokens(x))
            return super().forward(x)
        return self.pooled_blocks(x)

    def embed_patches(self, x: Tensor) -> Tensor:
        """[N, h // p, w // p, D]: timm's patch embedding (projection and its norm, if any)."""
        grid = self.patch_embed(x)
        if grid.ndim == 3:  # a model built with flattened output (not dynamic_img_size)
            side = x.shape[-1] // self.patch_size
            grid = grid.unflatten(1, (x.shape[-2] // self.patch_size, side))
        return grid

    def apply_blocks(self, tokens: Tensor, last: int) -> list[Tensor]:
        """timm's forward_features after the position embedding, on the tokens as given
        (registers included): the outputs of the last `last` blocks, each through the final
        norm."""
        x, outputs = self.norm_pre(self.pos_drop(tokens)), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= self.depth - last:
                outputs.append(self.norm(x))
        return outputs

    def residual_projections(self) -> list[tuple[Tensor, Tensor]]:
        return [(block.attn.proj.weight, block.mlp.fc2.weight) for block in self.blocks]

    def set_drop_path(self, rate: float, uniform: bool = False) -> None:
        """timm's DropPath on both residual branches of each block (timm sets them only at
        creation, with the same linear rise; `uniform`: `rate` in every block)."""
        from timm.layers import DropPath

        rates = self.drop_path_rates(rate, uniform)
        for block, p in zip(self.blocks, rates, strict=True):
            block.drop_path1 = DropPath(p) if p > 0 else nn.Identity()
            block.drop_path2 = DropPath(p) if p > 0 else nn.Identity()

    def set_layerscale(self, init: float) -> None:
        """timm's LayerScale in each block's `ls1` and `ls2` (the identity unless timm built the
        model with `init_values`), gamma filled with `init`; 0 changes nothing."""
        from timm.layers import LayerScale

        if not self.check_layerscale(init):
            return
        for block in self.blocks:
            places = [getattr(block, key, None) for key in ("ls1", "ls2")]
            if not all(isinstance(place, nn.Identity) for place in places):
                built = "has LayerScale already" if places[0] is not None else "has no ls1/ls2"
                raise ValueError(f"its {type(block).__name__} {built}: drop --vit_layerscale")
        like = self.cls_token
        for block in self.blocks:
            for key in ("ls1", "ls2"):
                scale = LayerScale(self.embed_dim, init, device=like.device, dtype=like.dtype)
                setattr(block, key, scale)
        self.layerscale = init

    def set_fc_norm(self) -> None:
        """MAE's global pooling for fine-tuning (networks/vit.ViTBackbone.set_fc_norm): no final
        norm, a fresh LayerNorm on the mean of the patch tokens (timm's fc_norm)."""
        if self.global_pool != "avg":
            raise ValueError("fc_norm normalises the mean of the patch tokens: set pool 'mean'")
        self.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6)

    def layer_id(self, name: str) -> int:
        """MAE's `get_layer_id_for_vit`: 0 for the embeddings (and registers), i + 1 for block i
        (its LayerScale too), depth + 1 for the rest (final norm, fc_norm)."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("patch_embed", "cls_token", "register_tokens", "pos_embed")):
            return 0
        return self.depth + 1


def not_plain(model: nn.Module) -> str | None:
    """Why a timm VisionTransformer cannot take the interface, or None if it can."""
    if getattr(model, "cls_token", None) is None or model.num_prefix_tokens != 1:
        return "it needs one class token and no register or distillation tokens"
    if getattr(model, "no_embed_class", False) or getattr(model, "pos_embed", None) is None:
        return "it needs a learnt position embedding for the class token and every patch"
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg"):
        return "it needs class-token or mean pooling"
    if len(set(model.patch_embed.img_size)) > 1 or len(set(model.patch_embed.patch_size)) > 1:
        return "it needs square images and patches"
    return None


def add_interface(model: nn.Module) -> bool:
    """Give a plain timm ViT the MaskableViT interface, in place; False (and the model as it
    was) for the others."""
    if not_plain(model):
        return False
    model.__class__ = with_interface(type(model))
    return True


def with_interface(cls: type) -> type:
    """timm's class `cls` with the interface mixed in: one class per timm class, named
    Maskable<name> in this module, where pickle finds it again (`__getattr__`)."""
    if cls not in _WITH_INTERFACE:
        name = PREFIX + cls.__name__
        attrs = {"__module__": __name__, "__qualname__": name}
        _WITH_INTERFACE[cls] = type(name, (TimmViT, cls), attrs)
    return _WITH_INTERFACE[cls]


def __getattr__(name: str) -> type:
    """Maskable<name>: the class of a pickled model (torch.save of a whole module), made again
    from timm's class of that name."""
    if name.startswith(PREFIX):
        from timm.models import deit, vision_transformer

        for module in (vision_transformer, deit):
            cls = getattr(module, name[len(PREFIX) :], None)
            if isinstance(cls, type):
                return with_interface(cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
