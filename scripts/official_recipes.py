"""Compare a method's views and training recipe with the values its official code sets, read
from the official sources themselves: the transforms its code builds (evaluated from its own
files, with its own blur and solarisation classes), its argument parser's defaults with the
command its README or script runs laid over them, or its config file.

    python scripts/official_recipes.py simsiam --official /tmp/simsiam

Ours is what `main.py --print_config` resolves for the same backbone and image size (the
method's recipe for that regime, no flag given). Prints a table of every setting compared, a
match or a departure with the flag that sets the official value, and writes
results/official_recipes/<method>.json; `--table FILE` writes the kept results into FILE's
`official_recipes` block (docs/fidelity.md).
"""

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torchvision.transforms as T
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from official_adapters import load, stand_ins  # noqa: E402
from official_check import official_commit  # noqa: E402
from readme_block import replace_block  # noqa: E402

from transformations import View  # noqa: E402
from utils.misc import git_sha  # noqa: E402

FOLDER = os.path.join(ROOT, "results", "official_recipes")
# the flag of ours that sets each view setting
VIEW_FLAGS = {
    "size": "--image_size (local crops: --small_crop_size)", "scale": "--crop_min_scale "
    "(local crops: --small_crop_scale)", "interpolation": "--interpolation",
    "jitter": "--jitter_strength", "blur_p": "--blur_prob",
}  # fmt: skip


# ---- reading the official sources ------------------------------------------------------------


def parser_defaults(path: str) -> dict[str, tuple[object, str]]:
    """Every `add_argument("--name", default=...)` of `path`: {dest: (default, "file:line")}
    (store_true flags default to False)."""
    found = {}
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant)]
        long = [n for n in names if n.startswith("--")]
        if not long:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        dest = kw["dest"].value if "dest" in kw else long[0][2:].replace("-", "_")
        if "default" in kw:
            try:
                value = ast.literal_eval(kw["default"])
            except ValueError:
                value = ast.unparse(kw["default"])
        else:
            action = kw.get("action")
            value = False if action is not None and action.value == "store_true" else None
        found[dest] = (value, f"{os.path.basename(path)}:{node.lineno}")
    return found


def command(root: str, relpath: str, line: int, defaults: dict) -> dict[str, tuple[object, str]]:
    """The flags of the shell command starting at `line` of `root/relpath` (continued by
    backslashes; in a sentence, its `code` only), each converted to its default's type, laid
    over `defaults`."""
    lines = open(os.path.join(root, relpath)).read().splitlines()[line - 1 :]
    text = ""
    for row in lines:
        text += " " + row.rstrip().removesuffix("\\")
        if not row.rstrip().endswith("\\"):
            break
    if "`" in text:  # a sentence naming flags: only its code
        text = " ".join(re.findall(r"`([^`]*)`", text))
    tokens = shlex.split(text.replace("[", "'[").replace("]", "]'"))
    where = f"{relpath}:{line}"
    out = dict(defaults)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            continue
        name, _, given = token[2:].partition("=")
        dest = name.replace("-", "_")
        default = defaults.get(dest, (None, ""))[0]
        values = [given] if given else []
        switch = isinstance(default, bool) and not given  # store_true: takes no value
        while not given and not switch and i < len(tokens) and tokens[i][0] not in "-[":
            values.append(tokens[i])
            i += 1
        out[dest] = (convert(values, default), where)
    return out


def convert(values: list[str], default: object) -> object:
    if not values:
        return True
    if isinstance(default, list):
        return [convert([v], default[0] if default else 0.0) for v in values]
    value = values[0]
    if isinstance(default, bool):
        return value.lower() in ("true", "1")
    if isinstance(default, int | float):  # by what is written (a default of 0 for a float)
        return int(value) if re.fullmatch(r"-?\d+", value) else float(value)
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def assigned(path: str, name: str, namespace: dict, index: int = 0) -> tuple[object, str]:
    """The value of the `index`-th assignment to `name` in `path`, its expression evaluated in
    `namespace` (the official module's names it uses), and "file:line"."""
    nodes = [
        n
        for n in ast.walk(ast.parse(open(path).read()))
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets)
    ]
    nodes.sort(key=lambda n: n.lineno)
    node = nodes[index]
    code = compile(ast.Expression(node.value), path, "eval")
    return eval(code, namespace), f"{os.path.basename(path)}:{node.lineno}"  # noqa: S307


