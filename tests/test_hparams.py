"""Each method declares its hyper-parameters once (methods/hparams.py): the flags, their help,
aliases, the refusal of other methods' flags and the README table all follow the declaration."""

import inspect
import os
from typing import Annotated

import pytest

import main
from methods import METHODS, build_method
from methods.hparams import Flag, add_method_flags, hyper_parameters
from networks import build_backbone
from tests.conftest import backbone_for
from utils.misc import ArgumentParser, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_ONLY = {
    "mae": {"pretrained"},
    "ijepa": {"pretrained"},
    "mocov3": {"pretrained"},
    "dino": {"pretrained"},
    "dinov2": {"pretrained"},
}  # constructor choices that are not command-line flags


def parse(*argv):
    return main.get_args_parser().parse_args(list(argv))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_constructor_argument_is_a_declared_flag_unset_by_default(name):
    taken = set(inspect.signature(METHODS[name]).parameters) - {"backbone", "feat_dim"}
    declared = hyper_parameters(METHODS[name])
    assert set(declared) == taken - API_ONLY.get(name, set())
    args = parse("--model_name", name)
    assert all(getattr(args, key) is None for key in declared)  # None: the method's default
    model = build_method(name, *build_backbone(*backbone_for(name)), **vars(args))
    for key, hp in declared.items():  # an unset flag leaves the declared default in place
        if hasattr(model, key) and hp.default is not None:
            assert getattr(model, key) == hp.default, key


def test_the_help_lists_each_methods_default_from_its_declaration():
    help_text = " ".join(main.get_args_parser().format_help().split())
    assert (
        "softmax temperature (default dcl: 0.5; dclw: 0.5; mocov2: 0.2; mocov3: 1.0 for CNNs, "
        "0.2 for ViTs, as official; nnclr: 0.1; simclr: 0.5; supcon: 0.1; swav: 0.1) | student "
        "softmax temperature (default dino: 0.1; dinov2: 0.1)" in help_text
    )
    assert "dino: another name for --out_dim" in help_text
    assert "swav: another name for --queue_size" in help_text


def small(name: str, *argv: str):
    args = parse("--model_name", name, "--proj_hidden_dim", "16", "--proj_dim", "8", *argv)
    main.check_method_flags(args)
    return build_method(name, *build_backbone("small_cnn", 16), **vars(args))


def test_an_alias_sets_the_hyper_parameter_it_stands_for():
    for flag in ("--out_dim", "--num_prototypes"):  # DINO's official name and the old one
        dino = small("dino", flag, "24")
        assert dino.head.last_layer.out_features == 24 and dino.center.shape == (24,)
    for flag in ("--queue_size", "--queue_length"):  # SwAV's official name is the second
        assert small("swav", "--num_prototypes", "10", flag, "32").queue.shape == (2, 32, 8)
    with pytest.raises(ValueError, match="the same option"):
        small("dino", "--out_dim", "24", "--num_prototypes", "24")


@pytest.mark.parametrize(
    "name, flag", [("mocov2", "--queue_length"), ("swav", "--out_dim"), ("simclr", "--lambd")]
)
def test_a_flag_or_alias_of_another_method_is_refused(name, flag):
    with pytest.raises(UserError, match=f"{flag}: not a flag of --model_name {name}"):
        main.check_method_flags(parse("--model_name", name, flag, "1"))


def test_methods_that_share_a_name_must_share_its_type():
    class A:
        def __init__(self, backbone, feat_dim, size: Annotated[int, Flag("a size")] = 1):
            pass

    class B:
        def __init__(self, backbone, feat_dim, size: Annotated[float, Flag("a size")] = 0.5):
            pass

    add_method_flags(ArgumentParser(), {"a": A})
    with pytest.raises(TypeError, match="--size"):
        add_method_flags(ArgumentParser(), {"a": A, "b": B})


def test_a_value_the_method_refuses_is_one_line_before_anything_is_written(run_dirs, tmp_path):
    args = parse(
        *["--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16"],
        *["--device", "cpu", "--num_workers", "0", "--limit", "32", "--batch_size", "16"],
        *["--model_name", "mocov2", "--queue_size", "0", *run_dirs],
    )
    with pytest.raises(UserError, match="--model_name mocov2: mocov2 needs a queue"):
        main.main(args)
    assert not os.path.exists(tmp_path / "logs")


def test_the_readme_table_of_method_flags_is_generated_from_the_declarations():
    from scripts.method_flags import table

    with open(os.path.join(ROOT, "docs", "methods.md")) as f:
        readme = f.read()
    block = readme.split("<!-- method_flags:begin -->\n")[1].split("\n<!-- method_flags:end -->")[0]
    assert block == table(), "run: python scripts/method_flags.py --readme docs/methods.md"
    from scripts.method_flags import method_list

    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("<!-- methods:begin -->\n")[1].split("\n<!-- methods:end -->")[0]
    assert block == method_list(), "run: python scripts/method_flags.py --list README.md"


def test_a_new_method_needs_only_its_class_for_its_flags_help_refusals_and_tables(monkeypatch):
    """What adding a method takes: a Method subclass in the registry whose constructor declares a
    new hyper-parameter. Nothing else is edited, yet main.py parses and documents its flag, other
    methods refuse it, and the tables list it."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts"))  # the scripts import their helpers so
    from method_flags import table
    from methods_table import method_flags

    from methods import Method

    class Toy(Method):
        loss_summary = "`toy_loss`"

        def __init__(
            self, backbone, feat_dim, sharpness: Annotated[float, Flag("how sharp")] = 2.0
        ):
            super().__init__()
            self.backbone, self.sharpness = backbone, sharpness

    monkeypatch.setitem(METHODS, "toy", Toy)
    parser = main.get_args_parser()
    assert "how sharp (default toy: 2)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--model_name", "toy", "--sharpness", "3"])
    main.check_method_flags(args)
    assert build_method("toy", *build_backbone("small_cnn", 16), **vars(args)).sharpness == 3.0
    with pytest.raises(UserError, match="--sharpness: not a flag of --model_name simclr"):
        main.check_method_flags(parser.parse_args(["--model_name", "simclr", "--sharpness", "3"]))
    assert "| `toy` | `toy_loss` | `--sharpness 2` |" in table()
    assert method_flags("toy")[0] == "sharpness"
