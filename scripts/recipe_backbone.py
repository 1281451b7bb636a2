"""The backbone flags that recipe files give, after main.py's defaults, as `--backbone NAME
--image_size N`: the table scripts pass them on to main_linear.py, so that a probe evaluates the
backbone its pretraining trained (MAE's and I-JEPA's recipes name a ViT).

    python scripts/recipe_backbone.py recipes/short/synthetic.args recipes/short/mae.args
    python scripts/recipe_backbone.py --each recipes/cifar10/mae.args recipes/cifar10/simclr.args
        one line per file, read on its own: `mae --backbone vit_small --image_size 32`, ...
        (one python start for a whole script: importing main costs seconds)
    python scripts/recipe_backbone.py --init ijepa SHARED.args recipes/short/ijepa.args
        followed by the method's `init_flags` the files give (`--rescale_init true ...`): a probe
        of the untrained backbone (--random_init) initialised as the pretraining was
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from main import get_args_parser  # noqa: E402
from methods import METHODS  # noqa: E402
from utils.misc import parse_with_config  # noqa: E402


def backbone_flags(*paths: str, method: str | None = None) -> str:
    """`--backbone NAME --image_size N` after the recipe files `paths`, in order; with `method`,
    then its `init_flags` that the files set."""
    args = parse_with_config(get_args_parser(), [w for path in paths for w in ("--config", path)])
    words = [f"--backbone {args.backbone} --image_size {args.image_size}"]
    for key in METHODS[method].init_flags if method else ():
        value = getattr(args, key)
        if value is not None:
            words.append(f"--{key} {str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(words)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--init"]:
        print(backbone_flags(*sys.argv[3:], method=sys.argv[2]))
    elif sys.argv[1:2] == ["--each"]:
        for path in sys.argv[2:]:
            print(os.path.splitext(os.path.basename(path))[0], backbone_flags(path))
    else:
        print(backbone_flags(*sys.argv[1:]))
