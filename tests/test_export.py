"""export.py and pretrained.load_backbone: the backbone leaves the toolkit as torchvision, timm,
TorchScript or ONNX files that give its features, and comes back (main_linear.py --ckpt,
main.py --init_backbone, load_backbone)."""

import json
import os
import sys

import pytest
import torch
import torchvision
from PIL import Image

import export
import main
import main_linear
from methods import METHODS, build_method
from networks import build_backbone
from pretrained import export_json, load_backbone, read_backbone
from transformations import pretrain_transform
from utils.accel import Speed
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.data import DATASETS
from utils.misc import UserError, run_cli


def make_checkpoint(path, backbone: str = "resnet18", image_size: int = 32, method="byol") -> dict:
    """A pretraining checkpoint as main.py writes it (untrained weights, a perturbed EMA copy so
    that the two backbones differ, BatchNorm statistics away from their defaults)."""
    net, feat_dim = build_backbone(backbone, image_size)
    model = build_method(method, net, feat_dim, proj_hidden_dim=64, pred_hidden_dim=64)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor) + (0.05 if "target" in name else 0))
    args = {"model_name": method, "backbone": backbone, "image_size": image_size}
    args["dataset_name"] = "synthetic"
    state = {"args": args, "kind": "pretrain", "epoch": 3, "model": model.state_dict()}
    state["config"] = {"model": {}}  # a record of nothing more: the method's declarations apply
    save_checkpoint(state, str(path))
    return state


def run_export(ckpt, output, fmt, *extra):
    argv = ["--ckpt", str(ckpt), "--format", fmt, "--output", str(output), *extra]
    return export.main(export.get_args_parser().parse_args(argv))


def features(model, size: int, count: int = 2) -> torch.Tensor:
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(images)  # in eval mode already


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    make_checkpoint(path)
    return path


def test_torchvision_export_of_a_cifar_stem_resnet(small_ckpt, tmp_path):
    """The JSON names the two layers that differ from torchvision's resnet18 and the absent
    classifier; its load_with lines rebuild them and give the toolkit's features."""
    ours, info = load_backbone(str(small_ckpt))
    record = run_export(small_ckpt, tmp_path / "r18.pth", "torchvision")
    assert record["absent_keys"] == ["fc.weight", "fc.bias"]
    assert list(record["differing_shapes"]) == ["conv1.weight"]
    assert record["differing_layers"][1] == "maxpool: removed"
    assert (record["feat_dim"], record["epoch"], record["model_name"]) == (512, 3, "byol")
    assert json.load(open(export_json(str(tmp_path / "r18.pth")))) == json.loads(json.dumps(record))
    plain = torchvision.models.resnet18()
    with pytest.raises(RuntimeError, match="size mismatch for conv1.weight"):
        plain.load_state_dict(torch.load(tmp_path / "r18.pth"), strict=False)
    scope = {"path": str(tmp_path / "r18.pth")}
    exec("\n".join(record["load_with"]), scope)  # what a user pastes
    assert torch.allclose(features(scope["model"].eval(), 32), features(ours, 32), atol=1e-6)


def test_torchvision_and_timm_exports_of_a_standard_resnet(tmp_path):
    """At ImageNet sizes the export loads into torchvision's and timm's resnet18 as documented:
    strict=False, only the classifier absent; same features once it is an identity."""
    make_checkpoint(tmp_path / "last.pt", image_size=96)
    ours, _ = load_backbone(str(tmp_path / "last.pt"))
    run_export(tmp_path / "last.pt", tmp_path / "tv.pth", "torchvision")
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(torch.load(tmp_path / "tv.pth"), strict=False)
    assert (missing, unexpected) == (["fc.weight", "fc.bias"], [])
    model.fc = torch.nn.Identity()
    assert torch.allclose(features(model.eval(), 96), features(ours, 96), atol=1e-6)

    timm = pytest.importorskip("timm")
    record = run_export(tmp_path / "last.pt", tmp_path / "timm.pth", "timm")
    assert record["absent_keys"] == [] and record["differing_shapes"] == {}
    model = timm.create_model("resnet18", num_classes=0)
    model.load_state_dict(torch.load(tmp_path / "timm.pth"))  # strict
    assert torch.allclose(features(model.eval(), 96), features(ours, 96), atol=1e-5)

    # a timm backbone at 32 px: its small-image stem rebuilt by the JSON's lines
    make_checkpoint(tmp_path / "t.pt", backbone="timm:resnet18", image_size=32)
    ours, _ = load_backbone(str(tmp_path / "t.pt"))
    record = run_export(tmp_path / "t.pt", tmp_path / "t.pth", "timm")
    assert record["load_into"] == "timm.create_model('resnet18', num_classes=0)"
    scope = {"path": str(tmp_path / "t.pth")}
    exec("\n".join(record["load_with"]), scope)
    assert torch.allclose(features(scope["model"].eval(), 32), features(ours, 32), atol=1e-5)


