"""Lake adaptation: probes fitted on the lake's own images, so flags hold up on a hospital the model never saw.

A generic model is confidently wrong on kinds of film it never trained on, and gates chosen on its
own validation data believe it. Most of a lake's labels are right, so a classifier fitted on the
lake's embeddings against the lake's labels learns what this site's films look like; scored
out-of-fold, an image whose label disagrees with what its look-alikes are labelled stands out
(confident learning, Northcutt et al., JAIR 2021).

- features: the registry's ``embedding.probe_features`` columns of each image's embedding. A
  classifier trained from scratch separates only what it was trained to separate, so films it never
  saw land on top of classes it knows; such a model gets ImageNet features grafted beside its own
  (models/lake_embedder.py, v3). The shipped model, fine-tuned from ImageNet weights, keeps enough of
  them: its own pooled features serve every probe.
- every probe works in its own space: standardised features, their first PROBE_COMPONENTS
  principal components, fitted once per probe on all the rows it scores and never on a label
  (SPACE_FIT_ROWS); its folds and rounds refit only the classifier.
- body_part, projection: the features (plus the generic model's log-probabilities) in that space,
  a multinomial logistic regression, fitted on the current labels (labels file, else header), K
  folds grouped by patient (patient_key, else study, else the object) so no patient is in both
  halves of a fold. Body part and projection, which a quarter turn does
  not change, also learn from the orientation sample's turned views of each image, and an image
  with turned views gets the mean of its four views' probabilities.
- orientation: headers rarely say anything, so the probe is self-supervised: a sample of the
  lake's images, run turned by each quarter turn during the audit (table orientation_samples),
  teaches it what each turn looks like here; the stored images are then scored. The probe is a
  vote of the 15 nearest turned views (cosine, same principal components), since which way is up
  depends on the kind of film.

- generic_distrust, per image and task: how often the generic model disagrees with the labels of the
  image's look-alikes in this lake (median of 1 - p_generic(label) over its DISTRUST_NEIGHBORS
  nearest labelled images, cosine on the task's probe features, the image itself left out). Where
  the generic model is on home ground its look-alikes' labels are nearly all its own calls and
  this is near 0; on a kind of film it never saw (or a protocol labelled wrong throughout) it is
  high. The findings' blend gives the lake probe a share that grows with it (gates
  ``lake_distrust_scale``), so the generic model keeps its say where it has earned it.

Fallback rules (the row's ``method`` is ``generic`` and ``fallback_reason`` says why):
- ``no_embedding``: the image has no vector from the current model (e.g. read by an older model).
- ``too_few_images``: fewer than MIN_IMAGES images with a single-class label for the task.
- ``one_class``: fewer than two classes with MIN_CLASS_IMAGES labelled images each.
- ``class_too_rare``: the image's label is a class with fewer than MIN_CLASS_IMAGES images: the
  probe cannot learn it, and would flag every such image.
- ``too_few_samples``: fewer than MIN_ORIENTATION_SAMPLES images in the orientation sample.

Everything runs in the flow process after the load, from the tables alone: a re-run refits over
all current images without reading a pixel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from radlint.tasks import parts, preprocess
from radlint.tasks.vocabulary import ORIENTATION, TURNS

MIN_IMAGES = 30
MIN_CLASS_IMAGES = 8
MIN_ORIENTATION_SAMPLES = 24
N_FOLDS = 5
# Strong regularisation: the probe must follow the lake's majority, not memorise its errors.
# The embedding's principal components bound the fit's cost at any embedding width. Both chosen on
# a leave-one-source-out lake (docs/notes-2026-12-lake-adaptation.md).
PROBE_C = 0.003
PROBE_COMPONENTS = 128
# Each probe's space (standardisation and principal components) is fitted once, on every row the
# probe scores, and never sees a label: an out-of-fold prediction still owes nothing to its own
# image's label. Refitting it per fold and round (ten times for orientation) was most of the time
# of a re-run after a few new objects. Beyond this many rows, a seeded random subset fits it.
SPACE_FIT_ROWS = 20_000
# Orientation: which way is up differs by kind of film (a lateral foot lies flat, a knee stands),
# which a linear probe over the whole lake cannot follow; the nearest turned views of similar
# films can.
ORIENTATION_NEIGHBORS = 15
# Rounds of the orientation probe: a second round, refitted on targets re-derived from the first
# round's consensus, made the consensus surer of its mistakes as well, and cost recall at the
# precision the gates ask for (docs/notes-2026-12-lake-adaptation.md, twelfth round).
ORIENTATION_ROUNDS = 1
# Orientation sample: enough images for a stable probe on any lake, then a small share of each
# run's new objects (each sampled image costs three more forward passes in its shard).
ORIENTATION_SAMPLE_TARGET = 2000
ORIENTATION_SAMPLE_MIN_RATE = 1 / 64

# generic_distrust: look-alikes per image, and at most this many labelled images to look among
# (a random subset beyond it bounds the cost on a large lake; the median of a local sample is
# what is wanted, not every neighbour).
DISTRUST_NEIGHBORS = 15
DISTRUST_REFERENCE = 10_000

# Tasks a quarter turn does not change (a PA film turned is still PA): their probes also learn
# from, and average over, the orientation sample's turned views of an image.
ROTATION_INVARIANT = ("body_part", "projection")

# Bumped when the probes or their rules change, so the next run refits an unchanged lake.
FIT_VERSION = 8

GENERIC = "generic"
LAKE_OOF = "lake_oof"
LAKE_FIT = "lake_fit"


def orientation_sample_rate(n_new: int, n_sampled: int) -> float:
    """Share of this run's new objects to turn for the orientation probe, given how many current
    images are already sampled."""
    if n_new <= 0:
        return 0.0
    need = max(0, ORIENTATION_SAMPLE_TARGET - n_sampled)
    return float(min(1.0, max(need / n_new, ORIENTATION_SAMPLE_MIN_RATE)))


@dataclass
class ProbeResult:
    """Per-image probabilities of one task (rows aligned with the input), and how each was made."""

    probs: np.ndarray  # [N, n_classes], NaN rows where method is generic
    method: list[str]
    reason: list[str | None]
    distrust: np.ndarray | None = None  # [N] generic_distrust, NaN where none was computed


def preload() -> None:
    """Import what the fits use (scikit-learn's import costs ~1.6 s of every audit that fits), so that
    the flow can pay for it on a thread while the shards run."""
    import sklearn.decomposition  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


def _space(x: np.ndarray, *, unit: bool):
    """Standardised features' first principal components (``unit``: then scaled to unit length,
    for cosine neighbours), fitted on ``x`` (at most SPACE_FIT_ROWS of its rows, a seeded random
    subset) and never on labels."""
    # sklearn is imported where a probe is fitted: importing it costs ~1.6 s of every audit's start,
    # and a small lake or an unchanged one fits none (bench/README.md, "Fixed cost").
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    k = min(PROBE_COMPONENTS, x.shape[1], max(len(x) - 1, 1))
    space = make_pipeline(StandardScaler(), PCA(k, svd_solver="randomized", random_state=0),
                          *([Normalizer()] if unit else []))
    with threadpool_limits(1):
        return space.fit(_fit_rows(x))


def _fit_rows(x: np.ndarray) -> np.ndarray:
    """``x``, or a seeded random SPACE_FIT_ROWS of its rows where it has more."""
    if len(x) <= SPACE_FIT_ROWS:
        return x
    return x[np.sort(np.random.default_rng(0).choice(len(x), SPACE_FIT_ROWS, replace=False))]


def _transform(space, x: np.ndarray) -> np.ndarray:
    with threadpool_limits(1):
        return space.transform(x).astype(np.float32, copy=False)


def _fit_predict(z_fit, y_fit, z_pred, kind: str = "linear"):
    """Fit a probe's classifier on rows already in its space (``_space``) and predict: a
    logistic regression (``linear``) or a cosine k-nearest-neighbour vote (``neighbors``)."""
    # One OpenMP thread: these fits are small, and sklearn's threaded loss spun 25-50x slower than
    # one thread when the cores were busy (bench/adapt_fit.py beside a training job).
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if kind == "neighbors":
        model = KNeighborsClassifier(min(ORIENTATION_NEIGHBORS, len(z_fit)), weights="distance")
    else:
        model = LogisticRegression(C=PROBE_C, max_iter=300)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(z_fit, y_fit)
        return model.predict_proba(z_pred), list(model.classes_)


def _with_views(features: np.ndarray, views: dict[int, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows' features followed by their extra views; and for each stacked row, its row's position
    in ``rows``."""
    extra = [r for r in rows if r in views]
    if not extra:
        return features[rows], np.arange(len(rows))
    where = {r: j for j, r in enumerate(rows)}
    stacked = np.concatenate([features[rows], *(views[r] for r in extra)])
    owner = np.concatenate([np.arange(len(rows)), *(np.full(len(views[r]), where[r]) for r in extra)])
    return stacked, owner


