"""Batched ONNX Runtime inference driven by the model registry (models/registry.yaml).

The registry is data: file, sha256, input size, preprocessing, ordered classes and
per-class thresholds. One InferenceSession per worker process is kept in a module cache,
created on first use (never at import time).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from radlint.tasks import preprocess
from radlint.tasks.options import DEFAULT_BATCH_SIZE

# The registry and ONNX files are package data of radlint.models (installed as real files).
MODELS_DIR = Path(str(resources.files("radlint.models")))
REGISTRY_PATH = MODELS_DIR / "registry.yaml"
REGISTRY_SCHEMA = 1  # the registry format this code reads (its top-level `schema`)
log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry or a model file is missing or does not match its recorded sha256."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    output: str
    classes: tuple[str, ...]
    thresholds: dict[str, float]
    min_severity: float = 0.0
    gate_policy: dict[str, float] = field(default_factory=dict)
    class_thresholds: bool = True  # False: the severity gate alone decides a flag
    label_gates: dict[str, float] = field(default_factory=dict)  # labelled class -> its own gate
    lake_min_severity: float | None = None  # gate on 1 - p_lake(label) where the lake probe scored
    lake_rule: str | None = None  # both | lake | disagree: what else a lake flag needs (sql/tables/gates.sql)
    lake_weight: float | None = None  # share of the lake probe in the blended severity a lake flag is gated on
    lake_prior_images: float | None = None  # shrinks lake_weight for labels with few lake images
    lake_distrust_scale: float | None = None  # lake_weight follows generic_distrust up to this (sql/tables/gates.sql)
    # sets of classes the probe confuses more easily than the rest ('PA|AP'), and the gate replacing
    # lake_min_severity where the label and the probe's class both lie in one of them
    lake_confusable: tuple[str, ...] = ()
    lake_confusable_min_severity: float | None = None


@dataclass(frozen=True)
class TurnedSpec:
    """A second ONNX file that computes some columns of the embedding alone, from the same input:
    run on the orientation sample's turned views, which need no class outputs (ONNX Runtime runs a
    whole graph whatever outputs are asked for)."""

    path: Path
    sha256: str
    output: str
    columns: tuple[int, int]


@dataclass(frozen=True)
class EmbeddingSpec:
    """The ONNX output carrying the pooled features the lake-adaptation probes read."""

    output: str
    size: int
    # columns [start, stop) of the vector each lake probe reads; a task not named reads them all
    probe_features: dict[str, tuple[int, int]] = field(default_factory=dict)
    turned: TurnedSpec | None = None

    def columns(self, task: str) -> tuple[int, int]:
        return self.probe_features.get(task, (0, self.size))

    def turned_columns(self) -> tuple[int, int]:
        """The columns of the embedding computed for a turned view (table orientation_samples)."""
        return self.turned.columns if self.turned is not None else (0, self.size)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    sha256: str
    input_name: str
    input_size: int
    preprocessing: dict[str, Any]
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    embedding: EmbeddingSpec | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _task_spec(name: str, spec: dict) -> TaskSpec:
    gate = dict(spec.get("gate") or {})
    min_severity = float(gate.pop("min_severity", 0.0))
    class_thresholds = bool(gate.pop("class_thresholds", True))
    label_gates = {k: float(v) for k, v in (gate.pop("by_label", None) or {}).items()}
    lake = gate.pop("lake_min_severity", None)
    lake_rule = gate.pop("lake_rule", None)
    lake_weight = gate.pop("lake_weight", None)
    lake_prior = gate.pop("lake_prior_images", None)
    distrust_scale = gate.pop("lake_distrust_scale", None)
    if distrust_scale is not None and not float(distrust_scale) > 0:
        raise RegistryError(f"task {name}: gate.lake_distrust_scale must be above 0, not {distrust_scale!r}")
    if lake_weight is not None and not 0.0 <= float(lake_weight) <= 1.0:
        raise RegistryError(f"task {name}: gate.lake_weight must be within [0, 1], not {lake_weight!r}")
    if lake_rule not in (None, "both", "lake", "disagree"):
        raise RegistryError(f"task {name}: gate.lake_rule must be both, lake or disagree, not {lake_rule!r}")
    confusable = _confusable_sets(name, gate.pop("lake_confusable", None) or [], spec["classes"])
    confusable_gate = gate.pop("lake_confusable_min_severity", None)
    if confusable_gate is not None and not 0.0 < float(confusable_gate) <= 1.0:
        raise RegistryError(
            f"task {name}: gate.lake_confusable_min_severity must be within (0, 1], not {confusable_gate!r}")
    if confusable_gate is not None and not confusable:
        raise RegistryError(f"task {name}: gate.lake_confusable_min_severity needs gate.lake_confusable")
    return TaskSpec(
        name=name,
        output=spec.get("output", name),
        classes=tuple(spec["classes"]),
        thresholds={k: float(v) for k, v in (spec.get("thresholds") or {}).items()},
        min_severity=min_severity,
        gate_policy={k: float(v) for k, v in gate.items()},
        class_thresholds=class_thresholds,
        label_gates=label_gates,
        lake_min_severity=None if lake is None else float(lake),
        lake_rule=lake_rule,
        lake_weight=None if lake_weight is None else float(lake_weight),
        lake_prior_images=None if lake_prior is None else float(lake_prior),
        lake_distrust_scale=None if distrust_scale is None else float(distrust_scale),
        lake_confusable=confusable,
        lake_confusable_min_severity=None if confusable_gate is None else float(confusable_gate),
    )


def _confusable_sets(name: str, sets: list, classes: list[str]) -> tuple[str, ...]:
    """gate.lake_confusable as '|'-joined class sets, each of two or more of the task's classes."""
    out = []
    for s in sets:
        members = [str(c) for c in s] if isinstance(s, (list, tuple)) else str(s).split("|")
        unknown = [c for c in members if c not in classes]
        if unknown or len(set(members)) < 2:
            raise RegistryError(
                f"task {name}: each gate.lake_confusable set names two or more of the task's classes "
                f"{list(classes)}, not {s!r}")
        out.append("|".join(members))
    return tuple(out)