# ---- what a transform does, whatever built it ------------------------------------------------


def describe(transform, p: float = 1.0, out: dict | None = None) -> dict:
    """A view's settings: crop size, scale, ratio and interpolation, flip, colour jitter
    (brightness, contrast, saturation, hue) and its probability, grayscale, blur and its sigma
    range, solarisation, normalisation: from torchvision's transforms and, for the official
    repositories' own blur and solarisation classes, from their attributes or the sigma their
    `__call__` draws."""
    out = {} if out is None else out
    name = type(transform).__name__
    if isinstance(transform, T.Compose):
        for t in transform.transforms:
            describe(t, p, out)
    elif isinstance(transform, T.RandomApply):
        for t in transform.transforms:
            describe(t, p * transform.p, out)
    elif isinstance(transform, T.RandomResizedCrop):
        out["size"] = transform.size[0]
        out["scale"] = tuple(transform.scale)
        out["ratio"] = tuple(round(r, 6) for r in transform.ratio)
        out["interpolation"] = T.InterpolationMode(transform.interpolation).value
    elif isinstance(transform, T.RandomHorizontalFlip):
        out["flip_p"] = p * transform.p
    elif isinstance(transform, T.ColorJitter):
        b, c, s = (t[1] - 1 for t in (transform.brightness, transform.contrast,
                                      transform.saturation))  # fmt: skip
        out["jitter"] = tuple(round(v, 6) for v in (b, c, s, transform.hue[1]))
        out["jitter_p"] = p
    elif isinstance(transform, T.RandomGrayscale):
        out["gray_p"] = p * transform.p
    elif isinstance(transform, T.GaussianBlur):
        out["blur_p"], out["blur_sigma"] = p, tuple(transform.sigma)
    elif isinstance(transform, T.RandomSolarize):
        out["solarize_p"] = p * transform.p
    elif isinstance(transform, T.Normalize):
        out["mean"], out["std"] = tuple(transform.mean), tuple(transform.std)
    elif "blur" in name.lower():
        out["blur_p"] = p * own_probability(transform)
        out["blur_sigma"] = own_sigma(transform)
    elif "solari" in name.lower():
        out["solarize_p"] = p * own_probability(transform)
    return out


def own_probability(transform) -> float:
    for attribute in ("p", "prob"):
        if hasattr(transform, attribute):
            return float(getattr(transform, attribute))
    return 1.0  # applied by a RandomApply around it


def own_sigma(transform) -> tuple[float, float]:
    if hasattr(transform, "sigma"):
        return tuple(transform.sigma)
    if hasattr(transform, "radius_min"):
        return (transform.radius_min, transform.radius_max)
    import inspect

    source = inspect.getsource(type(transform).__call__)  # `rand() * 1.9 + 0.1`
    scale, shift = re.search(r"rand\w*\(\) \* ([\d.]+) \+ ([\d.]+)", source).groups()
    return (float(shift), round(float(shift) + float(scale), 6))


def ours_views(record: dict) -> list[dict]:
    """Our views as main.py builds them, described as the official ones."""
    views = []
    for options in record["views"]["views"]["value"]:
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        view = describe(View(**options).transform)
        views.append({k: view.get(k, 0.0 if k.endswith("_p") else None) for k in SETTINGS})
    return views


SETTINGS = ("size", "scale", "ratio", "interpolation", "flip_p", "jitter", "jitter_p", "gray_p")
SETTINGS += ("blur_p", "blur_sigma", "solarize_p", "mean", "std")


