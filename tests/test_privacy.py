"""What an audit must never keep: the patient-key salt (issue 22 item 1) and identifiers (item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from radlint.tasks import database, dicom_io, settings


def _files_containing(root: Path, needle: bytes, skip: tuple[Path, ...] = ()) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def _cli_audit(lake: Path, db: Path, registry: Path, prefect_home: Path, salt: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", settings.SALT_ENV)}
    env["PREFECT_HOME"] = str(prefect_home)
    # Prefect's own logs to the API and to the console, so that a salt logged anywhere is found.
    env["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    if salt is not None:
        env[settings.SALT_ENV] = salt
    return subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--registry", str(registry),
         "--device", "cpu", "--executor", "dask", "--workers", "2", "--shard-size", "2"],
        capture_output=True, timeout=600, env=env,
    )


def _patient_keys(db: Path) -> dict[str, str]:
    con = database.connect(db, read_only=True)
    try:
        return dict(con.execute("select regexp_extract(uri, '[^/]+$'), patient_key from images").fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_salt_never_reaches_prefect_or_logs_with_dask(tmp_path, make_dicom, tiny_registry):
    """The salt file's and the environment's salt both stay out of Prefect's database (the flow's
    and tasks' parameters), PREFECT_HOME, the logs and the outputs; keys depend only on the salt."""
    lake = tmp_path / "lake"
    lake.mkdir()
    ids = {f"i{i}.dcm": f"PID-{i:08d}" for i in range(4)}
    for i, (name, pid) in enumerate(ids.items()):
        (lake / name).write_bytes(make_dicom(seed=i, patient_id=pid))
    home = tmp_path / "prefect-home"

    # 1. No RADLINT_PATIENT_SALT: a random salt is created in <db>.salt and only its path travels.
    db = tmp_path / "file-salt.duckdb"
    proc = _cli_audit(lake, db, tiny_registry, home, salt=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    salt_file = Path(str(db) + ".salt")
    assert salt_file.stat().st_mode & 0o777 == 0o600
    salt = salt_file.read_text().strip()
    keys = _patient_keys(db)
    assert keys == {name: dicom_io.patient_key(pid, salt) for name, pid in ids.items()}

    # 2. The same salt from the environment gives the same keys in another database.
    env_db = tmp_path / "env-salt.duckdb"
    proc2 = _cli_audit(lake, env_db, tiny_registry, home, salt=salt)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert not Path(str(env_db) + ".salt").exists()
    assert _patient_keys(env_db) == keys

    needle = salt.encode()
    assert any(home.rglob("*.db")), "Prefect's database is expected under PREFECT_HOME"
    # The scan sees the task parameters: the salt file's path, which travels in their place, is there.
    assert _files_containing(home, str(salt_file).encode())
    assert _files_containing(home, needle) == []
    assert _files_containing(tmp_path, needle, skip=(salt_file,)) == []
    for p in (proc, proc2):
        assert needle not in p.stdout and needle not in p.stderr


# Issue 22 item 2: every element it names, each with a value found nowhere else (VRs permitting).
ISSUE_ELEMENTS = [
    "ImageComments", "PatientAge", "PatientSex", "ContentCreatorName", "ReviewerName", "PersonName",
    "VerifyingObserverName", "ScheduledPerformingPhysicianName", "AdmissionID", "RequestedProcedureID",
    "RequestedProcedureDescription", "PerformedProcedureStepID", "PerformedProcedureStepDescription",
    "ReasonForTheRequestedProcedure", "AdmittingDiagnosesDescription", "MedicalAlerts", "Allergies",
    "LastMenstrualDate", "PregnancyStatus", "RequestingService", "SOPAuthorizationComment",
    "DerivationDescription", "DetectorID", "PlateID", "StudyComments",
]
# Person names the Annex E table does not list: removed because of their VR.
OTHER_PERSON_NAMES = ["SecondaryReviewerName", "EvaluatorName"]


def _leaky_values(prefix: str) -> dict[str, object]:
    """keyword -> value; text values are unique tokens (searchable), others as their VR allows."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    values: dict[str, object] = {}
    for i, keyword in enumerate(ISSUE_ELEMENTS + OTHER_PERSON_NAMES):
        vr = dictionary_VR(tag_for_keyword(keyword))
        if vr == "AS":
            values[keyword] = "093Y" if prefix == "T" else "091Y"
        elif vr == "DA":
            values[keyword] = "19310817" if prefix == "T" else "19290423"
        elif vr == "US":
            values[keyword] = 4
        elif vr == "CS":
            values[keyword] = "O"
        elif vr == "PN":
            values[keyword] = f"LEAK{prefix}{i:02d}^NAME"
        else:
            values[keyword] = f"LEAK{prefix}{i:02d}VALUE"
    return values


def _searchable(values: dict[str, object]) -> list[str]:
    return [v for v in values.values() if isinstance(v, str) and len(v) >= 4]


def _dicom_with_identifiers(make_dicom) -> tuple[bytes, list[str]]:
    """A CR with every listed element at the top level and inside a kept sequence (two levels deep)."""
    import io

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(io.BytesIO(make_dicom(patient_id="LEAKPATIENTID")))
    top, nested, deeper = _leaky_values("T"), _leaky_values("N"), _leaky_values("D")
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    for keyword, value in nested.items():
        setattr(item, keyword, value)
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = "G-A101", "SRT", "Left"
    for keyword, value in deeper.items():
        setattr(modifier, keyword, value)
    item.AnatomicRegionModifierSequence = Sequence([modifier])
    ds.AnatomicRegionSequence = Sequence([item])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), _searchable(top) + _searchable(nested) + _searchable(deeper) + ["LEAKPATIENTID"]


def test_annex_e_table_resolves_and_covers_the_issue():
    from pydicom.datadict import tag_for_keyword

    table = dicom_io.annex_e_basic_profile()
    assert len(table) >= 300
    wrong = {k: hex(t) for t, (k, _) in table.items() if tag_for_keyword(k) != t}
    assert wrong == {}, "keywords that do not resolve to the tag given in the file"
    actions = {a for _, a in table.values()}
    assert "K" not in actions and actions <= {"X", "Z", "D", "U", "C", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*", "X/Z/U"}
    assert set(ISSUE_ELEMENTS) <= dicom_io.identifier_keywords()


def test_header_json_drops_identifiers_at_every_depth(make_dicom):
    import json

    data, needles = _dicom_with_identifiers(make_dicom)
    image = dicom_io.read_dicom(data, salt="s")
    text = image.header["header_json"]
    blob = json.loads(text)
    assert [n for n in needles if n in text] == []
    for keyword in ISSUE_ELEMENTS + OTHER_PERSON_NAMES + ["PatientName", "PatientID"]:
        assert keyword not in text
    assert blob["Modality"] == "CR" and blob["BodyPartExamined"] == "CHEST" and blob["ViewPosition"] == "PA"
    assert blob["Rows"] == "96"
    region = blob["AnatomicRegionSequence"][0]
    assert region["CodeMeaning"] == "Chest"
    assert region["AnatomicRegionModifierSequence"][0]["CodeMeaning"] == "Left"
    # The UIDs PACS joins on stay as promoted columns (not in header_json, which the profile governs).
    assert image.header["sop_instance_uid"] and "SOPInstanceUID" not in blob


def _all_text_of_database(db: Path) -> str:
    con = database.connect(db, read_only=True)
    try:
        tables = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
        return "\n".join(str(con.execute(f'select * from "{t}"').fetchall()) for t in tables)
    finally:
        con.close()


@pytest.mark.slow
def test_identifiers_reach_neither_database_nor_parts(tmp_path, make_dicom, tiny_registry, prefect_api):
    import pyarrow.parquet as pq

    from radlint.cli import run_audit
    from radlint.tasks.options import AuditOptions

    lake = tmp_path / "lake"
    lake.mkdir()
    data, needles = _dicom_with_identifiers(make_dicom)
    (lake / "leaky.dcm").write_bytes(data)
    db = tmp_path / "audit.duckdb"
    summary = run_audit(AuditOptions(
        lake=str(lake), db=str(db), workers=1, batch_size=4, device="cpu", registry=str(tiny_registry),
        executor="local",
    ))
    assert summary["status"] == "completed" and summary["n_images"] == 1

    text = _all_text_of_database(db)
    parts = sorted((tmp_path / "audit_parts").rglob("*.parquet"))
    assert parts
    text_parts = "\n".join(str(pq.read_table(p).to_pylist()) for p in parts)
    raw = b"".join(p.read_bytes() for p in parts) + db.read_bytes()
    for needle in needles:
        assert needle not in text and needle not in text_parts and needle.encode() not in raw, needle

    con = database.connect(db, read_only=True)
    try:
        kept = dict(con.execute("select keyword, value from header_fields where not is_sequence").fetchall())
    finally:
        con.close()
    assert kept["Modality"] == "CR" and kept["BodyPartExamined"] == "CHEST"
    assert kept["ViewPosition"] == "PA" and kept["Rows"] == "96"
    assert not set(kept) & (dicom_io.identifier_keywords() | set(OTHER_PERSON_NAMES))