def _check_preprocessing(name: str, m: dict) -> None:
    """Refuse an entry whose input or preprocessing is not what tasks/preprocess.py does.

    The audit's preprocessing is code, shared with training; the registry states it so that a
    model trained on other inputs (another mean or std, no letterbox, 3 channels) is refused here
    instead of running silently wrong. A key left out means the code's value.
    """
    channels = (m.get("input") or {}).get("channels", preprocess.CHANNELS)
    if channels != preprocess.CHANNELS:
        raise RegistryError(f"model {name}: input.channels is {channels!r}; radlint feeds models "
                            f"{preprocess.CHANNELS} channel")
    block = m.get("preprocessing") or {}
    expected = preprocess.PREPROCESSING
    unknown = sorted(set(block) - set(expected))
    if unknown:
        raise RegistryError(f"model {name}: preprocessing {', '.join(unknown)} unknown to radlint, which applies {expected}")
    for key, value in block.items():
        want = expected[key]
        try:
            same = (math.isclose(float(value), want) if isinstance(want, float) and not isinstance(value, bool)
                    else value == want)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise RegistryError(f"model {name}: preprocessing {key} is {value!r}, but radlint applies {key} {want!r} "
                                "(tasks/preprocess.py); retrain or re-export the model for radlint's preprocessing")


def _embedding_spec(name: str, spec: dict, folder: Path) -> EmbeddingSpec:
    size = int(spec["size"])

    def span_of(key: str, span) -> tuple[int, int]:
        a, b = (int(v) for v in span)
        if not 0 <= a < b <= size:
            raise RegistryError(f"model {name}: embedding.{key} {span} is not a column range of the {size}-wide "
                                "embedding")
        return a, b

    spans = {task: span_of(f"probe_features.{task}", span) for task, span in (spec.get("probe_features") or {}).items()}
    turned = None
    if spec.get("turned"):
        t = spec["turned"]
        turned = TurnedSpec((folder / t["file"]).resolve(), str(t["sha256"]), str(t.get("output", "embedding")),
                            span_of("turned.columns", t["columns"]))
    result = EmbeddingSpec(str(spec["output"]), size, spans, turned)
    # the orientation probe learns from turned views only: its columns must be among theirs
    a, b = result.columns("orientation")
    ta, tb = result.turned_columns()
    if not ta <= a < b <= tb:
        raise RegistryError(f"model {name}: embedding.probe_features.orientation [{a}, {b}] is outside the columns "
                            f"the turned views get, [{ta}, {tb}] (embedding.turned.columns)")
    return result


