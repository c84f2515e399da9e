"""``radlint import-checkpoint FILE.pt --kind bodypart|cxp``: convert the published PyTorch
checkpoints of Mitsuyama et al. (Eur Radiol 2025) to ONNX and append a registry entry.

Checkpoint layout (what the paper's code saves): torchvision ``efficientnet_b4`` with a
1-channel first convolution (``features.0.0.weight`` [48, 1, 3, 3]), ``classifier`` replaced by
``nn.Identity`` (so no classifier keys) and the heads in an ``nn.ModuleDict`` named
``multi_classifier``, each ``Sequential(Dropout, Linear(1792, k))``:

* ``--kind bodypart``: ``label_bodypart`` (7): Head, Neck, Chest, Incomplete Chest, Abdomen,
  Pelvis, Extremities.
* ``--kind cxp`` (chest): ``label_APorPA`` (3): AP, PA, Lateral, and ``label_round`` (4):
  Upright, Inverted, Left rotation, Right rotation.

torchvision is not needed: :class:`EfficientNetB4` below rebuilds the network in plain torch
with exactly torchvision's module names, so the state dict loads with ``strict=True``.
A ``module.``/``model.``/``backbone.`` style prefix (DataParallel, wrappers) is stripped, and a
dict holding the weights under ``state_dict``/``model_state_dict``/``model`` is unwrapped.

Class mapping onto radlint's vocabularies (tasks/vocabulary.py). The ONNX graph applies it, so
its outputs are already in radlint's class order and each row still sums to 1:

body_part (9 outputs): Head→head, Neck→neck, Chest→chest, Incomplete Chest→chest (it is a chest
  film with part of the thorax cut off; summed with Chest), Abdomen→abdomen, Pelvis→pelvis,
  Extremities→upper_limb and lower_limb, half each (the paper does not separate upper from lower
  limbs, so the model cannot tell them apart: both get p/2, which is at most 0.5, and their
  thresholds are set to 1.01 so the audit never claims "upper" vs "lower" from this model; a
  chest-labelled hand still shows up through a low probability of the header class).
  spine and other: always 0 (no such class in the paper) and marked ``unsupported`` in the
  registry: findings for headers saying spine/other must not be raised from this model.
projection (3 outputs): PA→PA, AP→AP, Lateral→LATERAL (reordered to PA, AP, LATERAL).
orientation (4 outputs): Upright→upright, Inverted→rot180, Right rotation→rot90cw,
  Left rotation→rot90ccw. radlint's label is the rotation by which the stored image differs
  from upright; we read the paper's "left/right rotation" the same way (the image turned 90° to
  the left = counter-clockwise, to the right = clockwise). The paper does not define the
  direction with a figure we could check: verify with ``radlint evaluate`` on a few images of
  known orientation, and swap with ``--swap-left-right`` if it turns out reversed.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

BODYPART_CLASSES = ("Head", "Neck", "Chest", "Incomplete Chest", "Abdomen", "Pelvis",
                    "Extremities")
PROJECTION_CLASSES = ("AP", "PA", "Lateral")
ROUND_CLASSES = ("Upright", "Inverted", "Left rotation", "Right rotation")

# source class -> {radlint class: share of its probability}
BODYPART_MAP = {
    "Head": {"head": 1.0},
    "Neck": {"neck": 1.0},
    "Chest": {"chest": 1.0},
    "Incomplete Chest": {"chest": 1.0},
    "Abdomen": {"abdomen": 1.0},
    "Pelvis": {"pelvis": 1.0},
    "Extremities": {"upper_limb": 0.5, "lower_limb": 0.5},
}
PROJECTION_MAP = {"AP": {"AP": 1.0}, "PA": {"PA": 1.0}, "Lateral": {"LATERAL": 1.0}}
ROUND_MAP = {
    "Upright": {"upright": 1.0},
    "Inverted": {"rot180": 1.0},
    "Left rotation": {"rot90ccw": 1.0},
    "Right rotation": {"rot90cw": 1.0},
}
PAPER_SIZE = 256
HEADS = {
    "bodypart": {"label_bodypart": ("body_part", BODYPART_CLASSES, BODYPART_MAP)},
    "cxp": {
        "label_APorPA": ("projection", PROJECTION_CLASSES, PROJECTION_MAP),
        "label_round": ("orientation", ROUND_CLASSES, ROUND_MAP),
    },
}


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision.models._utils._make_divisible."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def b4_stages(width_mult: float = 1.4, depth_mult: float = 1.8):
    """(expand_ratio, kernel, stride, in, out, layers) per stage, as torchvision builds B4."""
    base = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1)]
    return [(e, k, s, _make_divisible(i * width_mult), _make_divisible(o * width_mult),
             int(math.ceil(n * depth_mult))) for e, k, s, i, o, n in base]


def build_modules():
    """Define the torch modules lazily so importing this file does not import torch."""
    import torch
    from torch import nn

    def conv_norm_act(cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        return nn.Sequential(*layers)  # torchvision Conv2dNormActivation: 0 conv, 1 bn, 2 act

    class SqueezeExcitation(nn.Module):
        def __init__(self, cin, csq):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(cin, csq, 1)
            self.fc2 = nn.Conv2d(csq, cin, 1)
            self.activation = nn.SiLU(inplace=True)
            self.scale_activation = nn.Sigmoid()

        def forward(self, x):
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return s * x

    class MBConv(nn.Module):
        def __init__(self, expand, kernel, stride, cin, cout):
            super().__init__()
            self.use_res_connect = stride == 1 and cin == cout
            hidden = _make_divisible(cin * expand)
            layers = []
            if hidden != cin:
                layers.append(conv_norm_act(cin, hidden, 1))
            layers.append(conv_norm_act(hidden, hidden, kernel, stride, groups=hidden))
            layers.append(SqueezeExcitation(hidden, max(1, cin // 4)))
            layers.append(conv_norm_act(hidden, cout, 1, act=False))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            y = self.block(x)
            # stochastic depth is the identity at inference
            return y + x if self.use_res_connect else y

    class EfficientNetB4(nn.Module):
        """torchvision efficientnet_b4 (in_channels=1, classifier Identity) + multi_classifier."""

        def __init__(self, heads: dict[str, int], in_channels: int = 1, num_classes: int = 0):
            super().__init__()
            stages = b4_stages()
            layers = [conv_norm_act(in_channels, stages[0][3], 3, 2)]
            for e, k, s, cin, cout, n in stages:
                blocks = []
                for j in range(n):
                    blocks.append(MBConv(e, k, s if j == 0 else 1, cin if j == 0 else cout, cout))
                layers.append(nn.Sequential(*blocks))
            last_in = stages[-1][4]
            self.num_features = 4 * last_in
            layers.append(conv_norm_act(last_in, self.num_features, 1))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            if num_classes:
                self.classifier = nn.Sequential(nn.Dropout(0.4),
                                                nn.Linear(self.num_features, num_classes))
            else:
                self.classifier = nn.Identity()
            self.multi_classifier = nn.ModuleDict({
                name: nn.Sequential(nn.Dropout(0.4), nn.Linear(self.num_features, k))
                for name, k in heads.items()
            })

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            x = self.classifier(x)
            return {name: head(x) for name, head in self.multi_classifier.items()}

    class MappedSoftmax(nn.Module):
        """Softmax per head, then a fixed matrix onto radlint's classes (rows keep sum 1)."""

        def __init__(self, net, plan):
            super().__init__()
            self.net = net
            self.heads = [p[0] for p in plan]
            for i, (_, m) in enumerate(plan):
                self.register_buffer(f"map{i}", torch.tensor(m, dtype=torch.float32))

        def forward(self, image):
            logits = self.net(image)
            outs = []
            for i, h in enumerate(self.heads):
                outs.append(torch.softmax(logits[h], dim=1) @ getattr(self, f"map{i}"))
            return tuple(outs)

    return EfficientNetB4, MappedSoftmax