# ---- the methods -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Where a method's official values are: `script` (its parser), `commands` ((file, line) of
    the commands our recipe follows, laid over the parser's defaults in turn) or `config` (a
    YAML file);
    `views(path, args)` its views [(transform, where)]; `values` our record's keys against
    theirs (a name in `args`, or a function of `args` -> (value, where)); ours is resolved for
    `backbone` at `image_size` on `dataset`."""

    repository: str
    views: Callable[[str, dict], list[tuple[object, str]]]
    values: dict[str, str | Callable[[dict], tuple[object, str]]]
    script: str | None = None
    commands: tuple[tuple[str, int], ...] = ()
    config: str | None = None
    backbone: str = "resnet50"
    image_size: int = 224
    dataset: str = "folder"
    not_compared: dict[str, str] = field(default_factory=dict)
    explained: dict[str, str] = field(default_factory=dict)  # a departure -> why and its flag
    # ours where it is not the record's value of that name: record -> (value, how)
    ours_values: dict[str, Callable[[dict], tuple[object, str]]] = field(default_factory=dict)


def module_views(relpath: str, names: list[str]) -> Callable:
    """Views assigned to `names` in an official file, evaluated with torchvision's transforms,
    the repository's own loader module and the script's parsed values."""

    def views(path: str, args: dict) -> list[tuple[object, str]]:
        namespace = {"transforms": T, "args": SimpleNamespace(**values_of(args))}
        namespace["opt"] = namespace["args"]
        for package in ("simsiam", "moco"):
            if os.path.isfile(os.path.join(path, package, "loader.py")):
                loader = load(path, f"{package}/loader.py")
                namespace[package] = SimpleNamespace(loader=loader)
        file = os.path.join(path, relpath)
        for helper in ("mean", "std", "normalize"):
            try:
                namespace[helper] = assigned(file, helper, namespace)[0]
            except IndexError:
                pass
        out = []
        for name in names:
            value, where = assigned(file, name, namespace)
            out.append((T.Compose(value) if isinstance(value, list) else value, where))
        return out

    return views


def values_of(args: dict) -> dict:
    return {k: v for k, (v, _) in args.items()}


def barlowtwins_views(path: str, args: dict) -> list[tuple[object, str]]:
    transform = load(path, "main.py").Transform()
    return [(transform.transform, "main.py:290 Transform"),
            (transform.transform_prime, "main.py:290 Transform")]  # fmt: skip


def vicreg_views(path: str, args: dict) -> list[tuple[object, str]]:
    transform = load(path, "augmentations.py").TrainTransform()
    return [(transform.transform, "augmentations.py TrainTransform"),
            (transform.transform_prime, "augmentations.py TrainTransform")]  # fmt: skip


def dino_views(path: str, args: dict) -> list[tuple[object, str]]:
    stand_ins({"torch.utils.tensorboard": ["SummaryWriter"]})
    a = values_of(args)
    augment = load(path, "main_dino.py").DataAugmentationDINO(
        a["global_crops_scale"], a["local_crops_scale"], a["local_crops_number"]
    )
    where = "main_dino.py DataAugmentationDINO"
    return [(augment.global_transfo1, where), (augment.global_transfo2, where)] + [
        (augment.local_transfo, where)
    ] * a["local_crops_number"]


def swav_views(path: str, args: dict) -> list[tuple[object, str]]:
    a = values_of(args)
    with tempfile.TemporaryDirectory() as folder:  # an ImageFolder of one image to build it
        os.makedirs(os.path.join(folder, "a"))
        Image.new("RGB", (8, 8)).save(os.path.join(folder, "a", "0.png"))
        dataset = load(path, "src/multicropdataset.py").MultiCropDataset(
            folder, a["size_crops"], a["nmb_crops"], a["min_scale_crops"], a["max_scale_crops"]
        )
    return [(t, "src/multicropdataset.py MultiCropDataset") for t in dataset.trans]


def ijepa_views(path: str, args: dict) -> list[tuple[object, str]]:
    a = values_of(args)
    transform = load(path, "src/transforms.py").make_transforms(
        crop_size=a["crop_size"], crop_scale=tuple(a["crop_scale"]),
        gaussian_blur=a["use_gaussian_blur"], horizontal_flip=a["use_horizontal_flip"],
        color_distortion=a["use_color_distortion"], color_jitter=a["color_jitter_strength"],
    )  # fmt: skip
    return [(transform, "src/transforms.py make_transforms")]


def times(name: str, factor: int, why: str) -> Callable[[dict], tuple[object, str]]:
    """`args[name]` x `factor`: a per-GPU batch times the GPUs of the command."""
    return lambda args: (args[name][0] * factor, f"{args[name][1]} x {factor} ({why})")


def scaled_final_lr(record: dict) -> tuple[float, str]:
    """Our final lr is scaled by the lr rule as the peak is (methods/recipe.py)."""
    value = record["final_lr"] * record["lr"] / record["base_lr"]
    return value, f"final_lr {record['final_lr']:g} x the lr rule's scale"


COMMON = {"base_lr": "lr", "batch_size": "batch_size", "weight_decay": "weight_decay",
          "momentum": "momentum", "num_epochs": "epochs"}  # fmt: skip
SPECS = {
    "simsiam": Spec(
        "facebookresearch/simsiam", module_views("main_simsiam.py", ["augmentation"] * 2), {
            **COMMON, "fix_pred_lr": "fix_pred_lr", "proj_dim": "dim",
            "pred_hidden_dim": "pred_dim"},
        script="main_simsiam.py", commands=(("README.md", 29),)),
    "mocov2": Spec(
        "facebookresearch/moco", module_views("main_moco.py", ["augmentation"] * 2), {
            **COMMON, "temperature": "moco_t", "queue_size": "moco_k", "ema_momentum": "moco_m",
            "proj_dim": "moco_dim"},
        script="main_moco.py", commands=(("README.md", 44), ("README.md", 51))),
    "mocov3": Spec(
        "facebookresearch/moco-v3",
        module_views("main_moco.py", ["augmentation1", "augmentation2"]), {
            **COMMON, "temperature": "moco_t", "ema_momentum": "moco_m", "proj_dim": "moco_dim",
            "proj_hidden_dim": "moco_mlp_dim", "warmup_epochs": "warmup_epochs",
            "ema_cosine": "moco_m_cos"},
        ours_values={"ema_cosine": lambda r: (True, "MoCoV3's momentum is always on its cosine")},
        script="main_moco.py", commands=(("CONFIG.md", 14),)),
    "barlowtwins": Spec(
        "facebookresearch/barlowtwins", barlowtwins_views, {
            "base_lr": "learning_rate_weights", "batch_size": "batch_size",
            "weight_decay": "weight_decay", "num_epochs": "epochs", "lambd": "lambd",
            "proj_dim": lambda a: (int(a["projector"][0].split("-")[-1]), a["projector"][1])},
        script="main.py"),
    "vicreg": Spec(
        "facebookresearch/vicreg", vicreg_views, {
            "base_lr": "base_lr", "batch_size": "batch_size", "weight_decay": "wd",
            "num_epochs": "epochs", "sim_coeff": "sim_coeff", "std_coeff": "std_coeff",
            "cov_coeff": "cov_coeff",
            "proj_dim": lambda a: (int(a["mlp"][0].split("-")[-1]), a["mlp"][1])},
        script="main_vicreg.py", commands=(("README.md", 80),)),
    "swav": Spec(
        "facebookresearch/swav", swav_views, {
            "base_lr": "base_lr", "final_lr": "final_lr", "warmup_lr": "start_warmup",
            "warmup_epochs": "warmup_epochs", "weight_decay": "wd", "num_epochs": "epochs",
            "batch_size": times("batch_size", 64, "64 GPUs, README.md"),
            "temperature": "temperature", "epsilon": "epsilon",
            "sinkhorn_iterations": "sinkhorn_iterations", "proj_dim": "feat_dim",
            "num_prototypes": "nmb_prototypes", "queue_size": "queue_length",
            "epoch_queue_starts": "epoch_queue_starts"},
        script="main_swav.py", commands=(("scripts/swav_800ep_pretrain.sh", 26),),
        explained={"std": "src/multicropdataset.py:39 has 0.228 for red, ImageNet's is 0.229: "
                   "ours normalises by the data set's statistics (utils/data.py)"}),
    "dino": Spec(
        "facebookresearch/dino", dino_views, {
            "base_lr": "lr", "num_epochs": "epochs", "warmup_epochs": "warmup_epochs",
            "weight_decay": "weight_decay", "final_weight_decay": "weight_decay_end",
            "final_lr": "min_lr", "out_dim": "out_dim", "teacher_temp": "teacher_temp",
            "warmup_teacher_temp": "warmup_teacher_temp",
            "teacher_temp_warmup_epochs": "warmup_teacher_temp_epochs",
            "ema_momentum": "momentum_teacher", "clip_grad": "clip_grad",
            "freeze_prototypes_epochs": "freeze_last_layer", "norm_last_layer": "norm_last_layer",
            "drop_path_rate": "drop_path_rate",
            "batch_size": times("batch_size_per_gpu", 16, "16 GPUs, README.md")},
        script="main_dino.py", backbone="vit_small", ours_values={"final_lr": scaled_final_lr}),
    "supcon": Spec(
        "HobbitLong/SupContrast", module_views("main_supcon.py", ["train_transform"] * 2), {
            "base_lr": "learning_rate", "batch_size": "batch_size",
            "weight_decay": "weight_decay", "momentum": "momentum", "num_epochs": "epochs",
            "temperature": "temp"},
        script="main_supcon.py", commands=(("README.md", 73),), image_size=32,
        dataset="imagefolder",
        not_compared={"mean": "the data set's (CIFAR-10's there)", "std": "the data set's"}),
    "mae": Spec(
        "facebookresearch/mae", module_views("main_pretrain.py", ["transform_train"]), {
            "base_lr": "blr", "weight_decay": "weight_decay", "num_epochs": "epochs",
            "warmup_epochs": "warmup_epochs", "mask_ratio": "mask_ratio",
            "norm_pix_loss": "norm_pix_loss",
            "batch_size": times("batch_size", 64, "8 nodes x 8 GPUs, PRETRAIN.md")},
        script="main_pretrain.py", commands=(("PRETRAIN.md", 5),), backbone="vit_small"),
    "ijepa": Spec(
        "facebookresearch/ijepa", ijepa_views, {
            "num_epochs": "epochs", "base_lr": "lr", "warmup_lr": "start_lr",
            "final_lr": "final_lr", "warmup_epochs": "warmup", "weight_decay": "weight_decay",
            "final_weight_decay": "final_weight_decay", "num_targets": "num_pred_masks",
            "pred_emb_dim": "pred_emb_dim",
            "ema_momentum": lambda a: (a["ema"][0][0], a["ema"][1]),
            "batch_size": times("batch_size", 16, "16 GPUs, the config's name")},
        config="configs/in1k_vith14_ep300.yaml", backbone="vit_small"),
}  # fmt: skip


def official_args(path: str, spec: Spec) -> dict[str, tuple[object, str]]:
    args = parser_defaults(os.path.join(path, spec.script)) if spec.script else {}
    for file, line in spec.commands:
        args = command(path, file, line, args)
    if spec.config:
        import yaml

        config = yaml.safe_load(open(os.path.join(path, spec.config)))
        with open(os.path.join(path, spec.config)) as f:
            lines = f.read().splitlines()
        for part in config.values():
            for key, value in part.items():
                line = next(i for i, row in enumerate(lines, 1) if row.strip().startswith(key))
                args[key] = (value, f"{spec.config}:{line}")
    return args


def ours_record(name: str, spec: Spec) -> dict:
    """main.py --print_config for the method on `spec.backbone` at `spec.image_size` over a
    folder of blank images (enough for any recipe's batch; --print_config reads none)."""
    folder = os.path.join(tempfile.gettempdir(), "official_recipes_images")
    images = os.path.join(folder, "train", "a") if spec.dataset == "imagefolder" else folder
    if not os.path.isdir(images) or len(os.listdir(images)) < 4096:
        os.makedirs(images, exist_ok=True)
        blank = Image.new("RGB", (8, 8))
        for i in range(4096):
            blank.save(os.path.join(images, f"{i}.png"))

    if spec.dataset == "imagefolder":  # its test split, which --print_config lists
        os.makedirs(os.path.join(folder, "test", "a"), exist_ok=True)
        Image.new("RGB", (8, 8)).save(os.path.join(folder, "test", "a", "0.png"))
    flags = ["--model_name", name, "--backbone", spec.backbone, "--dataset_name", spec.dataset,
             "--data_dir", folder, "--image_size", str(spec.image_size),
             "--print_config"]  # fmt: skip
    out = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *flags],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if out.returncode:
        sys.exit(f"error: main.py --print_config for {name}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout)


def same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)
    return a == b