def load_registry(path: Path | str = REGISTRY_PATH) -> list[ModelEntry]:
    """Parse the registry into entries. Paths are relative to the registry's folder.

    Raises:
        RegistryError: the file is missing, its ``schema`` is not one this radlint reads, or an
            entry's input channels or preprocessing differ from what the audit does.
    """
    path = Path(path)
    if not path.exists():
        raise RegistryError(f"model registry not found: {path}")
    # The C loader when libyaml is there: the pure-Python one takes ~0.1 s, paid per shard.
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if data.get("schema") != REGISTRY_SCHEMA:
        raise RegistryError(f"model registry {path} has schema {data.get('schema')!r}; this radlint reads "
                            f"schema {REGISTRY_SCHEMA}")
    entries = []
    for m in data.get("models", []):
        _check_preprocessing(m["name"], m)
        tasks = {t: _task_spec(t, spec) for t, spec in m["tasks"].items()}
        entries.append(
            ModelEntry(
                name=m["name"],
                path=(path.parent / m["file"]).resolve(),
                sha256=m["sha256"],
                input_name=m["input"]["name"],
                input_size=int(m["input"]["size"]),
                preprocessing=dict(m.get("preprocessing") or {}),
                tasks=tasks,
                embedding=_embedding_spec(m["name"], m["embedding"], path.parent) if m.get("embedding") else None,
            )
        )
    return entries


def default_model(path: Path | str = REGISTRY_PATH) -> ModelEntry:
    """The first registry entry: the model an audit runs unless told otherwise."""
    entries = load_registry(path)
    if not entries:
        raise RegistryError(f"no models in registry {path}")
    return entries[0]


def _verify_file(path: Path, sha256: str) -> None:
    if not path.exists():
        raise RegistryError(f"model file missing: {path}")
    actual = sha256_file(path)
    if actual != sha256:
        raise RegistryError(f"sha256 mismatch for {path.name}: registry {sha256}, file {actual}")


def verify(entry: ModelEntry) -> None:
    """Raise RegistryError unless the model's files exist and their sha256s match the registry."""
    _verify_file(entry.path, entry.sha256)
    if entry.embedding is not None and entry.embedding.turned is not None:
        _verify_file(entry.embedding.turned.path, entry.embedding.turned.sha256)


def providers_for(device: str = "auto") -> list[str]:
    """Execution providers in preference order: CUDA then CPU (``auto``)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("--device cuda asked for, but onnxruntime has no CUDA provider")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


_SESSIONS: dict[tuple[str, str, int], Any] = {}
_LOCK = threading.Lock()


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages before the CUDA provider needs them.

    onnxruntime-gpu's CUDA provider links libcudart/libcublas by soname; where those come from
    pip wheels (``onnxruntime-gpu[cuda,cudnn]``, or a PyTorch install) they are not on the loader's
    path, and without this the session silently falls back to the CPU provider. Once per process.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a host with CUDA on the loader's path needs none of this
        log.debug("onnxruntime.preload_dlls failed: %r", exc)


def _check_outputs(path: Path, sess, wanted: dict[str, int]) -> None:
    """The registry's output names and widths are the graph's: a mismatch is a registry error,
    never a silently wrong column."""
    outputs = {o.name: o.shape for o in sess.get_outputs()}
    for name, width in wanted.items():
        if name not in outputs:
            raise RegistryError(f"{path.name} has no output {name!r} (outputs: {sorted(outputs)})")
        last = outputs[name][-1] if outputs[name] else None
        if isinstance(last, int) and last != width:
            raise RegistryError(f"{path.name}: output {name!r} is {last} wide, the registry says {width}")


def _session(path: Path, sha256: str, wanted: dict[str, int], device: str, threads: int):
    """One InferenceSession per (file, device, threads) per process, verified once."""
    import onnxruntime as ort

    key = (str(path), device, threads)
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            _verify_file(path, sha256)
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            providers = providers_for(device)
            if "CUDAExecutionProvider" in providers:
                _preload_cuda_libraries()
            sess = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
            _check_outputs(path, sess, wanted)
            _SESSIONS[key] = sess
    return sess


def session_for(entry: ModelEntry, device: str = "auto", threads: int = 0):
    """The model's InferenceSession (one per model, device and thread count per process)."""
    wanted = {t.output: len(t.classes) for t in entry.tasks.values()}
    if entry.embedding is not None:
        wanted[entry.embedding.output] = entry.embedding.size
    return _session(entry.path, entry.sha256, wanted, device, threads)


