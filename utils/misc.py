"""Small helpers shared by the entry points: clear user errors, flags, seeding, device choice."""

import argparse
import inspect
import os
import random
import shlex
import subprocess
import sys
import warnings

import numpy as np
import torch


class UserError(Exception):
    """A mistake in the user's input (flag, path, checkpoint): shown as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage dump) and exits with code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bool_flag(value: str) -> bool:
    """Parse 'true/false/1/0/yes/no/on/off' so that a boolean flag can be switched both ways."""
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def add_bool_flag(parser, name: str, help: str, default: bool = False) -> None:
    """A boolean flag that `--name` alone switches on and `--name false` switches off."""
    parser.add_argument(name, type=bool_flag, nargs="?", const=True, default=default, help=help)


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def unit_float(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return number


def read_recipe(path: str) -> list[str]:
    """The command-line words of a recipe file (recipes/): flags as typed on a command line,
    any number per line, `#` starting a comment."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise UserError(f"--config {path}: cannot read it ({err.strerror})") from None
    try:
        return [word for line in lines for word in shlex.split(line, comments=True)]
    except ValueError as err:
        raise UserError(f"--config {path}: {err}") from None


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse `argv`; each `--config FILE` (a recipe, in order) first sets the defaults of the
    flags it gives, so that the command line wins. A flag the parser does not know, or a bad
    value, in a recipe ends in one line naming the file."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for path in known.config:
        words = read_recipe(path)
        recipe = ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve")
        recipe.error = lambda message, path=path: parser.exit(  # type: ignore[method-assign]
            2, f"{parser.prog}: error: --config {path}: {message}\n"
        )
        values = recipe.parse_args(words)
        parser.set_defaults(**{k: v for k, v in vars(values).items() if v != parser.get_default(k)})
    return parser.parse_args(argv)


def run_cli(main, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Run `main(args)` (after any --config recipe, parse_with_config); a UserError ends the
    program with one line on stderr and exit code 2."""
    try:
        args = parse_with_config(parser, argv)
    except UserError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        main(args)
    except UserError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


def given_kwargs(fn, kwargs: dict, exclude: tuple[str, ...] = ()) -> dict:
    """The entries of `kwargs` that `fn` takes by name (less `exclude`) and that are not None, so
    a caller can pass every flag and `fn` keeps its own defaults for the ones left unset."""
    accepted = set(inspect.signature(fn).parameters) - set(exclude)
    return {k: v for k, v in kwargs.items() if k in accepted and v is not None}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`cuda` falls back to the CPU with a warning, so the original commands run on a laptop."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("CUDA is not available: running on the CPU instead", stacklevel=2)
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(
            f"--device {name!r} is not a device name (use cuda, cuda:N or cpu)"
        ) from err


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def registrar(registry: dict, kind: str):
    """The `@register("name")` decorator of a registry (methods, backbones, optimizers): it
    files the decorated class or function under `name`, once."""

    def register(name: str):
        def decorator(obj):
            if name in registry:
                raise ValueError(f"{kind} {name!r} registered twice")
            registry[name] = obj
            return obj

        return decorator

    return register
