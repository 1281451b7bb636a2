"""Small helpers shared by the entry points: clear user errors, flags, seeding, device choice."""

import argparse
import dataclasses
import errno
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
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise UserError(f"--config {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(
            f"--config {path}: not a text file of flags (recipes/ has examples)"
        ) from None
    if any("\0" in line for line in lines):
        raise UserError(f"--config {path}: not a text file of flags (recipes/ has examples)")
    try:
        return [word for line in lines for word in shlex.split(line, comments=True)]
    except ValueError as err:
        raise UserError(f"--config {path}: {err}") from None


def config_paths(argv: list[str] | None) -> list[str]:
    """The --config files of a command line (or of a recipe's words), in order."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    return known.config


def expand_recipes(paths: list[str], chain: tuple[str, ...] = ()) -> list[str]:
    """Every recipe to apply, in order: a recipe that gives `--config OTHER` includes it, OTHER
    applied first so that the including file's own flags win (a relative path is looked for
    beside the including file, then from the working folder); a file that includes itself,
    directly or not, is refused."""
    order = []
    for path in paths:
        beside = os.path.join(os.path.dirname(chain[-1]), path) if chain else path
        if chain and not os.path.isabs(path) and os.path.isfile(beside):
            path = beside
        key = os.path.realpath(path)
        if key in (os.path.realpath(p) for p in chain):
            cycle = " -> ".join([*chain, path])
            raise UserError(f"--config {chain[0]}: the recipes include each other ({cycle})")
        order += expand_recipes(config_paths(read_recipe(path)), (*chain, path))
        order.append(path)
    return order


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse `argv`; each `--config FILE` (a recipe, in order, the ones it includes first:
    expand_recipes) sets the defaults of the flags it gives, so that the command line wins. A
    flag the parser does not know, or a bad value, in a recipe ends in one line naming the file;
    the recipes applied are what args.config records."""
    paths = expand_recipes(config_paths(argv))
    for path in paths:
        words = strip_config(read_recipe(path))
        recipe = ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve")
        recipe.error = lambda message, path=path: parser.exit(  # type: ignore[method-assign]
            2, f"{parser.prog}: error: --config {path}: {message}\n"
        )
        values = recipe.parse_args(words)
        given = {k: v for k, v in vars(values).items() if v != parser.get_default(k)}
        parser.set_defaults(**{k: v for k, v in given.items() if k != "config"})
    args = parser.parse_args(argv)
    if hasattr(args, "config"):
        args.config = paths
    return args


def strip_config(words: list[str]) -> list[str]:
    """A recipe's words without its `--config FILE` includes (expand_recipes applies them)."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("--config="):
            kept.append(word)
    return kept


# a full disk or quota: the run stops with one line, its last checkpoint intact (atomic writes)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def user_message(err: Exception) -> str:
    """The one line of a UserError, also when a loader worker raised it: the DataLoader re-raises
    it in the main process with the worker's traceback inside the message."""
    text = str(err)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = (
            last.split(": ", 1)[1]
            if last.startswith(("utils.misc.UserError", "UserError"))
            else last
        )
    return text


def disk_full(err: BaseException) -> bool:
    """An error of a write that found the disk (or the quota) full: an OSError, or the
    RuntimeError that torch.save raises for it."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL
    text = str(err)
    return isinstance(err, RuntimeError) and ("write failed" in text or "No space left" in text)


def run_cli(main, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Run `main(args)` (after any --config recipe, parse_with_config). A UserError ends the
    program with one line on stderr and exit code 2; so does a full disk (the run's last
    checkpoint stays whole: every write is atomic); a second Ctrl-C or SIGTERM (TrainingGuard)
    with one line and exit code 130."""
    try:
        args = parse_with_config(parser, argv)
    except UserError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        main(args)
    except UserError as err:
        print(f"{parser.prog}: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted: stopped without saving; the last checkpoint, if any, "
            "is intact (--resume auto continues from it)",
            file=sys.stderr,
        )
        sys.exit(130)
    except (OSError, RuntimeError) as err:
        if not disk_full(err):
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(
            f"{parser.prog}: error: no space left on the device{where}: free some space, then "
            "continue with the same command plus --resume auto (the last checkpoint is intact)",
            file=sys.stderr,
        )
        sys.exit(2)


def given_kwargs(fn, kwargs: dict, exclude: tuple[str, ...] = ()) -> dict:
    """The entries of `kwargs` that `fn` takes by name (less `exclude`) and that are not None, so
    a caller can pass every flag and `fn` keeps its own defaults for the ones left unset."""
    accepted = set(inspect.signature(fn).parameters) - set(exclude)
    return {k: v for k, v in kwargs.items() if k in accepted and v is not None}


SEED_RANGE = 2**32  # numpy's seeds; --seed is checked against it (seed_int)


def settings_of(cls, args: argparse.Namespace):
    """The typed part `cls` (a dataclass of settings) of the resolved flags `args`: each field
    from the flag of its name, lists as tuples; a flag absent (the other entry point has none) or
    None takes the field's default."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def seed_int(value: str) -> int:
    """--seed: an integer that every generator takes (numpy's are 0 .. 2^32 - 1)."""
    number = int(value)
    if not 0 <= number < SEED_RANGE:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2^32 - 1, got {value!r}")
    return number


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch; seeds derived from --seed (per process, per resume point)
    are taken modulo 2^32, as numpy requires."""
    seed %= SEED_RANGE
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`cuda` falls back to the CPU with a warning, so the original commands run on a laptop."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("CUDA is not available: running on the CPU instead", stacklevel=2)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(
            f"--device {name!r} is not a device name (use cuda, cuda:N or cpu)"
        ) from err
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not a device to train on (use cuda, cuda:N or cpu)")
    return device


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