def _fit_predict_views(features, y, views, fit_rows, pred_rows):
    """_fit_predict over every view of ``fit_rows`` (each with its row's label); per
    ``pred_rows`` row, the mean probabilities over its views."""
    x_fit, fit_owner = _with_views(features, views, fit_rows)
    x_pred, pred_owner = _with_views(features, views, pred_rows)
    p, fitted = _fit_predict(x_fit, y[fit_rows][fit_owner], x_pred)
    if len(x_pred) == len(pred_rows):
        return p, fitted
    total = np.zeros((len(pred_rows), p.shape[1]), np.float64)
    np.add.at(total, pred_owner, p)
    return (total / np.bincount(pred_owner, minlength=len(pred_rows))[:, None]).astype(p.dtype), fitted


def _in_space(features: np.ndarray, views: dict[int, np.ndarray]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Every row and view in one space (``_space``) fitted on all of them."""
    keys = sorted(views)
    fit_on = _fit_rows(features)  # before the views join, so a large lake's rows are not copied whole
    space = _space(np.concatenate([fit_on, *(views[i] for i in keys)]) if keys else fit_on, unit=False)
    z = _transform(space, features)
    if not keys:
        return z, {}
    zv = _transform(space, np.concatenate([views[i] for i in keys]))
    ends = np.cumsum([len(views[i]) for i in keys])
    return z, dict(zip(keys, np.split(zv, ends[:-1])))


def cross_fitted_probe(
    features: np.ndarray, labels: list[str | None], groups: list[str], classes: tuple[str, ...],
    *, views: dict[int, np.ndarray] | None = None, n_folds: int = N_FOLDS, min_images: int = MIN_IMAGES,
    min_class: int = MIN_CLASS_IMAGES,
) -> ProbeResult:
    """Out-of-fold probabilities for labelled rows, full-fit ones for the others.

    ``labels[i]`` is a class of ``classes``, or None (unlabelled or ambiguous: scored, not fitted).
    Folds are grouped by ``groups`` (patients), stratified by label.
    ``views[i]`` [k, D]: more views of row i's image (its turned views, for a task a turn does not
    change). They are fitted with the row's label and its probabilities are the mean over all its
    views, always within the row's own fold.
    """
    views = views or {}
    n = len(labels)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    method = [GENERIC] * n
    reason: list[str | None] = [None] * n
    counts: dict[str, int] = {}
    for lab in labels:
        if lab is not None:
            counts[lab] = counts.get(lab, 0) + 1
    learnable = sorted(c for c, k in counts.items() if k >= min_class)
    train = np.array([lab in learnable for lab in labels], dtype=bool)
    if sum(counts.values()) < min_images or train.sum() < min_images:
        return ProbeResult(probs, method, ["too_few_images"] * n)
    if len(learnable) < 2:
        return ProbeResult(probs, method, ["one_class"] * n)
    y = np.array([lab if lab is not None else "" for lab in labels], dtype=object)
    g = np.asarray(groups, dtype=object)
    col = {c: i for i, c in enumerate(classes)}
    features, views = _in_space(features, views)

    def place(rows, p, fitted_classes):
        for j, c in enumerate(fitted_classes):
            probs[rows, col[c]] = p[:, j]
        probs[rows] = np.nan_to_num(probs[rows], nan=0.0)

    idx = np.flatnonzero(train)
    k = min(n_folds, len(set(g[idx])))
    if k >= 2:
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0)
        with warnings.catch_warnings():  # a class in fewer groups than folds only warns
            warnings.simplefilter("ignore", UserWarning)
            folds = list(splitter.split(features[idx], y[idx], g[idx]))
        for fit_i, held_i in folds:
            fit_rows, held_rows = idx[fit_i], idx[held_i]
            if len(set(y[fit_rows])) < 2:
                continue
            p, fitted = _fit_predict_views(features, y, views, fit_rows, held_rows)
            place(held_rows, p, fitted)
            for r in held_rows:
                method[r] = LAKE_OOF
    rest = np.array([m == GENERIC for m in method]) & np.array(
        [lab is None or lab not in counts for lab in labels], dtype=bool
    )
    rest_rows = np.flatnonzero(rest)
    if len(rest_rows):
        p, fitted = _fit_predict_views(features, y, views, idx, rest_rows)
        place(rest_rows, p, fitted)
        for r in rest_rows:
            method[r] = LAKE_FIT
    for r in range(n):
        if method[r] == GENERIC:
            reason[r] = "class_too_rare" if labels[r] in counts and labels[r] not in learnable else "too_few_images"
    return ProbeResult(probs, method, reason)


def generic_distrust(features: np.ndarray, generic_severity: np.ndarray, *, k: int = DISTRUST_NEIGHBORS,
                     max_reference: int = DISTRUST_REFERENCE) -> np.ndarray:
    """Per row, the median generic severity (1 - p_generic(label)) of its ``k`` nearest rows with a
    label, itself left out; NaN where fewer than ``k`` labelled rows exist besides it.

    ``generic_severity[i]`` is NaN where row i has no label (it is scored, never a neighbour).
    Neighbours are sought among at most ``max_reference`` labelled rows (a seeded random subset).
    """
    n = len(features)
    out = np.full(n, np.nan, np.float32)
    labelled = np.flatnonzero(~np.isnan(generic_severity))
    if len(labelled) < k + 1:
        return out
    # imported past the early return: a small lake's audit never pays scikit-learn's import (~1.2 s)
    from sklearn.neighbors import NearestNeighbors

    if len(labelled) > max_reference:
        labelled = np.sort(np.random.default_rng(0).choice(labelled, max_reference, replace=False))
    space = _space(features[labelled], unit=True)
    with threadpool_limits(1):
        ref = space.transform(features[labelled])
        query = space.transform(features)
        # k + 1: a labelled row finds itself first; dropped below wherever it is among the results
        _, idx = NearestNeighbors(n_neighbors=k + 1).fit(ref).kneighbors(query)
    found = labelled[idx]
    own = found == np.arange(n)[:, None]
    # each row keeps its first k neighbours that are not itself
    keep = np.cumsum(~own, axis=1) <= k
    sev = np.where(~own & keep, generic_severity[found], np.nan)
    return np.nanmedian(sev, axis=1).astype(np.float32)


def _compose(stored: str, turn: str) -> str:
    """The orientation label of a stored image turned by ``turn``."""
    k = (preprocess.ORIENTATION_K[stored] + preprocess.ORIENTATION_K[turn]) % 4
    return next(o for o, v in preprocess.ORIENTATION_K.items() if v % 4 == k)


def orientation_probe(
    stored: np.ndarray, stored_labels: list[str], groups: list[str], sampled: np.ndarray,
    turned: dict[str, np.ndarray], *, n_folds: int = N_FOLDS, min_samples: int = MIN_ORIENTATION_SAMPLES,
    rounds: int = ORIENTATION_ROUNDS,
) -> ProbeResult:
    """Self-supervised orientation probabilities for every stored image.

    ``stored`` [N, D]: embeddings of the images as stored; ``sampled``: indices of the images that
    were also run turned; ``turned[turn]`` [len(sampled), D] their turned embeddings. A sampled
    image's stored orientation composed with each turn is the training target; it starts as the
    label (``stored_labels``, 'upright' unless a label says otherwise).

    A sampled image is scored out-of-fold (grouped by patient) on all four of its views at once:
    the stored orientation s that makes every view agree (sum over turns t of
    log p(compose(s, t) | view t)). That consensus is far surer than one view, so the training
    targets of sampled images are then re-derived from it: the images not sampled are scored by a
    probe fitted on those targets, so the lake's own rotated images stop teaching it that rotated
    means upright. ``rounds`` > 1 also refits the sampled images' out-of-fold probe on them.
    """
    n = len(stored)
    classes = tuple(ORIENTATION)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    if len(sampled) < min_samples:
        return ProbeResult(probs, [GENERIC] * n, ["too_few_samples"] * n)
    method = [LAKE_FIT] * n
    turns = ("upright", *turned)
    m = len(sampled)
    x = np.concatenate([stored[sampled], *(turned[t] for t in turns[1:])])
    g = np.array([groups[i] for _ in turns for i in sampled], dtype=object)
    col = {c: i for i, c in enumerate(classes)}
    # compose_index[s, t]: class index of a view turned by t of an image stored as s
    compose_index = np.array([[col[_compose(s_, t)] for t in turns] for s_ in classes])
    stored_now = [stored_labels[i] for i in sampled]
    space = _space(x, unit=True)
    x = _transform(space, x)

    def as_classes(p, fitted):
        block = np.full((len(p), len(classes)), 1e-6, np.float32)
        for j, c in enumerate(fitted):
            block[:, col[c]] = np.maximum(p[:, j], 1e-6)
        return block

    def consensus(view_probs):  # view_probs [4, k, classes] -> [k, classes] over the stored orientation
        logp = np.log(view_probs)
        score = np.stack([sum(logp[t, :, compose_index[s_, t]] for t in range(len(turns)))
                          for s_ in range(len(classes))], axis=1)
        score -= score.max(axis=1, keepdims=True)
        e = np.exp(score)
        return e / e.sum(axis=1, keepdims=True)

    k = min(n_folds, len(set(g)))
    if k >= 2:
        from sklearn.model_selection import StratifiedGroupKFold
    for _ in range(rounds if k >= 2 else 0):
        y = np.array([_compose(stored_now[j], t) for t in turns for j in range(m)], dtype=object)
        oof = np.zeros((m, len(classes)), np.float32)
        for fit_g, held_g in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0).split(x, y, g):
            held = np.array(sorted(set(held_g % m)))
            if not len(held):
                continue
            views = np.concatenate([held + t * m for t in range(len(turns))])
            p, fitted = _fit_predict(x[fit_g], y[fit_g], x[views], kind="neighbors")
            oof[held] = consensus(as_classes(p, fitted).reshape(len(turns), len(held), len(classes)))
        probs[sampled] = oof
        for i in sampled:
            method[i] = LAKE_OOF
        stored_now = [classes[int(c)] for c in oof.argmax(axis=1)]
    others = np.array([mth == LAKE_FIT for mth in method])
    if others.any():
        y = np.array([_compose(stored_now[j], t) for t in turns for j in range(m)], dtype=object)
        p, fitted = _fit_predict(x, y, _transform(space, stored[others]), kind="neighbors")
        probs[np.flatnonzero(others)] = as_classes(p, fitted)
        probs[np.flatnonzero(others)] /= probs[np.flatnonzero(others)].sum(axis=1, keepdims=True)
    return ProbeResult(probs, method, [None] * n)


# ---------------------------------------------------------------------------------------------
# From the database and back


_CURRENT_SQL = """
    with i as (
        select * from images
        qualify row_number() over (partition by uri order by audited_at desc, run_id desc) = 1
    )
    select i.uri, i.etag, coalesce(i.patient_key, i.study_instance_uid, i.uri) as grp,
           e.vector,
           max(f.header_class) filter (where f.field = 'body_part') as body_part_label,
           max(f.header_class) filter (where f.field = 'projection') as projection_label,
           max(f.header_class) filter (where f.field = 'orientation') as orientation_label,
           max(1 - f.header_class_prob) filter (where f.field = 'body_part') as body_part_generic_severity,
           max(1 - f.header_class_prob) filter (where f.field = 'projection') as projection_generic_severity,
           max(1 - f.header_class_prob) filter (where f.field = 'orientation') as orientation_generic_severity,
           bool_or(f.field = 'projection') as projection_checked
    from i
    left join findings as f on f.uri = i.uri
    left join embeddings as e on e.uri = i.uri and e.etag = i.etag and e.model_sha256 = ?
    group by all
    order by i.uri