def compare(name: str, path: str) -> dict:
    spec = SPECS[name]
    args = official_args(path, spec)
    record = ours_record(name, spec)
    flat = {k: v["value"] for part in record.values() for k, v in part.items()
            if isinstance(v, dict) and "value" in v}  # fmt: skip
    rows = []
    official_views = spec.views(path, args)
    mine = ours_views(record)
    if len(official_views) != len(mine):
        rows.append(dict(setting="views", official=len(official_views), ours=len(mine),
                         where="", match=False))  # fmt: skip
    for i, ((transform, where), view) in enumerate(zip(official_views, mine, strict=False)):
        theirs = describe(transform)
        for key in SETTINGS:
            if key in spec.not_compared:
                continue
            official = theirs.get(key, 0.0 if key.endswith("_p") else None)
            if key == "blur_sigma" and not theirs.get("blur_p") and not view.get("blur_p"):
                continue
            rows.append(dict(setting=f"view {i + 1} {key}", official=official, ours=view[key],
                             where=where, match=same(official, view[key])))  # fmt: skip
    for ours_key, theirs in spec.values.items():
        value, where = theirs(args) if callable(theirs) else args[theirs]
        mine, note = flat.get(ours_key), ""
        if ours_key in spec.ours_values:
            mine, note = spec.ours_values[ours_key](flat)
        rows.append(dict(setting=ours_key, official=value, ours=mine, where=where,
                         match=same(value, mine), note=note))  # fmt: skip
    for row in rows:
        key = row["setting"].split()[-1]
        row["note"] = (
            row.get("note")
            or spec.explained.get(key)
            or ("" if row["match"] else f"ours differs: {flag_of(key)}")
        )
    return {
        "method": name,
        "official": {"repository": spec.repository, "commit": official_commit(path)},
        "ours": git_sha(),
        "ours_at": f"{spec.backbone} at {spec.image_size} px ({flat['training_recipe']})",
        "read": sorted({r["where"].split(":")[0].split()[0] for r in rows if r["where"]}),
        "rows": [{k: plain(v) for k, v in r.items()} for r in rows],
        "matches": sum(r["match"] for r in rows),
        "departures": [r["setting"] for r in rows if not r["match"]],
    }


