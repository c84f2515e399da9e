"""Header values -> radlint vocabularies, and external label tables.

Everything here is data plus small functions. A value that cannot be mapped stays None
(NULL), never a guess. A term that covers several regions maps to all of them, joined
by ``|`` (for example ``abdomen|pelvis``); the findings view accepts any of them.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

from radlint.tasks.vocabulary import BODY_PART

ALL_REGIONS = "|".join(BODY_PART[:-1])  # WHOLEBODY: every region but "other"

# DICOM PS3.16 Annex L BodyPartExamined defined terms (and common variants) used in radiography.
# Shoulder is upper_limb and clavicle is chest, as in the UNIFESP training labels;
# scapula and AC joint sit between the two and accept either.
BODY_PART_EXAMINED: dict[str, str] = {
    # head
    "SKULL": "head", "HEAD": "head", "FACE": "head", "JAW": "head", "MANDIBLE": "head",
    "MAXILLA": "head", "BRAIN": "head", "SINUS": "head", "PARANASALSINUS": "head", "ORBIT": "head",
    "NOSE": "head", "NASALBONE": "head", "EAR": "head", "IAC": "head", "TMJ": "head",
    "ZYGOMA": "head", "TEMPORALBONE": "head", "SELLA": "head", "TEETH": "head", "TOOTH": "head",
    "CEPHALOMETRIC": "head",
    # neck
    "NECK": "neck", "CSPINE": "neck", "LARYNX": "neck", "PHARYNX": "neck", "SOFTTISSUENECK": "neck",
    # spine
    "TSPINE": "spine", "LSPINE": "spine", "SPINE": "spine", "WHOLESPINE": "spine",
    "TLSPINE": "spine", "LSSPINE": "spine|pelvis", "SSPINE": "spine|pelvis", "COCCYX": "spine|pelvis",
    "CTSPINE": "neck|spine", "CERVICOTHORACIC": "neck|spine", "THORACOLUMBAR": "spine",
    # chest
    "CHEST": "chest", "THORAX": "chest", "LUNG": "chest", "RIB": "chest", "RIBS": "chest",
    "STERNUM": "chest", "CLAVICLE": "chest", "HEART": "chest", "SCAPULA": "chest|upper_limb",
    "ACJOINT": "chest|upper_limb", "SCJOINT": "chest",
    # abdomen
    "ABDOMEN": "abdomen", "KUB": "abdomen", "STOMACH": "abdomen", "COLON": "abdomen",
    "KIDNEY": "abdomen", "LIVER": "abdomen", "GALLBLADDER": "abdomen", "BOWEL": "abdomen",
    # pelvis
    "PELVIS": "pelvis", "HIP": "pelvis", "SACRUM": "pelvis|spine", "SIJOINT": "pelvis",
    "BLADDER": "pelvis|abdomen", "BUTTOCK": "pelvis",
    # upper limb
    "SHOULDER": "upper_limb", "ARM": "upper_limb", "UPRARM": "upper_limb", "HUMERUS": "upper_limb",
    "ELBOW": "upper_limb", "FOREARM": "upper_limb", "RADIUS": "upper_limb", "ULNA": "upper_limb",
    "WRIST": "upper_limb", "HAND": "upper_limb", "FINGER": "upper_limb", "THUMB": "upper_limb",
    "UPREXM": "upper_limb", "UPPEREXTREMITY": "upper_limb",
    # lower limb
    "LEG": "lower_limb", "LOWLEG": "lower_limb", "FEMUR": "lower_limb", "THIGH": "lower_limb",
    "KNEE": "lower_limb", "PATELLA": "lower_limb", "TIBIA": "lower_limb", "FIBULA": "lower_limb",
    "ANKLE": "lower_limb", "FOOT": "lower_limb", "HEEL": "lower_limb", "CALCANEUS": "lower_limb",
    "TOE": "lower_limb", "LOWREXM": "lower_limb", "LOWEREXTREMITY": "lower_limb",
    # several regions
    "EXTREMITY": "upper_limb|lower_limb",
    "CHESTABDOMEN": "chest|abdomen", "ABDOMENPELVIS": "abdomen|pelvis",
    "CHESTABDPELVIS": "chest|abdomen|pelvis", "CHESTABDOMENPELVIS": "chest|abdomen|pelvis",
    "HEADNECK": "head|neck", "WHOLEBODY": ALL_REGIONS,
}

# Free-text patterns for Study/Series Description and Protocol Name, English and Japanese.
# Tried longest-first; a matched span is removed, so "C-SPINE" is not also read as "SPINE".
_TEXT_BODY_PART: list[tuple[str, str]] = [
    # spine and neck first: they contain chest/neck words
    (r"\bC[\s\-_.]?SPINE|CERVICAL\s*SPINE|\bCSP\b|頸椎|頚椎", "neck"),
    (r"\bT[\s\-_.]?SPINE|THORACIC\s*SPINE|DORSAL\s*SPINE|\bTSP\b|胸椎", "spine"),
    (r"\bL[\s\-_.]?SPINE|LUMBAR\s*SPINE|LUMBAR|LUMBOSACRAL|\bLSP\b|腰椎", "spine"),
    (r"WHOLE\s*SPINE|SCOLIOSIS|全脊椎|脊椎|脊柱", "spine"),
    (r"SACRUM|COCCYX|仙骨|尾骨", "pelvis|spine"),
    (r"\bSPINE\b", "spine"),
    (r"SOFT\s*TISSUE\s*NECK|\bNECK\b|頸部|頚部", "neck"),
    (r"SKULL|\bHEAD\b|SINUS(ES)?|FACIAL|\bFACE\b|MANDIBLE|ORBIT|\bNASAL|\bCEPH|頭部|頭蓋|副鼻腔|顔面|下顎|眼窩", "head"),
    (r"CHEST|THORAX|\bCXR\b|\bLUNGS?\b|\bRIBS?\b|STERNUM|CLAVICLES?|胸部|肋骨|胸骨|鎖骨|肺", "chest"),
    (r"ABDOMEN|\bABD\b|\bKUB\b|腹部", "abdomen"),
    (r"PELVIS|\bHIPS?\b|骨盤|股関節", "pelvis"),
    (r"SHOULDER|HUMERUS|ELBOW|FOREARM|WRIST|\bHANDS?\b|FINGERS?|THUMB|UPPER\s*(ARM|EXTREMITY|LIMB)|"
     r"肩関節|肩|上腕|肘|前腕|手関節|手指|手|指", "upper_limb"),
    (r"FEMUR|THIGH|KNEES?|PATELLA|TIBIA|FIBULA|\bTIB\b|\bFIB\b|ANKLES?|\bFOOT\b|\bFEET\b|HEEL|CALCANEUS|TOES?|"
     r"LOWER\s*(LEG|EXTREMITY|LIMB)|\bLEG\b|大腿|膝関節|膝|下腿|足関節|足趾|踵|足", "lower_limb"),
]
_TEXT_BODY_PART_RE = [(re.compile(p, re.IGNORECASE), c) for p, c in _TEXT_BODY_PART]

VIEW_POSITION: dict[str, str] = {
    "PA": "PA", "POSTERO-ANTERIOR": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "ANTERO-POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP",
    "LL": "LATERAL", "RL": "LATERAL", "LAT": "LATERAL", "LATERAL": "LATERAL",
    "LLAT": "LATERAL", "RLAT": "LATERAL", "L": "LATERAL", "R": "LATERAL",
    # Decubitus and oblique views are neither PA, AP nor a true lateral: unknown.
}

_TEXT_PROJECTION: list[tuple[str, str]] = [
    (r"\bPA\b|POSTERO\s*-?\s*ANTERIOR|P\s*/\s*A|後前", "PA"),
    (r"\bAP\b|ANTERO\s*-?\s*POSTERIOR|A\s*/\s*P|前後|SUPINE|PORTABLE|臥位", "AP"),
    (r"\bLAT\b|\bLATERAL\b|\bLL\b|\bRL\b|側面|側位", "LATERAL"),
    (r"正面|FRONTAL", "PA|AP"),
]
_TEXT_PROJECTION_RE = [(re.compile(p, re.IGNORECASE), c) for p, c in _TEXT_PROJECTION]

_PROJECTION_ORDER = ("PA", "AP", "LATERAL")


def _fold(text: str) -> str:
    # NFKC folds full-width Latin (ＣＨＥＳＴ) and half-width katakana to their usual forms.
    return unicodedata.normalize("NFKC", text).upper().strip()


def _join(classes: Iterable[str], order: Iterable[str]) -> str | None:
    found = set()
    for c in classes:
        found.update(c.split("|"))
    ordered = [c for c in order if c in found]
    return "|".join(ordered) if ordered else None


def body_part_from_examined(value: str | None) -> str | None:
    """BodyPartExamined -> body_part class(es), or None."""
    if not value:
        return None
    key = re.sub(r"[\s_\-]", "", _fold(value))
    if key in BODY_PART_EXAMINED:
        return BODY_PART_EXAMINED[key]
    return body_part_from_text(value)


def body_part_from_text(value: str | None) -> str | None:
    """Free text (descriptions, protocol names, EN/JA) -> body_part class(es), or None."""
    if not value:
        return None
    text = _fold(value)
    found = []
    for pattern, classes in _TEXT_BODY_PART_RE:
        if pattern.search(text):
            found.append(classes)
            text = pattern.sub(" ", text)
    return _join(found, BODY_PART)


def projection_from_view_position(value: str | None) -> str | None:
    """ViewPosition -> PA/AP/LATERAL, or None (decubitus, oblique, unknown)."""
    if not value:
        return None
    key = _fold(value)
    if key in VIEW_POSITION:
        return VIEW_POSITION[key]
    return projection_from_text(value)


def projection_from_text(value: str | None) -> str | None:
    """Free text -> projection class(es). 'Frontal' alone (正面) accepts PA or AP."""
    if not value:
        return None
    text = _fold(value)
    hits = [c for pattern, c in _TEXT_PROJECTION_RE if pattern.search(text)]
    if not hits:
        return None
    specific = [h for h in hits if "|" not in h]
    return _join(specific or hits, _PROJECTION_ORDER)


def orientation_from_patient_orientation(value: str | None) -> str | None:
    """PatientOrientation (row direction \\ column direction) -> rotation of the stored image.

    Upright means the feet (F) are toward the bottom of the image: the column direction
    (second value) contains F. Head at the bottom is rot180; feet toward the right means the
    head points left, i.e. the upright image turned 90 degrees counter-clockwise.
    """
    if not value:
        return None
    parts = [p.strip().upper() for p in re.split(r"\\", str(value)) if p.strip()]
    if len(parts) != 2:
        return None
    row_dir, col_dir = parts
    if "F" in col_dir and "H" not in col_dir:
        return "upright"
    if "H" in col_dir and "F" not in col_dir:
        return "rot180"
    if "F" in row_dir and "H" not in row_dir:
        return "rot90ccw"
    if "H" in row_dir and "F" not in row_dir:
        return "rot90cw"
    return None


_TEXT_FIELDS = ("series_description", "protocol_name", "study_description")


def header_labels(row: dict[str, Any]) -> dict[str, Any]:
    """Normalized labels for one `images` row, with the element each came from."""
    body, body_src = body_part_from_examined(row.get("body_part_examined")), None
    if body:
        body_src = "BodyPartExamined"
    else:
        for f in _TEXT_FIELDS:
            body = body_part_from_text(row.get(f))
            if body:
                body_src = f
                break
    proj, proj_src = projection_from_view_position(row.get("view_position")), None
    if proj:
        proj_src = "ViewPosition"
    else:
        for f in _TEXT_FIELDS:
            proj = projection_from_text(row.get(f))
            if proj:
                proj_src = f
                break
    orient = orientation_from_patient_orientation(row.get("patient_orientation"))
    return {
        "label_body_part": body,
        "label_body_part_source": body_src,
        "label_projection": proj,
        "label_projection_source": proj_src,
        "label_orientation": orient,
        "label_orientation_source": "PatientOrientation" if orient else None,
    }


LABEL_COLUMNS = ("body_part", "projection", "orientation")


class LabelFileError(ValueError):
    """The external label table cannot be used."""


# The last label table read, by path and file identity: the audit command validates the file
# before any work and the flow then loads it, in the same process; a 1M-row file is read once.
_last_read: tuple[tuple, Any] | None = None


def read_label_file(path: str | Path):
    """Read a CSV or Parquet label table into a pyarrow Table (the last one read is kept, and
    returned again while the file's size, mtime and ctime are unchanged).

    Raises:
        LabelFileError: as :func:`_read_label_file`.
    """
    global _last_read
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        key = None
    if key is not None and _last_read is not None and _last_read[0] == key:
        return _last_read[1]
    table = _read_label_file(path)
    _last_read = (key, table) if key is not None else None
    return table


def _read_label_file(path: str | Path):
    """Read a CSV or Parquet label table into a pyarrow Table.

    The table is keyed by ``sop_instance_uid`` (or ``SOPInstanceUID``) or ``uri`` and holds any
    of ``body_part``, ``projection``, ``orientation``; values are normalized with the header
    mappings, and a value that maps to nothing is rejected rather than guessed.

    Raises:
        LabelFileError: unreadable file, no key column, no label column, unknown values.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise LabelFileError(f"label file not found: {path}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=None)
            )
    except Exception as exc:
        raise LabelFileError(f"cannot read label file {path}: {exc}") from exc
    cols = {c.lower(): c for c in table.column_names}
    key_col = cols.get("sop_instance_uid") or cols.get("sopinstanceuid") or cols.get("uri")
    if key_col is None:
        raise LabelFileError(f"{path}: needs a sop_instance_uid or uri column")
    present = [c for c in LABEL_COLUMNS if c in cols]
    if not present:
        raise LabelFileError(f"{path}: needs at least one of {', '.join(LABEL_COLUMNS)}")
    normalizers = {
        "body_part": lambda v: v if v in BODY_PART else body_part_from_examined(v),
        "projection": projection_from_view_position,
        "orientation": lambda v: v if v in ("upright", "rot90cw", "rot180", "rot90ccw") else None,
    }
    out: dict[str, list] = {"sop_instance_uid": [], "uri": []}
    for c in LABEL_COLUMNS:
        out[c] = []
    keys = table.column(key_col).to_pylist()
    is_uri = key_col.lower() == "uri"
    raw = {c: table.column(cols[c]).to_pylist() for c in present}
    bad: list[str] = []
    for i, key in enumerate(keys):
        if key is None or str(key).strip() == "":
            continue
        out["uri" if is_uri else "sop_instance_uid"].append(str(key).strip())
        out["sop_instance_uid" if is_uri else "uri"].append(None)
        for c in LABEL_COLUMNS:
            v = raw[c][i] if c in raw else None
            if v is None or str(v).strip() == "":
                out[c].append(None)
                continue
            norm = normalizers[c](str(v).strip())
            if norm is None:
                bad.append(f"{c}={v!r}")
            out[c].append(norm)
    if bad:
        sample = ", ".join(sorted(set(bad))[:5])
        raise LabelFileError(f"{path}: {len(bad)} label values map to no class (e.g. {sample})")
    return pa.table({k: pa.array(v, type=pa.string()) for k, v in out.items()})