"""


def _arrow(con, sql: str, params: list) -> pa.Table:
    cur = con.execute(sql, params)
    # duckdb 2 renamed fetch_arrow_table to to_arrow_table (pyproject allows both majors), and
    # warns that a cursor's Arrow output is one more copy of the rows: accepted, it is freed here.
    fetch = getattr(cur, "to_arrow_table", None) or cur.fetch_arrow_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fetch()


def _vectors(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(has [N] bool, [N, dim] float32) from a list<float> column; missing or wrong-width rows are
    zeros and not ``has``. Through Arrow: a Python list per float costs seconds per 10k images."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(column)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0))
    has = lengths == dim
    emb = np.zeros((n, dim), np.float32)
    if has.any():
        good = column.filter(pa.array(has))
        emb[has] = np.asarray(good.flatten(), dtype=np.float32).reshape(-1, dim)
    return has, emb


def _single(label: str | None, classes) -> str | None:
    return label if label is not None and "|" not in label and label in classes else None


def _generic_logprobs(con, uris_etags, model_sha256: str, task: str, classes) -> np.ndarray:
    con.register("_adapt_keys", pa.table({"uri": [u for u, _ in uris_etags], "etag": [e for _, e in uris_etags],
                                          "row": list(range(len(uris_etags)))}))
    try:
        rows = con.execute(
            """select k.row, p.probabilities from _adapt_keys as k
               join predictions as p on p.uri = k.uri and p.etag = k.etag and p.task = ? and p.model_sha256 = ?""",
            [task, model_sha256],
        ).fetchall()
    finally:
        con.unregister("_adapt_keys")
    out = np.full((len(uris_etags), len(classes)), 1.0 / len(classes), np.float32)
    for r, m in rows:
        out[r] = [m.get(c, 0.0) for c in classes]
    return np.log(np.clip(out, 1e-6, 1.0))


def _turned_views(con, entry, row_of: dict[str, int]) -> tuple[np.ndarray, dict[int, list[int]]]:
    """The orientation sample's turned embeddings of current images: (vectors [M, turned columns],
    image row -> its rows of the vectors in TURNS order), for the images that have every turn."""
    table = _arrow(
        con,
        """select s.uri, s.turn, s.vector from orientation_samples as s
           join images as i on i.uri = s.uri and i.etag = s.etag
           where s.model_sha256 = ?""",
        [entry.sha256],
    )
    a, b = entry.embedding.turned_columns()
    has, vectors = _vectors(table.column("vector"), b - a)
    if b - a != entry.embedding.size:  # rows written before the registry named a turned file: whole vectors
        whole, full = _vectors(table.column("vector"), entry.embedding.size)
        vectors[whole] = full[whole, a:b]
        has |= whole
    by_row: dict[int, dict[str, int]] = {}
    for r, (uri, turn) in enumerate(zip(table.column("uri").to_pylist(), table.column("turn").to_pylist())):
        if uri in row_of and has[r]:
            by_row.setdefault(row_of[uri], {})[turn] = r
    return vectors, {i: [t[x] for x in TURNS] for i, t in by_row.items() if all(x in t for x in TURNS)}


def turned_widths(entry) -> tuple[int, ...] | None:
    """The orientation_samples vector lengths ``_turned_views`` can use for ``entry``: its turned
    columns, or whole embeddings (rows written before the registry named a turned file); None
    without an embedding."""
    if entry.embedding is None:
        return None
    a, b = entry.embedding.turned_columns()
    return tuple(sorted({b - a, entry.embedding.size}))


def _fingerprint(con, entry) -> str:
    """What the probes depend on: the images and their versions, labels, embeddings and samples,
    and the registry's say on which embedding columns each probe reads."""
    model_sha256 = entry.sha256
    emb = entry.embedding
    columns = ("" if emb is None else
               ",".join(f"{t}:{a}-{b}" for t, (a, b) in sorted(emb.probe_features.items()))
               + f";turned:{emb.turned_columns()}")
    parts = con.execute(
        """select (select count(*) || '/' || coalesce(max(audited_at)::varchar, '') from images),
                  (select count(*) || '/' || coalesce(max(loaded_at)::varchar, '') from labels),
                  (select count(*) from embeddings where model_sha256 = ?),
                  (select count(*) from orientation_samples where model_sha256 = ?)""",
        [model_sha256, model_sha256],
    ).fetchone()
    return f"{model_sha256}|{FIT_VERSION}|{columns}|" + "|".join(str(p) for p in parts)


