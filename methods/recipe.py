"""A method's official training recipe: the optimizer, lr rule, weight decay, schedule, batch,
epochs and the views and hyper-parameters that differ between regimes, each value with the
official file and line it comes from.

A method declares its regimes in its class (`recipes`, a tuple of `Recipe`); `training_recipe`
picks the first whose image sizes and backbone family match the run's: the CIFAR-size regime
(images of at most 64 px) and the ImageNet-size one where the official code has both, a
convolutional and a ViT one where it has both (MoCo v3, DINO). main.py's flags left unset take the
chosen regime's values; a --config recipe file overrides it and the command line overrides both.
"""

from dataclasses import dataclass, field, fields, replace

# image sizes of at most this are the CIFAR-size regime (as the small-image stem)
from networks import SMALL_IMAGE_SIZE as SMALL_IMAGES

# the main.py flags a recipe sets (besides the views and hyper-parameters of `settings`)
RECIPE_FLAGS = ("optimizer", "base_lr", "lr_scaling", "batch_size", "num_epochs")
RECIPE_FLAGS += ("weight_decay", "final_weight_decay", "exclude_bias_and_norm")
RECIPE_FLAGS += ("warmup_epochs", "warmup_lr", "final_lr")
RECIPE_FLAGS += ("momentum", "betas", "lars_eta", "larc_trust_coefficient", "larc_clip")

# the options each optimizer reads (optimizers/__init__.py): a recipe names sources for these
OPTIMIZER_OPTIONS = {
    "sgd": ("momentum",),
    "sgd_nesterov": ("momentum",),
    "adam": ("betas",),
    "adamw": ("betas",),
    "lars": ("momentum", "lars_eta"),
    "lars_simclr": ("momentum", "lars_eta"),
    "larc": ("momentum", "larc_trust_coefficient", "larc_clip"),
}


@dataclass(frozen=True)
class Recipe:
    """One regime of a method's official training.

    source      the official code (repository and commit, or the reproduction named as such:
                solo-learn's CIFAR configurations where the official code has no CIFAR recipe)
                and, briefly, which of its recipes this is;
    sources     where each value comes from: {"key, key, ...": "file:line (what it says)"};
                every value the run uses needs one (tests/test_recipes.py checks);
    images      "small" (at most 64 px), "large" or "any";
    backbones   "convnet", "vit" or "any";
    lrs         `base_lr` is the peak lr for a batch of 256 under `lr_scaling` (linear: x B/256,
                sqrt: x sqrt(B/256), none: as given); `warmup_lr` and `final_lr` are scaled by
                the same rule (Barlow Twins' final lr 0.001 x the peak is final_lr 0.001 x
                base_lr);
    exclude_bias_and_norm  biases and norm parameters (every parameter of at most one
                dimension) get no weight decay and, under lars / larc, no adaptation; a property
                of the method's code, whatever the optimizer;
    final_weight_decay  the weight decay at the end of a cosine from `weight_decay` (DINO,
                I-JEPA); None: constant;
    settings    the views' flags and hyper-parameters of this regime that differ from the
                method's own defaults (SimCLR at ImageNet sizes: temperature 0.1, jitter 1.0);
    presets     values that the official code sets by the schedule's length: {epochs: {flag:
                value}} (BYOL's lr, weight decay and EMA base for 40 to 1000 epochs), with
                `preset_source` their file and line; a run of N epochs takes the preset of the
                longest schedule not longer than N (the shortest for fewer epochs: `for_epochs`).
    """

    source: str
    sources: dict[str, str]
    optimizer: str
    base_lr: float
    batch_size: int
    num_epochs: int
    weight_decay: float
    lr_scaling: str = "linear"
    exclude_bias_and_norm: bool = False
    final_weight_decay: float | None = None
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    final_lr: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001
    larc_trust_coefficient: float = 0.02
    larc_clip: bool = True
    settings: dict = field(default_factory=dict)
    images: str = "any"
    backbones: str = "any"
    presets: dict[int, dict] = field(default_factory=dict)
    preset_source: str = ""

    def matches(self, image_size: int, vit: bool) -> bool:
        small = image_size <= SMALL_IMAGES
        size_ok = self.images == "any" or self.images == ("small" if small else "large")
        family_ok = self.backbones == "any" or self.backbones == ("vit" if vit else "convnet")
        return size_ok and family_ok

    def regime(self) -> str:
        """`small images, convnet` etc.: which runs take this recipe."""
        sizes = {"small": f"images <= {SMALL_IMAGES} px", "large": f"images > {SMALL_IMAGES} px"}
        families = {"convnet": "convolutional backbones", "vit": "ViTs"}
        parts = [sizes.get(self.images), families.get(self.backbones)]
        return ", ".join(p for p in parts if p) or "every run"

    def values(self) -> dict:
        """The flags this recipe sets: its training values (those the optimizer does not read
        left out) and its settings."""
        unread = set().union(*OPTIMIZER_OPTIONS.values()) - set(
            OPTIMIZER_OPTIONS.get(self.optimizer, ())
        )
        found = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name in RECIPE_FLAGS and f.name not in unread}  # fmt: skip
        return {**found, **self.settings}

    def for_epochs(self, num_epochs: int) -> "Recipe":
        """This regime for a schedule of `num_epochs` epochs: the values of its preset for that
        length (`presets`), each with its source; itself when it has none."""
        if not self.presets:
            return self
        fitting = [epochs for epochs in self.presets if epochs <= num_epochs]
        epochs = max(fitting) if fitting else min(self.presets)
        preset = self.presets[epochs]
        training = {k: v for k, v in preset.items() if k in RECIPE_FLAGS}
        settings = {**self.settings, **{k: v for k, v in preset.items() if k not in training}}
        where = f"{self.preset_source} (the {epochs}-epoch preset)"
        sources = {key: where for key in preset} | self.sources  # the preset's sources first
        return replace(self, **training, settings=settings, sources=sources, presets={})

    def source_of(self, key: str) -> str | None:
        """The source given for value `key` (None: none given)."""
        return next((where for keys, where in self.sources.items() if key in names(keys)), None)


