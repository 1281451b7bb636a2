"""The table of method flags (docs/methods.md), generated from the methods' own declarations (each
constructor's `Flag`-annotated arguments, methods/hparams.py, and its view recipe's keyword
defaults with the method's `view_options`), so that no default is typed twice.

    python scripts/method_flags.py [--readme docs/methods.md]

tests/test_hparams.py fails when the docs/methods.md block differs from this script's output.
"""

import argparse
import inspect
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flags.method_help import view_defaults  # noqa: E402
from methods import METHODS  # noqa: E402
from methods.hparams import HyperParameter, hyper_parameters  # noqa: E402
from scripts.readme_block import replace_block  # noqa: E402
from transformations import recipe_name  # noqa: E402

BLOCK = "method_flags"


def shown(name: str, hp: HyperParameter) -> str:
    alias = f" (or `--{hp.flag.alias}`)" if hp.flag.alias else ""
    if hp.default is None:  # a default that depends on the backbone
        return f"`--{name}` ({hp.shown_default()}){alias}"
    return f"`--{name} {hp.shown_default()}`{alias}"


def shown_value(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def table() -> str:
    lines = [
        "| `--model_name` | loss | hyper-parameters (flag and default) | views: recipe and flags |",
        "|---|---|---|---|",
    ]
    for method in sorted(METHODS):
        cls = METHODS[method]
        flags = ", ".join(shown(k, hp) for k, hp in hyper_parameters(cls).items())
        views = ", ".join(
            f"`--{k}`" if v is inspect.Parameter.empty or v is None else f"`--{k} {shown_value(v)}`"
            for k, v in view_defaults(method).items()
        )
        recipe = recipe_name(cls.augmentation)
        lines.append(f"| `{method}` | {cls.loss_summary} | {flags} | {recipe}: {views} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", help="also write the table into this file's block")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.readme:
        replace_block(args.readme, BLOCK, text)


if __name__ == "__main__":
    main()