def adapt_lake(con, entry, run_id: str) -> dict[str, dict[str, int]]:
    """Fit the probes over every current image and replace ``lake_predictions``; returns counts
    of rows per task and method (the flow logs them)."""
    fingerprint = _fingerprint(con, entry)
    previous = con.execute("select value from meta where key = 'lake_fit_fingerprint'").fetchone()
    if previous and previous[0] == fingerprint:
        # Nothing the probes read has changed since the last fit: its rows stand (a re-run of an
        # unchanged lake costs no refit).
        return {"unchanged": {"kept": con.execute("select count(*) from lake_predictions").fetchone()[0]}}
    table = _arrow(con, _CURRENT_SQL, [entry.sha256])
    n = table.num_rows
    con.execute("delete from lake_predictions")
    if n == 0 or entry.embedding is None:
        return {}
    dim = entry.embedding.size
    has, emb = _vectors(table.column("vector"), dim)
    data = {k: table.column(k).to_pylist() for k in table.column_names if k != "vector"}
    keys = list(zip(data["uri"], data["etag"]))
    groups = data["grp"]
    t_vec, turned_of = _turned_views(con, entry, {u: i for i, (u, _) in enumerate(keys)})
    ta, tb = entry.embedding.turned_columns()
    out: list[dict] = []
    now = parts.utcnow()
    counts: dict[str, dict[str, int]] = {}

    def emit(task, classes, rows_idx, result: ProbeResult):
        for local, i in enumerate(rows_idx):
            m = result.method[local]
            reason = result.reason[local] if m == GENERIC else None
            p = result.probs[local]
            distrust = None if result.distrust is None or np.isnan(result.distrust[local]) else float(result.distrust[local])
            row = {"uri": keys[i][0], "etag": keys[i][1], "task": task, "method": m, "fallback_reason": reason,
                   "model_sha256": entry.sha256, "fitted_run_id": run_id, "fitted_at": now,
                   "predicted": None, "probability": None, "probabilities": None, "generic_distrust": distrust}
            if m != GENERIC:
                best = int(np.argmax(p))
                row.update(predicted=classes[best], probability=float(p[best]),
                           probabilities=list(zip(classes, (float(v) for v in p))))
            out.append(row)
            key = m if m != GENERIC else f"generic:{reason}"
            counts.setdefault(task, {})[key] = counts.get(task, {}).get(key, 0) + 1

    for task in ("body_part", "projection"):
        if task not in entry.tasks:
            continue
        classes = entry.tasks[task].classes
        scope = np.arange(n) if task == "body_part" else np.flatnonzero([bool(v) for v in data["projection_checked"]])
        with_emb = scope[has[scope]]
        without = scope[~has[scope]]
        emit(task, classes, without, ProbeResult(np.zeros((len(without), len(classes))), [GENERIC] * len(without),
                                                 ["no_embedding"] * len(without)))
        if len(with_emb) == 0:
            continue
        a, b = entry.embedding.columns(task)
        feats = np.concatenate([emb[with_emb, a:b], _generic_logprobs(con, [keys[i] for i in with_emb], entry.sha256,
                                                                 task, classes)], axis=1)
        labels = [_single(data[f"{task}_label"][i], classes) for i in with_emb]
        views = {}
        if task in ROTATION_INVARIANT and ta <= a < b <= tb:
            views = {j: np.concatenate([t_vec[turned_of[i], a - ta:b - ta],
                                        np.repeat(feats[j:j + 1, b - a:], len(TURNS), 0)],
                                       axis=1)
                     for j, i in enumerate(with_emb) if i in turned_of}
        result = cross_fitted_probe(feats, labels, [groups[i] for i in with_emb], classes, views=views)
        result.distrust = _distrust(emb[with_emb, a:b], data[f"{task}_generic_severity"], with_emb)
        emit(task, classes, with_emb, result)

    if "orientation" in entry.tasks:
        classes = tuple(ORIENTATION)
        with_emb = np.flatnonzero(has)
        without = np.flatnonzero(~has)
        emit("orientation", classes, without, ProbeResult(np.zeros((len(without), 4)), [GENERIC] * len(without),
                                                          ["no_embedding"] * len(without)))
        if len(with_emb):
            position = {i: j for j, i in enumerate(with_emb)}
            sampled = np.asarray(sorted(position[i] for i in turned_of if i in position), dtype=int)
            a, b = entry.embedding.columns("orientation")
            turned = {t: t_vec[[turned_of[with_emb[j]][k] for j in sampled], a - ta:b - ta]
                      for k, t in enumerate(TURNS)}
            stored_labels = [_single(data["orientation_label"][i], classes) or "upright" for i in with_emb]
            result = orientation_probe(emb[with_emb, a:b], stored_labels, [groups[i] for i in with_emb], sampled,
                                       turned)
            result.distrust = _distrust(emb[with_emb, a:b], data["orientation_generic_severity"], with_emb)
            emit("orientation", classes, with_emb, result)

    con.execute("insert or replace into meta values ('lake_fit_fingerprint', ?)", [fingerprint])
    if out:
        table = pa.Table.from_pylist(out, schema=LAKE_SCHEMA)
        con.register("_lake_rows", table)
        try:
            con.execute(f"insert into lake_predictions ({', '.join(LAKE_SCHEMA.names)}) "
                        f"select {', '.join(LAKE_SCHEMA.names)} from _lake_rows")
        finally:
            con.unregister("_lake_rows")
    return counts


def _distrust(features: np.ndarray, severity: list, rows: np.ndarray) -> np.ndarray:
    sev = np.array([np.nan if severity[i] is None else severity[i] for i in rows], np.float32)
    return generic_distrust(features, sev)


LAKE_SCHEMA = pa.schema([
    ("uri", pa.string()), ("etag", pa.string()), ("task", pa.string()), ("predicted", pa.string()),
    ("probability", pa.float32()), ("probabilities", parts.PROBABILITIES_TYPE), ("method", pa.string()),
    ("fallback_reason", pa.string()), ("model_sha256", pa.string()), ("fitted_run_id", pa.string()),
    ("fitted_at", pa.timestamp("us", tz="UTC")), ("generic_distrust", pa.float32()),
])