def mapping_matrix(source, target, mapping):
    return [[float(mapping[s].get(t, 0.0)) for t in target] for s in source]


def swap_left_right(mapping: dict) -> dict:
    m = dict(mapping)
    m["Left rotation"], m["Right rotation"] = mapping["Right rotation"], mapping["Left rotation"]
    return m


def extract_state_dict(obj, heads: tuple[str, ...]):
    """Find the weights in a loaded checkpoint and strip wrapper prefixes."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any("features.0.0.weight" in str(k) for k in inner):
                obj = inner
                break
            if inner is not None and hasattr(inner, "state_dict") and not isinstance(inner, dict):
                obj = inner.state_dict()
                break
    if not isinstance(obj, dict):
        raise ValueError("no state dict found in the checkpoint")
    anchor = [k for k in obj if str(k).endswith("features.0.0.weight")]
    if not anchor:
        raise ValueError("not an EfficientNet checkpoint: no features.0.0.weight")
    prefix = anchor[0][: -len("features.0.0.weight")]
    out = {}
    for k, v in obj.items():
        k = str(k)
        if k.startswith(prefix):
            out[k[len(prefix):]] = v
        elif "multi_classifier." in k:
            out[k[k.index("multi_classifier."):]] = v
    missing = [h for h in heads if f"multi_classifier.{h}.1.weight" not in out]
    if missing:
        found = sorted({k.split(".")[1] for k in out if k.startswith("multi_classifier.")})
        raise ValueError(f"heads {missing} not in the checkpoint (found {found})")
    return out


def convert(checkpoint: Path, kind: str, out_dir: Path, name: str | None = None,
            size: int = PAPER_SIZE, swap_lr: bool = False, trust: bool = False,
            opset: int = 17, parity_batch: int = 2) -> dict:
    """Checkpoint -> ONNX file in ``out_dir``; returns the registry entry (not yet written)."""

    import numpy as np
    import torch

    from radlint.tasks.infer import sha256_file
    from radlint.tasks.preprocess import PREPROCESSING
    from radlint.tasks.vocabulary import TASKS

    if kind not in HEADS:
        raise ValueError(f"--kind must be one of {sorted(HEADS)}")
    heads = HEADS[kind]
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=not trust)
    except Exception as e:  # pickled modules need --trust (they execute code when loaded)
        raise ValueError(f"cannot load {checkpoint} as weights only ({e.__class__.__name__}); "
                         "if it is a pickled model you trust, pass --trust") from e
    sd = extract_state_dict(obj, tuple(heads))
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    EfficientNetB4, MappedSoftmax = build_modules()
    n_out = {h: int(sd[f"multi_classifier.{h}.1.weight"].shape[0]) for h in heads}
    for h, (task, classes, _) in heads.items():
        if n_out[h] != len(classes):
            raise ValueError(f"head {h} has {n_out[h]} outputs, expected {len(classes)}")
    in_ch = int(sd["features.0.0.weight"].shape[1])
    net = EfficientNetB4(n_out, in_channels=in_ch)
    net.load_state_dict(sd, strict=True)
    net.eval()
    plan = []
    for h, (task, classes, mapping) in heads.items():
        if task == "orientation" and swap_lr:
            mapping = swap_left_right(mapping)
        plan.append((h, mapping_matrix(classes, TASKS[task], mapping)))
    module = MappedSoftmax(net, plan).eval()

    name = name or f"mitsuyama2025-{kind}"
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    outputs = [heads[h][0] for h in heads]
    x = torch.zeros(2, in_ch, size, size)
    dyn = {"image": {0: "N"}, **{o: {0: "N"} for o in outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(onnx_path), dynamo=False, input_names=["image"],
                          output_names=outputs, opset_version=opset, dynamic_axes=dyn,
                          do_constant_folding=True)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    xt = torch.from_numpy(np.random.default_rng(0).uniform(
        -1, 1, (parity_batch, in_ch, size, size)).astype(np.float32))
    with torch.no_grad():
        ref = [r.numpy() for r in module(xt)]
    got = sess.run(outputs, {"image": xt.numpy()})
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    if not max_diff < 1e-4:
        raise RuntimeError(f"ONNX parity failed: max abs diff {max_diff}")

    tasks = {}
    for h, (task, classes, mapping) in heads.items():
        if task == "orientation" and swap_lr:
            mapping = swap_left_right(mapping)
        vocab = TASKS[task]
        covered = {t for m in mapping.values() for t, w in m.items() if w > 0}
        ambiguous = {t for m in mapping.values() if len(m) > 1 for t in m}
        spec = {
            "output": task,
            "classes": list(vocab),
            # not chosen on data (none is available here): 0.9 for mapped classes; classes the
            # model cannot assert (split or absent) can never trigger a mismatch
            "thresholds": {c: (1.01 if (c not in covered or c in ambiguous) else 0.9)
                           for c in vocab},
            "source_output": h,
            "source_classes": list(classes),
            "class_map": {s: ({t: w for t, w in mapping[s].items()} if len(mapping[s]) > 1
                              else next(iter(mapping[s]))) for s in classes},
        }
        unsupported = [c for c in vocab if c not in covered]
        if unsupported:
            spec["unsupported"] = unsupported
        if task in ("projection", "orientation") and kind == "cxp":
            spec["applies_to"] = ["chest"]
        tasks[task] = spec
    entry = {
        "name": name,
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "input": {"name": "image", "size": size, "channels": in_ch},
        "preprocessing": dict(PREPROCESSING),  # the paper's: 1 channel, letterbox, mean 0.5, std 0.5
        "card": None,
        "target_precision": None,
        "tasks": tasks,
        "source": {
            "checkpoint": Path(checkpoint).name,
            "architecture": "torchvision efficientnet_b4, 1-channel stem, classifier Identity, "
                            "multi_classifier heads",
            "paper": "Mitsuyama et al., European Radiology 2025, doi 10.1007/s00330-025-12053-7",
            "thresholds": "not chosen on data: 0.9 default; run radlint evaluate on labelled "
                          "local data and edit",
        },
        "parity_max_abs_diff": float(f"{max_diff:.3e}"),
    }
    return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="the paper's .pt/.pth checkpoint")
    parser.add_argument("--kind", required=True, choices=sorted(HEADS),
                        help="bodypart: label_bodypart head; cxp: label_APorPA + label_round")
    parser.add_argument("--name", default=None,
                        help="registry name and ONNX file stem (default mitsuyama2025-<kind>)")
    parser.add_argument("--registry", type=Path, default=None,
                        help="registry YAML to append to (default models/registry.yaml); "
                             "the ONNX file is written beside it")
    parser.add_argument("--size", type=int, default=PAPER_SIZE,
                        help="input size (the paper: 256)")
    parser.add_argument("--swap-left-right", action="store_true",
                        help="map Left rotation→rot90cw and Right rotation→rot90ccw instead")
    parser.add_argument("--trust", action="store_true",
                        help="allow loading a pickled model object (executes code from the file)")


def run(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("radlint import-checkpoint: needs PyTorch (pip install 'radlint[train]')")
        return 2
    from radlint.tasks.infer import REGISTRY_PATH

    registry = Path(args.registry) if args.registry else REGISTRY_PATH
    if not Path(args.checkpoint).exists():
        print(f"radlint import-checkpoint: file not found: {args.checkpoint}")
        return 2
    try:
        entry = convert(Path(args.checkpoint), args.kind, registry.parent, name=args.name,
                        size=args.size, swap_lr=args.swap_left_right, trust=args.trust)
    except (ValueError, RuntimeError, KeyError) as e:
        print(f"radlint import-checkpoint: {e}")
        return 1
    append_entry(entry, registry)
    print(f"wrote {registry.parent / entry['file']} (sha256 {entry['sha256'][:12]}…, parity "
          f"max abs diff {entry['parity_max_abs_diff']:.1e}) and registry entry "
          f"'{entry['name']}' in {registry}")
    return 0


def append_entry(entry: dict, registry: Path) -> None:
    """Append (or replace by name) without changing which model is the default (first)."""
    import yaml

    from radlint.tasks.infer import REGISTRY_SCHEMA

    data = {"schema": REGISTRY_SCHEMA, "models": []}
    text = ""
    if registry.exists():
        text = registry.read_text()
        data = yaml.safe_load(text) or data
    data.setdefault("schema", REGISTRY_SCHEMA)
    models = [m for m in data.get("models") or [] if m.get("name") != entry["name"]]
    data["models"] = models + [entry]
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None,
                                                width=100, allow_unicode=True))


def main(argv=None) -> int:  # pragma: no cover
    ap = argparse.ArgumentParser(prog="radlint import-checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
