"""The backbone flags that recipe files give, after main.py's defaults, as `--backbone NAME
--image_size N`: the table scripts pass them on to main_linear.py, so that a probe evaluates the
backbone its pretraining trained (MAE's and I-JEPA's recipes name a ViT).

    python scripts/recipe_backbone.py recipes/short/synthetic.args recipes/short/mae.args
    python scripts/recipe_backbone.py --each recipes/cifar10/mae.args recipes/cifar10/simclr.args
        one line per file, read on its own: `mae --backbone vit_small --image_size 32`, ...
        (one python start for a whole script: importing main costs seconds)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from main import get_args_parser  # noqa: E402
from utils.misc import parse_with_config  # noqa: E402


def backbone_flags(*paths: str) -> str:
    """`--backbone NAME --image_size N` after the recipe files `paths`, in order."""
    args = parse_with_config(get_args_parser(), [w for path in paths for w in ("--config", path)])
    return f"--backbone {args.backbone} --image_size {args.image_size}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--each"]:
        for path in sys.argv[2:]:
            print(os.path.splitext(os.path.basename(path))[0], backbone_flags(path))
    else:
        print(backbone_flags(*sys.argv[1:]))
