"""Export the pretrained backbone of a main.py checkpoint for use outside this toolkit.

    python export.py --ckpt ckpts/run/last.pt --format torchvision --output resnet18.pth
    python export.py --ckpt ckpts/run/last.pt --format onnx --output resnet18.onnx

Writes the backbone alone (the trained one, or its EMA copy: --momentum_backbone, by default
for DINO's teacher, as its evaluation) and `<output>.json` beside it: method, backbone, image
size, normalisation mean/std, feature size, source checkpoint and epoch, git commit, and for
each format how to load the file.

Formats:
  torchvision  the state dict, loadable into the torchvision model of the same name with
               `load_state_dict(weights, strict=False)`: the JSON lists the keys that are absent
               (the classifier: the backbone ends at the pooled features) and the layers whose
               shapes differ (the small-image stem of a 32 px backbone, which `load_with`
               rebuilds); main_linear.py --ckpt, main.py --init_backbone and
               pretrained.load_backbone read the file directly.
  timm         the same, for `timm.create_model(name, num_classes=0)`: timm backbones, and this
               toolkit's ResNets (timm's ResNets use torchvision's layer names); a ViT's
               --vit_layerscale as timm's `init_values`. A ViT's --vit_registers have no place
               in either library's model: export such a backbone as pt2, onnx or torchscript.
  torchscript  `torch.jit.trace` at --image_size: `torch.jit.load(file)` needs no Python code
               (PyTorch 2.10+ deprecates TorchScript in favour of torch.export: pt2).
  pt2          `torch.export` with a dynamic batch size: `torch.export.load(file).module()`.
  onnx         the dynamo-based ONNX exporter with a dynamic batch size (needs `onnx` and
               `onnxscript`); checked with onnxruntime when installed, else onnx's reference
               evaluator.
TorchScript and ONNX files are checked to give the backbone's features on a random batch, to
within TOLERANCE of the features' largest magnitude.
"""

import json
import os
import warnings
import zipfile

import torch
from torch import nn

from networks import SMALL_IMAGE_SIZE
from networks.vit import VIT_SIZES, patch_size_for
from pretrained import EXPORT_TAG, EXPORT_VERSION, build_pretrained, export_json, read_backbone
from utils.checkpoint import atomic_file, safe_load
from utils.misc import ArgumentParser, UserError, add_bool_flag, git_sha, run_cli
from utils.runfolder import RECORDS

FORMATS = ("torchvision", "timm", "torchscript", "pt2", "onnx")
TOLERANCE = 1e-4  # relative to the largest feature magnitude; float32 rounding is ~1e-6


