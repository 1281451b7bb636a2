"""The methods' training recipes (docs/fidelity.md), generated from their declarations
(`recipes` of each method class, methods/recipe.py): per method and regime, each value the
recipe sets beside the official file and line it comes from.

    python scripts/recipes_table.py [--readme docs/fidelity.md]

tests/test_recipes.py fails when the docs/fidelity.md block differs from this script's output.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from methods import METHODS  # noqa: E402
from methods.recipe import names  # noqa: E402
from scripts.readme_block import publish  # noqa: E402

BLOCK = "recipes"


def shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return " ".join(shown(v) for v in value)
    return "none" if value is None else str(value)


def table() -> str:
    """One section per method: a table per regime, one row per group of values that share a
    source."""
    lines = []
    for method in sorted(METHODS):
        for recipe in METHODS[method].recipes:
            lines += [f"**{method}**, {recipe.regime()}: {recipe.source}", ""]
            lines += ["| settings | source |", "|---|---|"]
            values = recipe.values()
            for keys, where in recipe.sources.items():
                given = [k for k in names(keys) if k in values]
                if given:
                    shown_values = ", ".join(f"`{k}` {shown(values[k])}" for k in given)
                    lines.append(f"| {shown_values} | {where.replace('|', '/')} |")
            for epochs, preset in sorted(recipe.presets.items()):  # by the schedule's length
                shown_values = ", ".join(f"`{k}` {shown(v)}" for k, v in preset.items())
                lines.append(f"| from {epochs} epochs: {shown_values} | {recipe.preset_source} |")
            lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", help="also write the table into this file's block")
    publish(table(), None, "", parser.parse_args().readme, BLOCK)


if __name__ == "__main__":
    main()