def predict(
    entry: ModelEntry,
    batch: np.ndarray,
    *,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Run the model over ``batch`` [N, 1, S, S] float32 in chunks.

    Returns task name -> probabilities [N, n_classes] in the registry's class order.
    """
    return predict_with_embedding(entry, batch, device=device, batch_size=batch_size, threads=threads,
                                  embedding=False)[0]


def predict_with_embedding(
    entry: ModelEntry,
    batch: np.ndarray,
    *,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = 0,
    embedding: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """:func:`predict`, plus the registry's embedding output [N, D] float32 (None when the entry
    names none or ``embedding`` is False)."""
    sess = session_for(entry, device, threads)
    out_names = [t.output for t in entry.tasks.values()]
    want_embedding = embedding and entry.embedding is not None
    if want_embedding:
        out_names.append(entry.embedding.output)
    results: dict[str, list[np.ndarray]] = {t: [] for t in entry.tasks}
    vectors: list[np.ndarray] = []
    for chunk, outs in _run_chunks(sess, entry.input_name, out_names, batch, batch_size):
        for task, arr in zip(entry.tasks, outs):
            results[task].append(np.asarray(arr, dtype=np.float32))
        if want_embedding:
            vectors.append(np.asarray(outs[-1], dtype=np.float32).reshape(len(chunk), -1))
    probs = {
        t: (np.concatenate(v) if v else np.zeros((0, len(entry.tasks[t].classes)), np.float32))
        for t, v in results.items()
    }
    if not want_embedding:
        return probs, None
    return probs, (np.concatenate(vectors) if vectors else np.zeros((0, entry.embedding.size), np.float32))


def embed_turned(
    entry: ModelEntry,
    batch: np.ndarray,
    *,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = 0,
) -> np.ndarray:
    """The embedding's turned columns (EmbeddingSpec.turned_columns) of ``batch`` [N, 1, S, S]:
    from the registry's ``embedding.turned`` file where it names one, else from the model."""
    spec = entry.embedding
    if spec is None:
        raise RegistryError(f"model {entry.name} has no embedding output")
    a, b = spec.turned_columns()
    if spec.turned is None:
        return predict_with_embedding(entry, batch, device=device, batch_size=batch_size, threads=threads)[1][:, a:b]
    sess = _session(spec.turned.path, spec.turned.sha256, {spec.turned.output: b - a}, device, threads)
    vectors = [np.asarray(outs[0], dtype=np.float32).reshape(len(chunk), -1)
               for chunk, outs in _run_chunks(sess, entry.input_name, [spec.turned.output], batch, batch_size)]
    return np.concatenate(vectors) if vectors else np.zeros((0, b - a), np.float32)


def _run_chunks(sess, input_name: str, out_names: list[str], batch: np.ndarray, batch_size: int):
    """(chunk, outputs) per ``batch_size`` rows of ``batch``."""
    on_cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    for start in range(0, len(batch), max(1, batch_size)):
        chunk = np.ascontiguousarray(batch[start : start + batch_size], dtype=np.float32)
        if on_cuda:
            yield chunk, _run_cuda_bound(sess, input_name, out_names, chunk)
        else:
            yield chunk, sess.run(out_names, {input_name: chunk})


def _run_cuda_bound(sess, input_name: str, out_names: list[str], chunk: np.ndarray) -> list[np.ndarray]:
    """Run on the GPU with I/O binding: one host-to-device copy in, outputs copied back once."""
    import onnxruntime as ort

    binding = sess.io_binding()
    binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(chunk, "cuda", 0))
    for name in out_names:
        binding.bind_output(name, "cpu")
    sess.run_with_iobinding(binding)
    return [np.asarray(v) for v in binding.copy_outputs_to_cpu()]