def get_args_parser(add_help: bool = True) -> ArgumentParser:
    parser = ArgumentParser("Export a pretrained backbone", add_help=add_help)
    parser.add_argument("--ckpt", required=True, help="a main.py checkpoint (last.pt)")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="torchvision or timm: a state dict for that library's model; torchscript (deprecated "
        "by PyTorch), pt2 (torch.export) or onnx: a model that runs without this toolkit",
    )
    parser.add_argument("--output", required=True, help="the file to write (and FILE.json)")
    add_bool_flag(
        parser,
        "--momentum_backbone",
        "the EMA backbone (BYOL's and MoCo's target, DINO's teacher) (default: the one its "
        "method's official evaluation reads: DINO's teacher, the online one of the others)",
        default=None,
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output written by export.py (never a run's checkpoint or "
        "record) (default: refuse)",
    )
    return parser


def is_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint of main.py or main_linear.py (read as data, mapped)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        state = safe_load(path, mmap=True)
    except Exception:  # what cannot be read as data is no checkpoint of this toolkit's
        return False
    return isinstance(state, dict) and "kind" in state and "model" in state


def check_output(path: str, overwrite: bool) -> None:
    """--output must be a file name that replaces nothing but, with --overwrite, an earlier
    export: never a folder, a run's checkpoint or record, or the JSON of either."""
    for target in (path, export_json(path)):
        if os.path.isdir(target):
            raise UserError(f"--output {path}: {target} is a folder: give a file name")
    name = os.path.basename(path)
    record = name in ("last.pt", "args.json", "metrics.csv", *RECORDS) or (
        name.startswith("epoch_") and name.endswith(".pt")
    )
    if os.path.exists(path) and (record or is_checkpoint(path)):
        raise UserError(
            f"--output {path}: that file is a run's checkpoint or record (main.py, "
            "main_linear.py), which an export never replaces: choose another file name"
        )
    if os.path.exists(path) and not overwrite:
        raise UserError(f"--output {path} exists: choose another file or pass --overwrite")


def reference_model(
    backbone: str, image_size: int, fmt: str, heads: int | None = None, layerscale: float = 0.0
) -> tuple[nn.Module, str]:
    """The model of another library that the exported weights load into, and how to build it
    (`heads`: a ViT's attention heads where its run set them, --vit_heads; `layerscale`: a timm
    ViT's LayerScale, --vit_layerscale, timm's `init_values`). Register tokens
    (--vit_registers) have no place in either library's model: compare_keys refuses them."""
    if fmt == "timm":
        try:
            import timm
        except ImportError:
            raise UserError("--format timm needs the timm package: pip install timm") from None
        name = backbone.removeprefix("timm:")
        if not timm.is_model(name):
            raise UserError(f"--format timm: timm has no {name}: use --format torchvision")
        kwargs = {"num_classes": 0} | ({"init_values": layerscale} if layerscale else {})
        call = f"timm.create_model({name!r}, " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        return timm.create_model(name, **kwargs), call + ")"
    import torchvision

    if backbone in VIT_SIZES:  # torchvision's VisionTransformer at DeiT's tiny/small sizes
        dim, depth, own_heads, mlp = VIT_SIZES[backbone]
        heads = heads or own_heads
        kwargs = dict(
            image_size=image_size, patch_size=patch_size_for(image_size), num_layers=depth
        )
        kwargs |= dict(num_heads=heads, hidden_dim=dim, mlp_dim=mlp)
        call = "torchvision.models.VisionTransformer(" + ", ".join(
            f"{k}={v}" for k, v in kwargs.items()
        )
        return torchvision.models.VisionTransformer(**kwargs), call + ")"
    if backbone not in torchvision.models.list_models():
        raise UserError(
            f"--format torchvision: {backbone} is not a torchvision model: use --format "
            "torchscript or onnx, or pretrained.load_backbone in Python"
        )
    return torchvision.models.get_model(backbone), f"torchvision.models.{backbone}()"


def compare_keys(weights: dict, model: nn.Module, fmt: str, backbone: str) -> dict:
    """Which of the reference model's weights the export lacks (its classifier) and which have
    another shape (a small-image stem); weights the reference has no place for are an error."""
    reference = model.state_dict()
    unexpected = [k for k in weights if k not in reference]
    if unexpected:
        raise UserError(
            f"--format {fmt}: {backbone}'s weights do not match that library's model "
            f"({len(unexpected)} without a place, e.g. {unexpected[0]}): use --format "
            "torchscript or onnx"
        )
    differs = {
        k: {"exported": list(v.shape), "reference": list(reference[k].shape)}
        for k, v in weights.items()
        if v.shape != reference[k].shape
    }
    return {"absent_keys": [k for k in reference if k not in weights], "differing_shapes": differs}


def load_with(call: str, keys: dict, backbone: str, image_size: int) -> tuple[list[str], list]:
    """Python lines that load the file into the reference model (`path`: the exported file),
    and the layers that differ from it."""
    lines = ["import torch, torchvision" + (", timm" if "timm." in call else ""), f"model = {call}"]
    layers = {k.rsplit(".", 1)[0] for k in keys["differing_shapes"]}
    if layers == {"conv1"}:  # a ResNet's small-image stem (networks/resnet.py)
        differs = ["conv1: 3x3 stride 1 (the reference: 7x7 stride 2)", "maxpool: removed"]
        lines += [
            "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    elif layers or (image_size <= SMALL_IMAGE_SIZE and not backbone.startswith("vit")):
        differs = [f"the small-image adaptation of networks/ ({sorted(layers)} and pooling)"]
        lines += [f"# rebuild them as networks.build_backbone({backbone!r}, {image_size}) does"]
    else:
        differs = []
    absent = {k.split(".")[0] for k in keys["absent_keys"]}
    lines += [f"model.{head} = torch.nn.Identity()" for head in sorted(absent)]
    lines += ["model.load_state_dict(torch.load(path))  # strict: every weight fits"]
    return lines, differs


def check_outputs(run, backbone: nn.Module, image_size: int, what: str) -> dict:
    """The exported model's features against the backbone's on a random batch of 3."""
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = backbone(images)
    got = torch.as_tensor(run(images))
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE * max(scale, 1e-12):
        raise RuntimeError(f"the {what} file gives other features: max |diff| {diff:.3g}")
    print(f"check: {what} features = the backbone's to {diff:.2g} (max |feature| {scale:.3g})")
    return {"max_abs_diff": diff, "max_abs_feature": scale, "relative_tolerance": TOLERANCE}


def export_torchscript(backbone: nn.Module, image_size: int, path: str) -> dict:
    with warnings.catch_warnings():  # deprecated since PyTorch 2.10: said in --help and above
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(backbone, torch.zeros(2, 3, image_size, image_size))
        torch.jit.save(traced, path)
        loaded = torch.jit.load(path)
    return check_outputs(loaded, backbone, image_size, "TorchScript")


def export_pt2(backbone: nn.Module, image_size: int, path: str) -> dict:
    batch = torch.export.Dim("batch", min=1)
    example = torch.zeros(2, 3, image_size, image_size)
    program = torch.export.export(backbone, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return check_outputs(torch.export.load(path).module(), backbone, image_size, "torch.export")


def export_onnx(backbone: nn.Module, image_size: int, path: str) -> dict:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(
            "--format onnx needs onnx and onnxscript: pip install onnx onnxscript"
        ) from None
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        backbone, (example,), dynamo=True, input_names=["images"], output_names=["features"],
        dynamic_shapes=({0: batch},), verbose=False,
    )  # fmt: skip
    program.save(path)
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        run, checker = (lambda x: session.run(None, {"images": x.numpy()})[0]), "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(path)
        run, checker = (lambda x: evaluator.run(None, {"images": x.numpy()})[0]), "onnx reference"
    return {"checked_with": checker, **check_outputs(run, backbone, image_size, "ONNX")}


def main(args) -> dict:
    check_output(args.output, args.overwrite)
    weights, info = read_backbone(args.ckpt, args.momentum_backbone)
    backbone = build_pretrained(weights, info, args.ckpt).eval()
    record = {
        EXPORT_TAG: EXPORT_VERSION,
        "format": args.format,
        **info.to_dict(),
        "git_sha": git_sha(),
    }
    size = info.image_size
    with atomic_file(args.output) as tmp:  # checked before it is renamed into place
        if args.format in ("torchvision", "timm"):
            model, call = reference_model(
                info.backbone, size, args.format, info.vit_heads, info.vit_layerscale
            )
            keys = compare_keys(weights, model, args.format, info.backbone)
            torch.save(backbone.state_dict(), tmp)
            lines, differs = load_with(call, keys, info.backbone, size)
            if info.pool == "mean":  # I-JEPA's features: not what the reference model returns
                differs.append(
                    "features: the mean of the patch tokens after the final norm, not the class "
                    "token the reference returns (pretrained.load_backbone does it)"
                )
            record |= {"load_into": call, **keys, "differing_layers": differs, "load_with": lines}
        elif args.format == "torchscript":
            record["check"] = export_torchscript(backbone, size, tmp)
            record["load_with"] = ["import torch", "model = torch.jit.load(path)"]
        elif args.format == "pt2":
            record["check"] = export_pt2(backbone, size, tmp)
            record["load_with"] = ["import torch", "model = torch.export.load(path).module()"]
        else:
            record["check"] = export_onnx(backbone, size, tmp)
            record["load_with"] = [
                "import onnxruntime",
                "session = onnxruntime.InferenceSession(path)",
            ]
    with atomic_file(export_json(args.output)) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    print(f"exported {info.backbone} ({info.feat_dim}-d features) to {args.output} and its JSON")
    return record


if __name__ == "__main__":
    run_cli(main, get_args_parser())