def names(keys: str) -> list[str]:
    """The value names of a `sources` key: "base_lr, batch_size" -> ["base_lr", "batch_size"]."""
    return [k.strip() for k in keys.split(",")]


def training_recipe(cls, image_size: int, vit: bool) -> Recipe | None:
    """The first regime of method class `cls` that a run at `image_size` on a ViT (`vit`) or a
    convolutional backbone takes; None if the method declares none."""
    return next((r for r in getattr(cls, "recipes", ()) if r.matches(image_size, vit)), None)


SOLO_LEARN = "solo-learn 9187ea3"
# solo-learn's training defaults shared by its configurations (a config's own values override)
SOLO_SHARED = dict(
    optimizer="larc", larc_trust_coefficient=0.02, larc_clip=True, exclude_bias_and_norm=True,
    momentum=0.9, lr_scaling="linear", batch_size=256, num_epochs=1000, warmup_epochs=10,
    warmup_lr=3e-5, final_lr=0.0,
)  # fmt: skip
SOLO_SOURCES = {
    "momentum": "solo/args/pretrain.py:161-164 (sgd and lars: momentum 0.9 by default)",
    "lr_scaling": "solo/args/pretrain.py:152-154 (lr x batch_size x devices x nodes / 256)",
    "warmup_epochs, final_lr": "solo/methods/base.py:291,293 (warmup_cosine: warmup_epochs 10, "
    "min_lr 0.0, per step)",
    "warmup_lr": "solo/methods/base.py:292 (warmup_start_lr 3e-5: absolute in solo-learn, "
    "scaled here)",
}


def solo_learn(config: str, note: str, images: str = "small", **values) -> Recipe:
    """A regime after solo-learn's configuration `scripts/pretrain/<config>` (the reproduction,
    named as such, where the official code has none): solo-learn's shared training defaults
    (SOLO_SHARED: its clipped LARS with eta 0.02 excluding biases and norms, which most of its
    configurations use, lr x B/256, 10 warmup epochs from 3e-5, batch 256, 1000 epochs) with
    their sources, then the configuration's own `values` and `sources` (which win); `note`
    says what the reproduction is, in brackets."""
    own = values.pop("sources")
    covered = {k for keys in own for k in names(keys)}
    shared = {keys: where for keys, where in SOLO_SOURCES.items()
              if not set(names(keys)) <= covered}  # fmt: skip
    source = f"{SOLO_LEARN}, scripts/pretrain/{config} {note}"
    return Recipe(source=source, images=images, sources={**own, **shared},
                  **{**SOLO_SHARED, **values})  # fmt: skip
