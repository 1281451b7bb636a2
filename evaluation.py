"""How a pretrained backbone is evaluated, resolved once for main.py's monitors, main_linear.py,
`load_backbone` and export.py alike: the resampling of its resize and crops, a ViT's pooling and
the last blocks its linear probe reads, and which copy of the backbone (the online one or its
EMA), each from the flag where one is given, else the pretraining run's record (its
checkpoint's config.json, an export's JSON), else the method's declaration (`Method.eval_*`,
`Method.pool`); and the evaluation preprocessing of a data set (resize, centre crop, its
normalisation).
"""

from dataclasses import dataclass, field

from methods import METHODS
from transformations import eval_transform
from utils.data import DATASETS, IMAGENET_MEAN_STD

# where each setting lies in a pretraining run's record: (part, key) of its config.json
RECORD_KEYS = {
    "interpolation": ("evaluation", "eval_interpolation"),
    "momentum_backbone": ("evaluation", "eval_momentum_backbone"),
    "last_blocks": ("evaluation", "eval_last_blocks"),
    "pool": ("model", "pool"),
}


@dataclass(frozen=True)
class Evaluation:
    """A backbone's evaluation settings and where each came from (`sources`: `given` for a flag,
    `checkpoint` for the pretraining run's record, `method` for the method's declaration)."""

    interpolation: str  # "bilinear" or "bicubic": the resize and crops
    pool: str | None  # a ViT's features: the class token (None, "token") or the tokens' "mean"
    last_blocks: int  # a ViT's linear probe: the class tokens of its last blocks (DINO: 4)
    momentum_backbone: bool  # the EMA copy (DINO's teacher, I-JEPA's target encoder)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def transform(self, dataset_name: str, image_size: int):
        """The evaluation preprocessing of `dataset_name` at `image_size`."""
        return plain_transform(dataset_name, image_size, self.interpolation)


def method_evaluation(model_name: str) -> dict:
    """The method's official evaluation, as it declares it."""
    cls = METHODS[model_name]
    return {
        "interpolation": cls.eval_interpolation,
        "pool": cls.pool,
        "last_blocks": cls.eval_last_blocks,
        "momentum_backbone": cls.eval_momentum_backbone,
    }


def resolve_evaluation(
    model_name: str, given: dict | None = None, saved: dict | None = None
) -> Evaluation:
    """Each setting: `given` where not None (the flags), else `saved` where it holds the key
    (the pretraining run's values: `recorded_evaluation`), else the method's."""
    values, sources = method_evaluation(model_name), {}
    for key in values:
        sources[key] = "method"
        if saved is not None and key in saved:
            values[key], sources[key] = saved[key], "checkpoint"
        if given is not None and given.get(key) is not None:
            values[key], sources[key] = given[key], "given"
    return Evaluation(**values, sources=sources)


def recorded_evaluation(checkpoint: dict) -> dict:
    """The evaluation settings a pretraining checkpoint recorded (its config.json's values; a
    ViT's pooling only for a ViT)."""
    record, saved = checkpoint["config"], {}
    for key, (part, name) in RECORD_KEYS.items():
        if name in record.get(part, {}):
            saved[key] = record[part][name]["value"]
    return saved


def plain_transform(dataset_name: str, image_size: int, interpolation: str, mean=None, std=None):
    """A data set's evaluation preprocessing: resize (from its native size), centre crop,
    normalise (its own mean and std unless given; ImageNet's for a set this toolkit does not
    know, such as an export's)."""
    info = DATASETS.get(dataset_name)
    default = normalisation(dataset_name)
    return eval_transform(
        image_size=image_size,
        native_size=info.image_size if info is not None else 0,
        mean=default[0] if mean is None else mean,
        std=default[1] if std is None else std,
        interpolation=interpolation,
    )


def normalisation(dataset_name: str) -> tuple[tuple, tuple]:
    """A data set's mean and std; ImageNet's for one this toolkit does not know."""
    info = DATASETS.get(dataset_name)
    return (tuple(info.mean), tuple(info.std)) if info is not None else IMAGENET_MEAN_STD