def test_torchscript_and_onnx_give_the_backbones_features(small_ckpt, tmp_path):
    ours, _ = load_backbone(str(small_ckpt))
    record = run_export(small_ckpt, tmp_path / "r18.ts", "torchscript")
    assert record["check"]["max_abs_diff"] <= export.TOLERANCE * record["check"]["max_abs_feature"]
    scripted = torch.jit.load(str(tmp_path / "r18.ts"))
    assert torch.allclose(features(scripted, 32, 5), features(ours, 32, 5), atol=1e-5)
    run_export(small_ckpt, tmp_path / "r18.pt2", "pt2")
    exported = torch.export.load(str(tmp_path / "r18.pt2")).module()
    assert torch.allclose(features(exported, 32, 5), features(ours, 32, 5), atol=1e-5)

    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    record = run_export(small_ckpt, tmp_path / "r18.onnx", "onnx")
    assert record["check"]["checked_with"] == "onnxruntime"
    session = onnxruntime.InferenceSession(str(tmp_path / "r18.onnx"))
    images = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        expected = ours(images)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= export.TOLERANCE * scale


def test_load_backbone_round_trip(small_ckpt, tmp_path):
    """From the checkpoint and from its export: the same weights, eval mode, what it is, and
    the preprocessing; the momentum backbone is the EMA copy."""
    checkpoint = torch.load(small_ckpt, weights_only=False)
    online, info = load_backbone(str(small_ckpt))
    assert not online.training and info.feat_dim == 512
    assert (info.model_name, info.backbone, info.image_size, info.epoch) == (
        "byol",
        "resnet18",
        32,
        3,
    )
    for key, value in online.state_dict().items():
        assert torch.equal(value, checkpoint["model"]["backbone." + key]), key
    target, _ = load_backbone(str(small_ckpt), momentum=True)
    for key, value in target.state_dict().items():
        assert torch.equal(value, checkpoint["model"]["target_backbone." + key]), key

    run_export(small_ckpt, tmp_path / "t.pth", "torchvision", "--momentum_backbone")
    exported, exported_info = load_backbone(str(tmp_path / "t.pth"))
    assert exported_info.momentum_backbone and exported_info.source == str(small_ckpt)
    assert torch.equal(features(exported, 32), features(target, 32))
    image = Image.new("RGB", (50, 40), (200, 10, 10))
    x = info.transform(image)
    red = (200 / 255 - info.mean[0]) / info.std[0]
    assert x.shape == (3, 32, 32) and torch.allclose(x[0], torch.full((32, 32), red))


@pytest.mark.parametrize(
    "method, backbone, size, ema",
    [("dino", "resnet18", 16, "teacher_backbone."), ("ijepa", "vit_tiny", 32, "target_backbone.")],
)
def test_dino_and_ijepa_give_their_ema_copy_by_default_as_their_official_evaluation(
    method, backbone, size, ema, tmp_path
):
    """DINO's eval_linear.py and eval_knn.py read `--checkpoint_key teacher`, I-JEPA's paper
    "the target-encoder for evaluation" (Appendix A.1): so do load_backbone, main_linear.py and
    export.py unless told otherwise (BYOL: the online one, test_load_backbone_round_trip)."""
    state = make_checkpoint(tmp_path / "last.pt", backbone, size, method)
    for momentum, prefix in ((None, ema), (False, "backbone.")):
        backbone, info = load_backbone(str(tmp_path / "last.pt"), momentum=momentum)
        assert info.momentum_backbone == (momentum is None)
        for key, value in backbone.state_dict().items():
            assert torch.equal(value, state["model"][prefix + key]), key
    run_export(tmp_path / "last.pt", tmp_path / "b.pth", "torchvision")
    assert load_backbone(str(tmp_path / "b.pth"))[1].momentum_backbone


