"""The backbone flags that recipe files give, after main.py's defaults, as `--backbone NAME
--image_size N`: the table scripts pass them on to main_linear.py, so that a probe evaluates the
backbone its pretraining trained (MAE's and I-JEPA's recipes name a ViT).

    python scripts/recipe_backbone.py recipes/short/synthetic.args recipes/short/mae.args
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from main import get_args_parser  # noqa: E402
from utils.misc import parse_with_config  # noqa: E402

if __name__ == "__main__":
    configs = [word for path in sys.argv[1:] for word in ("--config", path)]
    args = parse_with_config(get_args_parser(), configs)
    print("--backbone", args.backbone, "--image_size", args.image_size)
