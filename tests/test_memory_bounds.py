"""Memory of a shard is bounded by settings, not by what objects declare (issue 22 item 4).

The reproductions are built in tmp: a deflated dataset that inflates to 1.5 GB from ~1.5 MB,
1 GB files of zeros named .dcm and DICOM headers that declare huge frames (sparse files, so the
disk is not filled). The shard runs in a subprocess whose peak RSS is read from /proc/self/status (VmHWM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from radlint import lakegen
from radlint.tasks import dicom_io

GB = 1024**3
PIXEL_DATA = b"\xe0\x7f\x10\x00"


def _dataset(rows: int = 64, cols: int = 64):
    ds = lakegen.make_dataset(
        np.zeros((64, 64), np.uint8), patient_id="P", body_part_examined="CHEST", view_position="PA",
        description="XR CHEST PA", institution="H", manufacturer="M", study_date="20250101",
        monochrome1=False, bits_stored=12,
    )
    ds.Rows, ds.Columns = rows, cols
    return ds


def deflate_bomb(path: Path, inflated_bytes: int = 1_500_000_000, rows: int = 64, cols: int = 64) -> None:
    """A deflated-syntax file declaring ``rows`` x ``cols`` whose Pixel Data inflates to ``inflated_bytes``."""
    small = lakegen.encode(_dataset(rows, cols), DeflatedExplicitVRLittleEndian)
    meta_end = dicom_io.file_meta_end(small)
    header = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    header = header[: header.find(PIXEL_DATA)]
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(64 * 1024 * 1024)
    with open(path, "wb") as f:
        f.write(small[:meta_end])
        f.write(c.compress(header + PIXEL_DATA + b"OW\x00\x00" + inflated_bytes.to_bytes(4, "little")))
        left = inflated_bytes
        while left:
            n = min(left, len(zeros))
            f.write(c.compress(zeros[:n]))
            left -= n
        f.write(c.flush())


def sparse(path: Path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(head)
    os.truncate(path, size)


def test_deflate_inflation_is_capped_by_the_declared_frame(tmp_path):
    bomb = tmp_path / "bomb.dcm"
    deflate_bomb(bomb, inflated_bytes=64 * 1024 * 1024)
    with pytest.raises(dicom_io.Skip) as skip:
        dicom_io.read_dicom(bomb.read_bytes())
    assert skip.value.reason == dicom_io.TOO_LARGE and "declares" in skip.value.detail
    # An honest deflated file still reads, pixels and all.
    ok = lakegen.encode(_dataset(), DeflatedExplicitVRLittleEndian)
    image = dicom_io.read_dicom(ok, target_size=32)
    assert image.pixels.shape == (64, 64) and image.header["transfer_syntax_uid"] == DeflatedExplicitVRLittleEndian


def test_header_decides_before_the_body():
    huge = lakegen.encode(_dataset(30000, 30000), ExplicitVRLittleEndian)
    verdict = dicom_io.header_verdict(huge[: huge.find(PIXEL_DATA) + 64], at_end=False)
    assert isinstance(verdict, dicom_io.Skip) and verdict.reason == dicom_io.TOO_LARGE
    verdict = dicom_io.header_verdict(bytes(65536), at_end=False)
    assert isinstance(verdict, dicom_io.Skip) and verdict.reason == dicom_io.NOT_DICOM
    ok = lakegen.encode(_dataset(), ExplicitVRLittleEndian)
    assert dicom_io.header_verdict(ok[:200], at_end=False) == dicom_io.READ_MORE
    assert dicom_io.header_verdict(ok, at_end=True) == dicom_io.READ_BODY


SHARD_SCRIPT = """
import json, sys
from radlint.tasks import discover, shard
objects = discover.discover(sys.argv[1])
result = shard.audit_shard(objects, out_dir=sys.argv[2], run_id="r", shard_id="00000", registry_path=sys.argv[3],
                           device="cpu", threads=1)
# VmHWM, not getrusage: ru_maxrss survives execve, so a child of a large pytest process would
# report the parent's peak; VmHWM belongs to the process's own address space.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"maxrss_kb": hwm, "result": result}))
"""


@pytest.mark.slow
def test_peak_memory_of_a_hostile_shard(tmp_path, tiny_registry, make_dicom):
    lake = tmp_path / "lake"
    lake.mkdir()
    deflate_bomb(lake / "bomb.dcm")  # declares 64x64, inflates to 1.5 GB
    deflate_bomb(lake / "bomb-declared.dcm", inflated_bytes=16 * 1024 * 1024, rows=30000, cols=30000)
    for i in range(3):
        sparse(lake / f"zeros-{i}.dcm", GB)
    header = lakegen.encode(_dataset(30000, 30000), ExplicitVRLittleEndian)
    sparse(lake / "declares-huge-frame.dcm", GB, header)
    small_header = lakegen.encode(_dataset(), ExplicitVRLittleEndian)
    sparse(lake / "honest-header-huge-object.dcm", 600 * 1024 * 1024, small_header)
    (lake / "ok.dcm").write_bytes(make_dicom())
    assert (lake / "bomb.dcm").stat().st_size < 4 * 1024 * 1024

    out = tmp_path / "parts"
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, str(lake), str(out), str(tiny_registry)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = report["maxrss_kb"] / 1024
    assert peak_mb < 800, f"peak RSS {peak_mb:.0f} MB"
    assert report["result"]["n_images"] == 1
    skipped = pq.read_table(report["result"]["parts"]["skipped"]).to_pylist()
    reasons = {Path(r["uri"]).name: (r["reason"], r["detail"]) for r in skipped}
    assert {name: reason for name, (reason, _) in reasons.items()} == {
        "bomb.dcm": "too_large",
        "bomb-declared.dcm": "too_large",
        "zeros-0.dcm": "not_dicom",
        "zeros-1.dcm": "not_dicom",
        "zeros-2.dcm": "not_dicom",
        "declares-huge-frame.dcm": "too_large",
        "honest-header-huge-object.dcm": "too_large",
    }
    assert all(detail for _, detail in reasons.values())


ODD = {b"victim": b"AA", b"victim::other.dcm": b"BB", b"a1.dcm": b"CC", b"a[1].dcm": b"DD",
       b"k?versionId=abc.dcm": b"EE", b"k": b"FF"}


def test_headers_are_read_by_each_objects_own_path(tmp_path):
    from radlint.tasks import discover

    for name, data in ODD.items():
        (tmp_path / os.fsdecode(name)).write_bytes(data * 100)
    refs = discover.discover(str(tmp_path))
    fs, _ = discover.filesystem_for_uri(refs[0].uri)
    paths = [discover.path_for_uri(r.uri)[1] for r in refs]
    heads = discover.cat_heads(fs, paths, 2)
    assert {os.fsencode(p).rsplit(b"/", 1)[-1]: heads[p] for p in paths} == ODD


@pytest.mark.slow
def test_s3_headers_are_read_by_exact_key(s3_server):
    import s3fs

    from radlint.tasks import discover

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("headlake")
    for name, data in ODD.items():
        # put_object, not fs.pipe: s3fs itself would cut the key at '?versionId='.
        fs.call_s3("put_object", Bucket="headlake", Key="cr/" + name.decode(), Body=data * 100)
    paths = ["headlake/cr/" + name.decode() for name in ODD]
    heads = discover.cat_heads(fs, paths, 2)
    assert {p.rsplit("/", 1)[-1].encode(): heads[p] for p in paths} == ODD
