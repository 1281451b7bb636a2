"""The tables of the methods, generated from their own declarations so that nothing is typed
twice: the flags of each (docs/methods.md: each constructor's `Flag`-annotated arguments,
methods/hparams.py, and its view recipe's keyword defaults with the method's `view_options`),
and the README's list of them (class, loss, views, file).

    python scripts/method_flags.py [--readme docs/methods.md] [--list README.md]

tests/test_hparams.py fails when either block differs from this script's output.
"""

import argparse
import inspect
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from flags.method_help import view_defaults  # noqa: E402
from methods import METHODS  # noqa: E402
from methods.hparams import HyperParameter, hyper_parameters  # noqa: E402
from scripts.readme_block import replace_block  # noqa: E402
from transformations import recipe_name  # noqa: E402

BLOCK, LIST_BLOCK = "method_flags", "methods"


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


def method_list() -> str:
    """The README's table: each method's flag name, class, loss, views and file."""
    lines = ["| `--model_name` | class | loss | views | file |", "|---|---|---|---|---|"]
    for method in sorted(METHODS):
        cls = METHODS[method]
        path = os.path.relpath(inspect.getfile(cls), ROOT)
        recipe = recipe_name(cls.augmentation)
        lines.append(f"| `{method}` | {cls.__name__} | {cls.loss_summary} | {recipe} | `{path}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", help="also write the table of flags into this file's block")
    parser.add_argument("--list", help="also write the list of methods into this file's block")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.readme:
        replace_block(args.readme, BLOCK, text)
    if args.list:
        replace_block(args.list, LIST_BLOCK, method_list())


if __name__ == "__main__":
    main()
