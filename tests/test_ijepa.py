"""I-JEPA (methods/ijepa.py) against its official code (facebookresearch/ijepa 52c1ae9): the
initial weights after src/helper.py `init_model`, and an encoder without a class token in its
features. Masks, loss and EMA: tests/test_masked.py."""

import pytest
import torch

from methods import build_method
from networks.vit import set_pool
from tests.test_masked import KINDS, tiny_vit

DEPTH, DIM = 4, 64


def branch_ends(model) -> list[list[torch.Tensor]]:
    """Per encoder block, then per predictor block: the attention output projection's and the
    second MLP layer's weights (those `fix_init_weight` divides by sqrt(2 x depth))."""
    encoder = model.backbone.residual_projections()
    predictor = [
        (b.self_attention.out_proj.weight, b.mlp[3].weight) for b in model.predictor.blocks
    ]
    return [list(ends) for ends in encoder + predictor]


@KINDS
def test_every_linear_starts_at_std_0_02_whatever_its_depth_as_init_model(kind):
    """init_model (src/helper.py) builds encoder and predictor (whose constructors draw
    truncated N(0, 0.02) and then divide block i's attn.proj and mlp.fc2 by sqrt(2 i)), then
    draws every nn.Linear of both again at truncated N(0, 0.02), zero biases, LayerNorms 1 / 0:
    the depth rescaling is undone. --rescale_init true keeps it (as the short tables' rows were
    measured)."""
    torch.manual_seed(0)
    vit = tiny_vit(32, depth=DEPTH, dim=DIM, kind=kind)
    model = build_method("ijepa", vit, DIM, pred_depth=DEPTH, pred_emb_dim=DIM)
    for ends in branch_ends(model):
        for weight in ends:
            assert weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert weight.abs().max().item() <= 2.0  # torch's and the official cut at +-2
    old = build_method(
        "ijepa", tiny_vit(32, depth=DEPTH, dim=DIM, kind=kind), DIM, pred_depth=DEPTH,
        pred_emb_dim=DIM, rescale_init=True,
    )  # fmt: skip
    ends = branch_ends(old)
    for depth, pair in list(enumerate(ends[:DEPTH], 1)) + list(enumerate(ends[DEPTH:], 1)):
        for weight in pair:
            assert weight.std().item() == pytest.approx(0.02 / (2 * depth) ** 0.5, rel=0.1)


def pooled_features(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluated features (main.py's set_pool with I-JEPA's "mean") of the online and the
    target encoder."""
    features = []
    for backbone in (model.backbone, model.target_backbone):
        set_pool(backbone, "mean", "vit")
        features.append(backbone.eval()(x))
    return features[0], features[1]


def test_the_features_are_those_of_an_encoder_without_a_class_token():
    """The official VisionTransformer has no class token: its output tokens are the patches'
    alone, and the paper's evaluation averages them. Training already leaves it out
    (forward_tokens(cls=False)); the features leave it out of the blocks too, so they do not
    depend on it. --eval_class_token true: it enters the blocks (not the mean), as before."""
    torch.manual_seed(0)
    model = build_method("ijepa", tiny_vit(32, depth=2, dim=32), 32, pred_depth=1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        online, target = pooled_features(model, x)
        no_token = model.backbone.forward_tokens(x, cls=False).mean(dim=1)
        assert torch.allclose(online, no_token, atol=1e-6)
        for vit in (model.backbone, model.target_backbone):
            vit.class_token.normal_()  # whatever its value
        assert torch.equal(pooled_features(model, x)[0], online)
        assert torch.equal(pooled_features(model, x)[1], target)

    torch.manual_seed(0)
    old = build_method(
        "ijepa", tiny_vit(32, depth=2, dim=32), 32, pred_depth=1, eval_class_token=True
    )
    with torch.no_grad():
        before, _ = pooled_features(old, x)
        assert torch.allclose(before, old.backbone.forward_tokens(x)[:, 1:].mean(dim=1), atol=1e-6)
        old.backbone.class_token.normal_()
        assert not torch.allclose(pooled_features(old, x)[0], before, atol=1e-4)


def test_evaluation_reads_from_the_record_whether_the_class_token_enters_the_blocks():
    """A run records `class_token_attends` with its backbone (config.json, the checkpoint), and
    the evaluation of its checkpoint sets it again; a run that recorded none (a backbone other
    than this toolkit's ViTs) keeps the class token in the blocks."""
    from pretrained import vit_settings

    args = {"model_name": "ijepa", "backbone": "vit_tiny"}
    recorded = {"model": {"class_token_attends": {"value": False, "source": "method"}}}
    assert vit_settings({"args": args, "config": recorded})["class_token_attends"] is False
    assert vit_settings({"args": args, "config": {"model": {}}})["class_token_attends"] is True


def test_the_untrained_baseline_takes_the_methods_init_flags_and_only_those(tmp_path, capsys):
    """main_linear.py --random_init builds the backbone as the method initialises it, with the
    hyper-parameters the method lists in `init_flags` (I-JEPA's --rescale_init, as its short
    recipe's rows); another method's, or another pretraining flag, is refused."""
    import json

    import main_linear
    from utils.misc import UserError, run_cli

    base = ["--model_name", "ijepa", "--random_init", "--backbone", "vit_tiny", "--image_size",
            "32", "--dataset_name", "synthetic", "--device", "cpu", "--num_workers", "0",
            "--logs_dir", str(tmp_path)]  # fmt: skip
    run_cli(main_linear.main, main_linear.get_args_parser(),
            [*base, "--rescale_init", "true", "--print_config"])  # fmt: skip
    backbone = json.loads(capsys.readouterr().out)["backbone"]
    assert backbone["rescale_init"] == {"value": True, "source": "command line"}
    with pytest.raises(UserError, match="--pred_depth is a pretraining option"):
        main_linear.main(main_linear.get_args_parser().parse_args([*base, "--pred_depth", "2"]))
    assert not any(tmp_path.iterdir())
