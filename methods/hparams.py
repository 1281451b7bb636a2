"""Method hyper-parameters, declared once in each method's constructor signature:

    temperature: Annotated[float, Flag("softmax temperature")] = 0.5,

name, type, default and help text in one place; the command-line flags of main.py, their help
text, the README's table of method flags (scripts/method_flags.py) and the refusal of a flag the
chosen method does not take are all derived from these declarations. A constructor argument
without a `Flag` is not a command-line option (an API-only choice, such as MAE's
`pretrained`).
"""

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from networks.heads import head_init
from utils.misc import (
    add_bool_flag,
    bool_flag,
    non_negative_int,
    positive_float,
    positive_int,
    unit_float,
)


@dataclass(frozen=True)
class Flag:
    """The command-line side of one hyper-parameter.

    help   what it is, without its default (the generated help lists each method's);
    type   the argparse parser of its value (default: from the annotation: a positive int or
           float, or an on/off flag for bool);
    alias  another flag name the method also accepts for it (an official or an older name);
    none   what a default of None means (e.g. "the backbone's feature size")."""

    help: str
    type: Callable[[str], Any] | None = None
    alias: str | None = None
    none: str | None = None


@dataclass(frozen=True)
class HyperParameter:
    name: str
    default: Any
    flag: Flag
    kind: type  # int, float, bool or str (str needs a Flag.type): the annotation without None

    def parse(self) -> Callable[[str], Any]:
        if self.flag.type is not None:
            return self.flag.type
        return {int: positive_int, float: positive_float, bool: bool_flag}[self.kind]

    def shown_default(self) -> str:
        if self.default is None:
            return self.flag.none or "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def _base_type(annotation) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def hyper_parameters(cls) -> dict[str, HyperParameter]:
    """The hyper-parameters `cls.__init__` declares with a `Flag`, by name, in signature order."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    found = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        base, *extras = typing.get_args(hint)
        flag = next((e for e in extras if isinstance(e, Flag)), None)
        if flag is not None:
            found[name] = HyperParameter(name, param.default, flag, _base_type(base))
    return found


def accepted_flags(cls) -> set[str]:
    """The flag names (hyper-parameters and their aliases) of method class `cls`."""
    found = set()
    for hp in hyper_parameters(cls).values():
        found |= {hp.name} | ({hp.flag.alias} if hp.flag.alias else set())
    return found


def resolve_aliases(cls, kwargs: dict) -> dict:
    """`kwargs` with each alias the method declares (given, not None) under its own name; both
    given is a mistake, as the same value twice."""
    kwargs = dict(kwargs)
    for hp in hyper_parameters(cls).values():
        alias = hp.flag.alias
        if alias is None or kwargs.get(alias) is None:
            continue
        if kwargs.get(hp.name) is not None:
            raise ValueError(f"--{hp.name} and --{alias} are the same option: give one")
        kwargs[hp.name] = kwargs.pop(alias)
    return kwargs


def _flag_help(declared: list[tuple[str, HyperParameter]], aliased: list[tuple[str, str]]) -> str:
    """One help text for a flag several methods declare: each distinct description once, with
    the methods that use it and their defaults; then the methods that take it as an alias."""
    by_text: dict[str, list[str]] = {}
    for method, hp in sorted(declared, key=lambda item: item[0]):
        by_text.setdefault(hp.flag.help, []).append(f"{method}: {hp.shown_default()}")
    parts = [f"{text} (default {'; '.join(items)})" for text, items in by_text.items()]
    parts += [f"{method}: another name for --{target}" for method, target in sorted(aliased)]
    return " | ".join(parts).replace("%", "%%")


def add_method_flags(parser, methods: dict[str, type]) -> list[str]:
    """One flag per hyper-parameter name over all `methods` (default None: each method keeps
    its own), in a group of `parser`; returns the flag names. Methods that share a name must
    share its type (a developer's mistake otherwise, reported at start-up)."""
    declared: dict[str, list[tuple[str, HyperParameter]]] = {}
    aliased: dict[str, list[tuple[str, str]]] = {}
    for method, cls in methods.items():
        for hp in hyper_parameters(cls).values():
            declared.setdefault(hp.name, []).append((method, hp))
            if hp.flag.alias:
                aliased.setdefault(hp.flag.alias, []).append((method, hp.name))
    group = parser.add_argument_group("method hyper-parameters (default: the method's own)")
    for name in sorted(declared.keys() | aliased.keys()):
        uses = declared.get(name, [])
        help = _flag_help(uses, aliased.get(name, []))
        if not uses:  # an alias only: the type of what it stands for
            method, target = aliased[name][0]
            uses = [(method, hyper_parameters(methods[method])[target])]
        parsers = {hp.parse() for _, hp in uses}
        kinds = {hp.kind for _, hp in uses}
        if len(parsers) > 1 or len(kinds) > 1:
            raise TypeError(f"--{name}: methods {[m for m, _ in uses]} declare different types")
        if kinds == {bool}:
            add_bool_flag(group, f"--{name}", help, default=None)
        else:
            group.add_argument(f"--{name}", type=parsers.pop(), default=None, help=help)
    return sorted(declared.keys() | aliased.keys())


# descriptions several methods share (each method declares its own default)
PROJ_HIDDEN_DIM = Flag("projector hidden size")
PROJ_WIDTH_OF_FEATURES = Flag("projector hidden size", none="the backbone's feature size")
PROJ_DIM = Flag("projector output size")
PRED_HIDDEN_DIM = Flag("predictor hidden size")
TEMPERATURE = Flag("softmax temperature")
EMA_MOMENTUM = Flag(
    "EMA momentum of the target network at step 0, rising to 1 on a cosine", unit_float
)
CONCAT_VIEWS = Flag(
    "both views through the network as one batch (BatchNorm statistics over both, one pass) "
    "instead of one call per view as the official code"
)
HEAD_INIT = Flag(
    "initialisation of the heads' Linear layers: pytorch (nn.Linear's uniform), normal "
    "(N(0, 0.01), biases 0: SimCLR's), truncated_normal (N(0, 1/fan_in) cut at 2 sd, biases 0: "
    "haiku's, BYOL's)",
    head_init,
)
QUEUE_SIZE = Flag("past embeddings kept in a queue", non_negative_int)
