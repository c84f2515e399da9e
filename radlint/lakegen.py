"""Build a DICOM lake from a labeled image folder, with label errors planted at a known rate.

Used by `radlint demo` and by the planted-error evaluation: the truth of every planted error is
written beside the lake (never inside it), so findings can be scored against it.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from radlint.tasks.preprocess import correct_orientation, rotate_to_orientation
from radlint.tasks.vocabulary import ORIENTATION, PROJECTION

# BodyPartExamined written for each fine label of the source sets (first match wins).
FINE_TO_TERM = {
    "skull lateral": "SKULL", "skull": "SKULL", "sinus": "SINUS", "cervical spine": "CSPINE",
    "chest": "CHEST", "clavicles": "CLAVICLE", "abdomen": "ABDOMEN", "pelvis": "PELVIS",
    "pelvis ap (ddh)": "PELVIS", "hip": "HIP", "thoracic spine": "TSPINE", "lumbar spine": "LSPINE",
    "shoulder": "SHOULDER", "humerus": "HUMERUS", "elbow": "ELBOW", "forearm": "FOREARM",
    "wrist": "WRIST", "hand": "HAND", "finger": "FINGER", "thigh": "FEMUR", "knee": "KNEE",
    "lower leg": "LEG", "ankle": "ANKLE", "feet": "FOOT",
}
COARSE_TO_TERM = {
    "head": "SKULL", "neck": "CSPINE", "chest": "CHEST", "abdomen": "ABDOMEN", "pelvis": "PELVIS",
    "spine": "LSPINE", "upper_limb": "HAND", "lower_limb": "KNEE",
}
WRONG_TERMS = {c: t for c, t in COARSE_TO_TERM.items()}
JA_DESCRIPTION = {"CHEST": "胸部", "ABDOMEN": "腹部", "KNEE": "膝関節", "HAND": "手", "SKULL": "頭部", "PELVIS": "骨盤"}
JA_VIEW = {"PA": "正面", "AP": "臥位正面", "LATERAL": "側面"}
MANUFACTURERS = ["FUJIFILM Corporation", "Canon Inc.", "Konica Minolta", "Carestream Health", "Agfa", "Philips"]
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]

PLANT_FIELDS = ("body_part", "projection", "orientation")
# ProtocolName shared by a systematically mislabelled group (build_lake's ``systematic``).
SYSTEMATIC_PROTOCOL = "RAD PROTOCOL 7"


@dataclass
class SourceImage:
    image_id: str
    path: Path
    body_part: str
    body_part_fine: str
    view: str
    patient_id: str
    institution: str
    # how the stored image differs from upright (labels' optional orientation column)
    orientation: str = "upright"


def read_labeled_folder(labels_csv: Path, split_file: Path | None = None, split: str | None = None,
                        overrides: Path | None = None, unseen_source: str | None = None) -> list[SourceImage]:
    """Rows of a labels.csv (the format of shared/data/radiographs), optionally one split only,
    with ``overrides`` applied (radlint.tasks.evaluation.apply_overrides). Every image of
    ``unseen_source`` is kept whatever its split: a lake imitating a new hospital for a model
    trained without that source."""
    from radlint.tasks.evaluation import apply_overrides, stored_orientation

    labels_csv = Path(labels_csv)
    keep: set[str] | None = None
    if split_file and split and Path(split_file).exists():
        with open(split_file, newline="") as f:
            keep = {r["patient_id"] for r in csv.DictReader(f) if r.get("split") == split}
    out = []
    with open(labels_csv, newline="", encoding="utf-8") as f:
        rows = apply_overrides(list(csv.DictReader(f)), overrides)
    for r in rows:
        if keep is not None and r["patient_id"] not in keep and r.get("source") != unseen_source:
            continue
        out.append(
            SourceImage(
                image_id=r["image_id"],
                path=labels_csv.parent / r["file"],
                body_part=r["body_part"],
                body_part_fine=r.get("body_part_fine", ""),
                view=(r.get("view") or "").upper(),
                patient_id=r["patient_id"],
                institution=r.get("institution") or "",
                orientation=stored_orientation(r),
            )
        )
    return out


def stratified_sample(images: list[SourceImage], n: int, seed: int) -> list[SourceImage]:
    """Up to ``n`` images, spread over body parts as evenly as the data allows."""
    rng = random.Random(seed)
    by_class: dict[str, list[SourceImage]] = {}
    for im in images:
        by_class.setdefault(im.body_part, []).append(im)
    for v in by_class.values():
        rng.shuffle(v)
    chosen: list[SourceImage] = []
    while len(chosen) < n and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(chosen) < n:
                chosen.append(by_class[c].pop())
    return chosen


def _term_for(im: SourceImage) -> str | None:
    for part in im.body_part_fine.lower().split("|"):
        if part.strip() in FINE_TO_TERM:
            return FINE_TO_TERM[part.strip()]
    return COARSE_TO_TERM.get(im.body_part)


def make_dataset(
    pixels_u8: np.ndarray,
    *,
    patient_id: str,
    body_part_examined: str | None,
    view_position: str | None,
    description: str,
    institution: str,
    manufacturer: str,
    study_date: str,
    monochrome1: bool,
    patient_orientation: str | None = None,
    bits_stored: int = 12,
    protocol_name: str | None = None,
) -> Dataset:
    """A CR dataset with realistic headers around an 8-bit display image (stored as 12/16-bit)."""
    maxval = (1 << bits_stored) - 1
    arr = pixels_u8.astype(np.float32) * (maxval / 255.0)
    if monochrome1:
        arr = maxval - arr
    arr = np.clip(np.rint(arr), 0, maxval).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = f"DEMO^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = study_date
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.InstitutionName = institution[:64]
    ds.Manufacturer = manufacturer
    if not all(str(v).isascii() for v in (description, institution, manufacturer)):
        # Without a declared character set pydicom writes "?" for every kanji, and the Japanese
        # descriptions this lake is meant to exercise would never reach the header parser.
        # "\ISO 2022 IR 87" (JIS X 0208) is what Japanese modalities commonly send.
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    if body_part_examined:
        ds.BodyPartExamined = body_part_examined
    if view_position:
        ds.ViewPosition = view_position
    if patient_orientation:
        ds.PatientOrientation = patient_orientation.split("\\")
    if protocol_name:
        ds.ProtocolName = protocol_name
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    return ds


def encode(ds: Dataset, transfer_syntax) -> bytes:
    """Serialize ``ds`` in the given transfer syntax (compressing the pixels when it is compressed)."""
    if UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_lake(
    images: list[SourceImage],
    lake_dir: Path,
    truth_csv: Path,
    *,
    error_rate: float = 0.1,
    seed: int = 0,
    transfer_syntaxes=TRANSFER_SYNTAXES,
    systematic: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Write one DICOM per source image under ``lake_dir`` and the planted truth to ``truth_csv``.

    Each field is corrupted independently with probability ``error_rate``: BodyPartExamined
    (and the descriptions) name another region; ViewPosition of a chest with a known view names
    another projection; the stored pixels are rotated while the header says upright.

    ``systematic`` = (true class, wrong class) imitates a site whose protocol is mapped to the
    wrong body part: every image of the true class gets the wrong class's BodyPartExamined and
    one shared ProtocolName (SYSTEMATIC_PROTOCOL); the truth marks them ``systematic``.
    """
    rng = random.Random(seed)
    lake_dir = Path(lake_dir)
    lake_dir.mkdir(parents=True, exist_ok=True)
    truth: list[dict[str, Any]] = []
    for k, im in enumerate(images):
        u8 = correct_orientation(np.asarray(Image.open(im.path).convert("L")), im.orientation)
        term = _term_for(im)
        view = im.view if im.view in PROJECTION else None
        planted = {f: False for f in PLANT_FIELDS}
        header_term, header_view, orientation = term, view, "upright"
        in_group = systematic is not None and im.body_part == systematic[0]
        if in_group:
            header_term = WRONG_TERMS[systematic[1]]
            planted["body_part"] = True
        elif term and rng.random() < error_rate:
            wrong = rng.choice([c for c in WRONG_TERMS if c != im.body_part])
            header_term = WRONG_TERMS[wrong]
            planted["body_part"] = True
        if im.body_part == "chest" and view and rng.random() < error_rate:
            header_view = rng.choice([v for v in PROJECTION if v != view])
            planted["projection"] = True
        if rng.random() < error_rate:
            orientation = rng.choice([o for o in ORIENTATION if o != "upright"])
            u8 = rotate_to_orientation(u8, orientation)
            planted["orientation"] = True
        if rng.random() < 0.25 and header_term in JA_DESCRIPTION:
            desc = JA_DESCRIPTION[header_term] + (JA_VIEW.get(header_view or "", ""))
        else:
            desc = " ".join(x for x in ("XR", header_term or "", header_view or "") if x)
        ds = make_dataset(
            u8,
            patient_id=im.patient_id,
            body_part_examined=header_term,
            view_position=header_view,
            description=desc,
            institution=im.institution or "Unknown",
            manufacturer=rng.choice(MANUFACTURERS),
            study_date=f"{rng.choice([2024, 2025, 2026])}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            monochrome1=rng.random() < 0.3,
            patient_orientation="L\\F" if rng.random() < 0.5 else None,
            protocol_name=SYSTEMATIC_PROTOCOL if in_group else None,
        )
        ts = transfer_syntaxes[k % len(transfer_syntaxes)]
        name = f"{im.image_id}.dcm"
        sub = lake_dir / (term or "unknown").lower()
        sub.mkdir(parents=True, exist_ok=True)
        (sub / name).write_bytes(encode(ds, ts))
        uri = "file://" + str((sub / name).resolve())
        for f in PLANT_FIELDS:
            # true_class: what the pixels show; header_value: what the stored header claims.
            true_value = {"body_part": im.body_part, "projection": view, "orientation": orientation}[f]
            stored_header = {"body_part": header_term, "projection": header_view, "orientation": "upright"}[f]
            truth.append(
                {
                    "uri": uri,
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "image_id": im.image_id,
                    "field": f,
                    "planted": planted[f],
                    "true_class": true_value,
                    "header_value": stored_header,
                    "systematic": f == "body_part" and in_group,
                }
            )
    truth_csv = Path(truth_csv)
    truth_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(truth_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(truth[0].keys()) if truth else ["uri"])
        w.writeheader()
        w.writerows(truth)
    return truth