def test_main_linear_and_init_backbone_take_an_exported_file(tmp_path, run_dirs):
    make_checkpoint(tmp_path / "last.pt", image_size=16)  # 16 px: the probe's features are cheap
    run_export(tmp_path / "last.pt", tmp_path / "b.pth", "torchvision")
    weights = torch.load(tmp_path / "b.pth")
    flags = ["--dataset_name", "synthetic", "--backbone", "resnet18", "--image_size", "16"]
    flags += ["--device", "cpu", "--num_workers", "0", *run_dirs]

    # main.py: the backbone starts from the file, and so does BYOL's EMA target; SimSiam's
    # zero-initialised residual BatchNorm is not applied over it
    mean, std = DATASETS["synthetic"].mean, DATASETS["synthetic"].std
    for method, copies in (("byol", ("backbone", "target_backbone")), ("simsiam", ("backbone",))):
        args = main.get_args_parser().parse_args(
            [*flags, "--model_name", method, "--init_backbone", str(tmp_path / "b.pth")]
        )
        views = pretrain_transform(METHODS[method].augmentation, image_size=16, mean=mean, std=std)
        model, _, _ = main.build_model(args, torch.device("cpu"), views, Speed.of(args), None)
        for copy in copies:
            state = getattr(model, copy).state_dict()
            assert all(torch.equal(state[k], v) for k, v in weights.items()), (method, copy)

    # main_linear.py: --ckpt an exported file (on a small labelled folder: a quick probe)
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / "data" / split / str(c)).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 16), (100 * c, 50, i)).save(
                    tmp_path / "data" / split / str(c) / f"{i}.png"
                )
    linear = [
        *flags,
        "--model_name",
        "byol",
        "--ckpt",
        str(tmp_path / "b.pth"),
        "--batch_size",
        "8",
    ]
    linear += ["--dataset_name", "imagefolder", "--data_dir", str(tmp_path / "data")]
    linear += ["--num_epochs", "1", "--precompute_features"]
    results = main_linear.main(main_linear.get_args_parser().parse_args(linear))
    assert results["pretrain_checkpoint"] == str(tmp_path / "b.pth")
    assert results["pretrain_epochs"] == 3


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("linear_checkpoint", "not a pretraining one"),
        ("exists", "exists: choose another file or pass --overwrite"),
        ("own_network", "small_cnn is not a torchvision model"),
        ("timm_missing", "needs the timm package"),
        ("onnx_missing", "needs onnx and onnxscript"),
        ("onnx_file", "runs without this toolkit's code"),
        ("momentum_of_export", "drop --momentum_backbone"),
        ("wrong_backbone", "holds a resnet18 backbone, but --backbone is resnet34"),
        # files that are not what they claim, outputs that would replace a run's files
        ("output_is_a_folder", "is a folder: give a file name"),
        ("onto_a_checkpoint", "a run's checkpoint or record"),
        ("onto_a_record", "a run's checkpoint or record"),
        ("json_without_format", "lacks format"),
        ("export_not_a_state_dict", "not a state dict"),
        ("args_without_image_size", "incomplete (no image_size)"),
    ],
)
def test_bad_exports_are_one_line_errors(case, message, small_ckpt, tmp_path, monkeypatch, capsys):
    ckpt, output, fmt, extra = small_ckpt, tmp_path / "out.pth", "torchvision", []
    entry = export
    if case == "linear_checkpoint":
        state = torch.load(small_ckpt, weights_only=True)
        save_checkpoint({**state, "kind": "linear"}, str(tmp_path / "linear.pt"))
        ckpt = tmp_path / "linear.pt"
    elif case == "exists":
        output.write_text("keep me")
    elif case == "own_network":
        make_checkpoint(tmp_path / "small.pt", backbone="small_cnn", image_size=16)
        ckpt = tmp_path / "small.pt"
    elif case in ("timm_missing", "onnx_missing"):
        fmt = case.split("_")[0]
        monkeypatch.setitem(sys.modules, "timm" if fmt == "timm" else "onnxscript", None)
    elif case == "onnx_file":  # what export.py writes for ONNX: the file and its JSON
        (tmp_path / "first").write_bytes(b"onnx")
        record = {"ssl_toolkit_export": 1, "format": "onnx"}
        (tmp_path / "first.json").write_text(json.dumps(record))
        ckpt = tmp_path / "first"
    elif case == "momentum_of_export":
        run_export(small_ckpt, tmp_path / "first", fmt)
        ckpt, extra = tmp_path / "first", ["--momentum_backbone"]
    elif case == "output_is_a_folder":
        output.mkdir()
    elif case in ("onto_a_checkpoint", "onto_a_record"):  # even with --overwrite
        make_checkpoint(tmp_path / "run" / "last.pt")
        (tmp_path / "run" / "metrics.csv").write_text("kind,epoch,step\n")
        ckpt = tmp_path / "run" / "last.pt"
        output = ckpt if case == "onto_a_checkpoint" else tmp_path / "run" / "metrics.csv"
        extra = ["--overwrite"]
    elif case in ("json_without_format", "export_not_a_state_dict"):
        run_export(small_ckpt, tmp_path / "first", fmt)
        ckpt = tmp_path / "first"
        if case == "json_without_format":
            record = json.loads((tmp_path / "first.json").read_text())
            del record["format"]
            (tmp_path / "first.json").write_text(json.dumps(record))
        else:
            torch.save([torch.zeros(2)], ckpt)
    elif case == "args_without_image_size":
        state = torch.load(small_ckpt, weights_only=True)
        del state["args"]["image_size"]
        save_checkpoint(state, str(tmp_path / "partial.pt"))
        ckpt = tmp_path / "partial.pt"
    argv = ["--ckpt", str(ckpt), "--format", fmt, "--output", str(output), *extra]
    if case == "wrong_backbone":
        entry = main
        argv = ["--backbone", "resnet34", "--dataset_name", "synthetic", "--device", "cpu"]
        argv += ["--init_backbone", str(small_ckpt), "--logs_dir", str(tmp_path / "l")]
    with pytest.raises(SystemExit) as exit_:
        run_cli(entry.main, entry.get_args_parser(), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    if case == "exists":
        assert output.read_text() == "keep me"
    elif case in ("onto_a_checkpoint", "onto_a_record"):
        assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["kind"] == "pretrain"
        assert (tmp_path / "run" / "metrics.csv").read_text() == "kind,epoch,step\n"
    elif case == "output_is_a_folder":
        assert output.is_dir() and not list(output.iterdir())
    elif case != "wrong_backbone":
        assert not output.exists()


def test_read_backbone_reads_both_kinds_of_file(small_ckpt, tmp_path):
    run_export(small_ckpt, tmp_path / "b.pth", "torchvision")
    from_ckpt, info = read_backbone(str(small_ckpt))
    from_file, file_info = read_backbone(str(tmp_path / "b.pth"))
    assert from_ckpt.keys() == from_file.keys()
    assert all(torch.equal(from_ckpt[k], from_file[k]) for k in from_ckpt)
    assert (file_info.model_name, file_info.epoch, file_info.mean) == ("byol", 3, info.mean)
    assert info.interpolation == file_info.interpolation == "bicubic"  # BYOL's evaluation
    record = json.load(open(export_json(str(tmp_path / "b.pth"))))
    record["ssl_toolkit_export"] = 1  # another version's export: one line, export again
    json.dump(record, open(export_json(str(tmp_path / "b.pth")), "w"))
    with pytest.raises(UserError, match="export format 1, and this code reads format 2: export"):
        read_backbone(str(tmp_path / "b.pth"))
    with pytest.raises(UserError, match="not a checkpoint"):
        (tmp_path / "junk.pt").write_text("hello")
        read_backbone(str(tmp_path / "junk.pt"))


def test_the_readme_example_computes_features_of_a_folder(small_ckpt, tmp_path):
    """The README's Python example, run as written but for its two paths."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    lines = [line for line in code.splitlines() if line and not line.startswith(("import", "from"))]
    assert "load_backbone(" in code and len(lines) <= 5
    for i in range(3):
        Image.new("L" if i else "RGBA", (40 + i, 30)).save(tmp_path / f"{i}.png")
    code = code.replace("ckpts/photos/last.pt", str(small_ckpt)).replace(
        "~/more_photos", str(tmp_path)
    )
    scope = {}
    exec(code, scope)
    assert scope["features"].shape == (3, scope["info"].feat_dim)