def flag_of(key: str) -> str:
    return VIEW_FLAGS.get(key, f"--{key}")


def plain(value):
    return list(value) if isinstance(value, tuple) else value


def shown(value) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(shown(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def printed(result: dict) -> str:
    lines = [f"{result['method']} against {result['official']['repository']} "
             f"{result['official']['commit']}; ours: {result['ours_at']}", ""]  # fmt: skip
    width = max(len(r["setting"]) for r in result["rows"])
    for r in result["rows"]:
        mark = "same" if r["match"] else "DIFFERS"
        lines.append(f"{r['setting']:<{width}}  {mark:<7}  official {shown(r['official'])} "
                     f"({r['where']})  ours {shown(r['ours'])}  {r['note']}".rstrip())  # fmt: skip
    lines.append(f"\n{result['matches']} of {len(result['rows'])} settings the same")
    return "\n".join(lines)


def table(folder: str = FOLDER) -> str:
    """docs/fidelity.md's table of the comparisons, from their result files."""
    lines = ["| method | official code | settings the same | departures (ours / official) |",
             "|---|---|---:|---|"]  # fmt: skip
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            r = json.load(f)
        grouped: dict[tuple, list[str]] = {}  # the same departure of several views once
        for x in r["rows"]:
            if not x["match"]:
                *views, key = x["setting"].split()
                what = (key, shown(x["ours"]), shown(x["official"]), x["note"])
                grouped.setdefault(what, []).append(views[-1] if views else "")
        departures = "; ".join(
            (f"view {'/'.join(v)} " if v[0] else "")
            + f"{key}: {ours} / {official}"
            + (f" ({note})" if note else "")
            for (key, ours, official, note), v in grouped.items()
        )
        lines.append(f"| `{r['method']}` | {r['official']['repository']} "
                     f"{r['official']['commit']} | {r['matches']} of {len(r['rows'])} | "
                     f"{departures or 'none'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", nargs="?", choices=sorted(SPECS))
    parser.add_argument("--official", help="a clone of the official repository")
    parser.add_argument("--table", metavar="FILE", help="write the kept results' table into "
                        "FILE's `official_recipes` block instead")  # fmt: skip
    args = parser.parse_args()
    if args.table:
        replace_block(args.table, "official_recipes", table())
        return
    if args.method is None or not args.official or not os.path.isdir(args.official):
        print("error: give METHOD and --official CLONE (a folder: git clone "
              "https://github.com/<repository> first), or --table FILE",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    result = compare(args.method, os.path.abspath(args.official))
    os.makedirs(FOLDER, exist_ok=True)
    with open(os.path.join(FOLDER, f"{args.method}.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(printed(result))


if __name__ == "__main__":
    main()
