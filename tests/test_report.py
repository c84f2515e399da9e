"""The HTML review report: built from a small hand-made database (no pipeline run), checked as text
and in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import base64
import io
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from radlint.tasks import database
from radlint.tasks.preprocess import rotate_to_orientation, thumbnail_jpeg
from radlint.tasks.report import corrected_jpeg, write_report

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
SHA = "sha-test-model"
EVIL = '<script>alert("x")</script>'
EVIL_INSTITUTION = 'St. "Mary" & <b>Sons</b>'
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TASK_CLASSES = {
    "body_part": ["head", "neck", "chest", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb", "other"],
    "projection": ["PA", "AP", "LATERAL"],
    "orientation": ["upright", "rot90cw", "rot180", "rot90ccw"],
}
BPE = {"chest": "CHEST", "head": "SKULL", "abdomen": "ABDOMEN", "lower_limb": "KNEE", "pelvis": "PELVIS"}


# ---------------------------------------------------------------- a small synthetic audit database


def _ellipse(h, w, cy, cx, ry, rx):
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def synthetic_radiograph(body_part: str, rng: np.random.Generator, h: int = 320, w: int = 256) -> np.ndarray:
    """An upright, radiograph-like uint8 picture: dark background, bright anatomy and a side marker
    in the top-left corner (so that a rotation is visible)."""
    img = np.full((h, w), 18.0)
    if body_part == "chest":
        img[_ellipse(h, w, h * 0.55, w / 2, h * 0.45, w * 0.46)] = 150
        for cx in (w * 0.3, w * 0.7):
            img[_ellipse(h, w, h * 0.5, cx, h * 0.3, w * 0.15)] = 70
        img[int(h * 0.12):, int(w * 0.47):int(w * 0.53)] = 205
        img[_ellipse(h, w, h * 0.62, w * 0.56, h * 0.12, w * 0.13)] = 175  # heart
    elif body_part == "head":
        img[_ellipse(h, w, h / 2, w / 2, h * 0.4, w * 0.42)] = 210
        img[_ellipse(h, w, h / 2, w / 2, h * 0.36, w * 0.38)] = 110
        img[_ellipse(h, w, h * 0.62, w * 0.5, h * 0.08, w * 0.22)] = 60
    elif body_part == "lower_limb":
        img[_ellipse(h, w, h / 2, w / 2, h * 0.48, w * 0.2)] = 120
        img[int(h * 0.05):int(h * 0.47), int(w * 0.43):int(w * 0.57)] = 220
        img[int(h * 0.53):int(h * 0.95), int(w * 0.44):int(w * 0.56)] = 215
    else:  # abdomen / pelvis
        img[_ellipse(h, w, h / 2, w / 2, h * 0.48, w * 0.46)] = 130
        img[:, int(w * 0.46):int(w * 0.54)] = 200
        img[_ellipse(h, w, h * 0.75, w * 0.3, h * 0.12, w * 0.16)] = 185
        img[_ellipse(h, w, h * 0.75, w * 0.7, h * 0.12, w * 0.16)] = 185
    img[10:34, 10:18] = 250  # an "L"-shaped side marker, top left
    img[26:34, 10:30] = 250
    img += rng.normal(0, 9, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _probs(task: str, top: str, p: float, rng: np.random.Generator) -> dict[str, float]:
    classes = TASK_CLASSES[task]
    rest = rng.dirichlet(np.ones(len(classes) - 1)) * (1.0 - p)
    out, k = {}, 0
    for c in classes:
        if c == top:
            out[c] = float(p)
        else:
            out[c] = float(rest[k])
            k += 1
    return out


def build_db(path: Path, n: int = 24, seed: int = 7, evil: bool = True, systematic: bool = False) -> Path:
    """A small audit database written by hand: images (with some planted label errors), predictions,
    thumbnails, thresholds, one run and a few skipped objects. ``systematic``: the fourth institution
    labels every chest film abdomen (a protocol mapped wrong), a group for group_findings."""
    rng = np.random.default_rng(seed)
    con = duckdb_connect(path)
    database.ensure_schema(con)
    database.create_views(con)
    run_id = "20261101T080000Z-abcd"
    th = [(t, c, 0.6) for t, cs in TASK_CLASSES.items() for c in cs]
    con.executemany("insert into thresholds values ('m', ?, ?, ?, ?)", [(SHA, t, c, v) for t, c, v in th])
    institutions = ["Kita General Hospital", "Minami Clinic", "Higashi University Hospital", EVIL_INSTITUTION if evil else "Nishi Clinic"]
    manufacturers = ["FUJIFILM", "Konica Minolta", "CANON"]
    parts = ["chest", "chest", "chest", "head", "lower_limb", "abdomen", "pelvis"]
    n_pred = 0
    for k in range(n):
        uri = f"s3://radiology-lake/cr/2026/img{k:04d}.dcm"
        etag = f"etag{k}"
        truth = parts[k % len(parts)]
        orientation = "upright"
        label_body, bpe = truth, BPE[truth]
        vp, proj_label, proj_pred = None, None, None
        kind = k % 6
        if kind == 1:  # stored rotated, header silent: orientation mismatch
            orientation = ["rot90cw", "rot180", "rot90ccw"][(k // 6) % 3]
        elif kind == 2:  # wrong BodyPartExamined
            label_body = "head" if truth != "head" else "chest"
            bpe = BPE[label_body]
        if truth == "chest":
            vp = "PA" if k % 4 else "AP"
            proj_label = vp
            proj_pred = "AP" if kind == 3 else vp  # kind 3: labelled PA/AP, pixels say otherwise
            if proj_pred == proj_label and kind == 3:
                proj_pred = "PA"
        if evil and k == 2:
            bpe = EVIL
        stored = rotate_to_orientation(synthetic_radiograph(truth, rng), orientation)
        thumb = thumbnail_jpeg(stored)
        # systematic: sites and vendors drawn at random, so that only the planted group is one
        inst = institutions[int(rng.integers(len(institutions))) if systematic else k % len(institutions)]
        maker = manufacturers[int(rng.integers(len(manufacturers))) if systematic else k % len(manufacturers)]
        if systematic and truth == "chest" and inst == institutions[3]:  # one site labels every chest abdomen
            label_body, bpe = "abdomen", BPE["abdomen"]
        con.execute(
            'insert into images (uri, etag, size_bytes, sop_instance_uid, modality, body_part_examined, view_position, '
            "institution_name, manufacturer, \"rows\", \"columns\", study_month, label_body_part, label_body_part_source, "
            "label_projection, label_projection_source, audited_at, run_id) "
            "values (?, ?, ?, ?, 'CR', ?, ?, ?, ?, ?, ?, ?, ?, 'BodyPartExamined', ?, ?, ?, ?)",
            [uri, etag, 1000 + k, f"1.2.3.{k}", bpe, vp, inst, maker, stored.shape[0], stored.shape[1],
             f"2026-{1 + (k * 7 // 10) % 6:02d}", label_body, proj_label, "ViewPosition" if proj_label else None,
             T0 + timedelta(seconds=k), run_id],
        )
        preds = [
            ("body_part", truth, float(rng.uniform(0.75, 0.99))),
            ("orientation", orientation, float(rng.uniform(0.7, 0.99))),
        ]
        if proj_pred:
            preds.append(("projection", proj_pred, float(rng.uniform(0.7, 0.97))))
        for task, top, p in preds:
            con.execute(
                "insert into predictions values (?, ?, ?, ?, ?, ?, ?, 'm', ?, ?, ?)",
                [uri, etag, f"1.2.3.{k}", task, top, p, _probs(task, top, p, rng), SHA, T0, run_id],
            )
        n_pred += len(preds)
        con.execute(
            "insert into thumbnails values (?, ?, ?, ?, ?)", [uri, etag, thumb["width"], thumb["height"], thumb["jpeg"]]
        )
    con.execute(
        "insert into runs values (?, ?, ?, 's3://radiology-lake/cr/2026/', 'completed', ?, ?, ?, 3, ?, 1, 0, ?, 42.5)",
        [run_id, T0, T0 + timedelta(seconds=42), n + 3, n + 3, n, n_pred, '[{"name": "m", "sha256": "' + SHA + '"}]'],
    )
    for j, reason in enumerate(["not_dicom", "not_dicom", "truncated"]):
        con.execute(
            "insert into skipped values (?, ?, 10, ?, 'detail', ?, ?)",
            [f"s3://radiology-lake/cr/2026/junk{j}.bin", f"e{j}", reason, T0, run_id],
        )
    con.close()
    return path


def duckdb_connect(path: Path):
    import duckdb

    return duckdb.connect(str(path))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    db = build_db(d / "audit.duckdb")
    out = write_report(db, d / "report.html")
    return db, out


def _mismatches(db: Path) -> dict[str, int]:
    con = database.connect(db, read_only=True)
    try:
        return dict(con.execute("select field, count(*) from findings where is_mismatch group by field").fetchall())
    finally:
        con.close()


# ---------------------------------------------------------------- content


def test_report_content_counts_and_self_contained(report):
    db, out = report
    page = out.read_text(encoding="utf-8")
    per_field = _mismatches(db)
    assert set(per_field) == {"body_part", "projection", "orientation"}
    # one gallery card per mismatch (fewer than the cap), each with its field
    assert page.count('<article class="card"') == sum(per_field.values())
    for field, n in per_field.items():
        assert page.count(f'<article class="card" data-field="{field}"') == n
    # the summary: images, skipped by reason, latest run
    assert "not_dicom" in page and "truncated" in page and "20261101T080000Z-abcd" in page
    assert re.search(r'<div class="num">24</div><div class="lbl">images audited</div>', page)
    # plots are inline SVG, thumbnails are data URIs, nothing is fetched from anywhere
    assert page.count("<svg") >= 4
    n_stored = page.count('class="thumb stored" src="data:image/jpeg;base64,')
    assert n_stored == sum(per_field.values())
    assert page.count('class="thumb corrected" src="data:image/jpeg;base64,') == per_field["orientation"]
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "Not for clinical use" in page and "burned-in patient text" in page
    # confusion matrices, one per field
    assert page.count('<table class="confusion">') == 3


def test_flagged_groups_come_first_with_thumbnails(report):
    db, out = report
    page = out.read_text(encoding="utf-8")
    con = database.connect(db, read_only=True)
    try:
        flagged = con.execute("select count(*) from group_findings where is_flagged").fetchone()[0]
    finally:
        con.close()
    assert flagged > 0  # the fixture's errors follow the manufacturer: a group finding
    assert page.count('<article class="group"') == flagged
    assert page.index('id="groups"') < page.index('id="fields"') < page.index('id="suspects"')
    groups_html = page[page.index('id="groups"'):page.index('id="fields"')]
    assert groups_html.count('class="gthumb" src="data:image/jpeg;base64,') >= flagged


def test_report_escapes_untrusted_header_text(report):
    _, out = report
    page = out.read_text(encoding="utf-8")
    assert EVIL not in page
    assert html_escaped(EVIL) in page
    assert page.count("<script") == 1  # only the page's own script
    assert "<b>Sons</b>" not in page
    assert html_escaped(EVIL_INSTITUTION) in page


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_gallery_is_capped_and_sorted_by_severity(tmp_path, report):
    db, _ = report
    out = write_report(db, tmp_path / "r.html", limit=5)
    page = out.read_text(encoding="utf-8")
    assert page.count('<article class="card"') == 5
    sev = [float(x) for x in re.findall(r'data-severity="([0-9.]+)"', page)]
    assert sev == sorted(sev, reverse=True)
    assert "most severe of" in page


def test_empty_database(tmp_path):
    db = tmp_path / "empty.duckdb"
    con = duckdb_connect(db)
    database.ensure_schema(con)
    database.create_views(con)
    con.close()
    page = write_report(db, tmp_path / "out" / "empty.html").read_text(encoding="utf-8")
    assert "No mismatches found" in page and "No findings yet" in page and "No audit run recorded" in page
    assert "Not for clinical use" in page
    assert not re.search(r"https?://", page)


def test_gallery_shows_the_thumbnail_of_the_audited_version(tmp_path):
    """An object re-read after it changed: the card shows the new version's thumbnail; an image
    without a thumbnail gets a placeholder."""
    db = tmp_path / "v.duckdb"
    con = duckdb_connect(db)
    database.ensure_schema(con)
    database.create_views(con)
    con.execute("insert into thresholds values ('m', ?, 'body_part', 'lower_limb', 0.5)", [SHA])
    versions = [("s3://b/x", "old", "r1", T0, 250), ("s3://b/x", "new", "r2", T0 + timedelta(days=1), 5), ("s3://b/y", "y1", "r1", T0, None)]
    for uri, etag, run, at, grey in versions:
        con.execute(
            "insert into images (uri, etag, institution_name, label_body_part, label_body_part_source, "
            "body_part_examined, audited_at, run_id) values (?, ?, 'H', 'head', 'BodyPartExamined', 'SKULL', ?, ?)",
            [uri, etag, at, run],
        )
        con.execute(
            "insert into predictions values (?, ?, null, 'body_part', 'lower_limb', 0.9, ?, 'm', ?, ?, ?)",
            [uri, etag, {"lower_limb": 0.9, "head": 0.1}, SHA, at, run],
        )
        if grey is not None:
            t = thumbnail_jpeg(np.full((64, 48), grey, dtype=np.uint8))
            con.execute("insert into thumbnails values (?, ?, ?, ?, ?)", [uri, etag, t["width"], t["height"], t["jpeg"]])
    con.close()
    page = write_report(db, tmp_path / "v.html").read_text(encoding="utf-8")
    assert page.count('<article class="card"') == 2
    srcs = re.findall(r'class="thumb stored" src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(srcs) == 1 and _decode(base64.b64decode(srcs[0])).mean() < 40  # the new, dark version
    assert page.count('<div class="nothumb">') == 2  # stored and corrected of s3://b/y


def test_corrected_thumbnail_is_upright():
    rng = np.random.default_rng(0)
    upright = synthetic_radiograph("chest", rng)
    for stored_as, correction in (("rot90cw", "rot90ccw"), ("rot90ccw", "rot90cw"), ("rot180", "rot180")):
        stored = thumbnail_jpeg(rotate_to_orientation(upright, stored_as))["jpeg"]
        fixed = _decode(corrected_jpeg(stored, correction))
        want = _decode(thumbnail_jpeg(upright)["jpeg"])
        assert fixed.shape == want.shape
        assert np.abs(fixed.astype(int) - want.astype(int)).mean() < 6
    assert corrected_jpeg(stored, "upright") is None


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))


# ---------------------------------------------------------------- real browser


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not importable (pip install playwright; no browser download needed)")
    return sync_playwright


def open_report(pw, html_path: Path, width: int = 1280, height: int = 900):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(html_path.resolve().as_uri(), wait_until="load")
    return browser, page, errors


def _visible_cards(page) -> int:
    return page.evaluate("Array.from(document.querySelectorAll('#gallery .card')).filter(c => !c.hidden && c.offsetParent !== null).length")


def test_report_in_headless_chromium(report, tmp_path):
    sync_playwright = _browser_or_skip()
    db, out = report
    with sync_playwright() as pw:
        browser, page, errors = open_report(pw, out)
        try:
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
            widths = page.evaluate("Array.from(document.querySelectorAll('#gallery img')).map(i => i.naturalWidth)")
            total = _visible_cards(page)
            assert total == sum(_mismatches(db).values()) > 0
            assert len(widths) == 2 * total and all(w > 0 for w in widths), widths

            page.select_option("#f-field", "orientation")
            n_field = _visible_cards(page)
            assert 0 < n_field < total
            assert page.text_content("#shown") == f"{n_field} of {total} shown"
            page.select_option("#f-inst", label="Minami Clinic")
            n_both = _visible_cards(page)
            assert 0 < n_both < n_field
            page.select_option("#f-field", "")
            page.select_option("#f-inst", "")
            page.select_option("#f-inst", EVIL_INSTITUTION)  # escaped in HTML, matched as text
            assert 0 < _visible_cards(page) < total
            page.select_option("#f-inst", "")
            assert _visible_cards(page) == total

            sev = "Array.from(document.querySelectorAll('#gallery .card')).map(c => parseFloat(c.dataset.severity))"
            before = page.evaluate(sev)
            assert before == sorted(before, reverse=True)
            page.click("#sort")
            after = page.evaluate(sev)
            assert after == sorted(after) and after != before
            assert "lowest first" in page.text_content("#sort")

            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
            assert (tmp_path / "report.png").stat().st_size > 0
            assert not errors, errors
        finally:
            browser.close()


def test_empty_report_in_headless_chromium(tmp_path):
    sync_playwright = _browser_or_skip()
    db = tmp_path / "empty.duckdb"
    con = duckdb_connect(db)
    database.ensure_schema(con)
    database.create_views(con)
    con.close()
    out = write_report(db, tmp_path / "empty.html")
    with sync_playwright() as pw:
        browser, page, errors = open_report(pw, out)
        try:
            assert page.locator("text=No mismatches found").count() == 1
            assert not errors, errors
        finally:
            browser.close()


def make_readme_screenshot(png: Path, work: Path) -> Path:  # pragma: no cover - run by hand for docs/report.png
    """Render the report of a small realistic database and save a screenshot for the README
    (docs/report.png): the summary, the groups to review first and per-field counts, the confusion
    matrices and the first rows of the gallery, stitched top to bottom."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    work.mkdir(parents=True, exist_ok=True)
    db = work / "audit.duckdb"
    if db.exists():
        db.unlink()
    build_db(db, n=60, seed=11, evil=False, systematic=True)
    out = write_report(db, work / "report.html")
    boxes_js = """() => {
        const r = id => { const b = document.getElementById(id).getBoundingClientRect();
                          return [b.top + window.scrollY, b.bottom + window.scrollY]; };
        const g = Array.from(document.querySelectorAll('#groups article.group')).slice(0, 2);
        const gEnd = g.length ? g[g.length - 1].getBoundingClientRect().bottom + window.scrollY : r('groups')[1];
        return {groups: [r('groups')[0], gEnd], fields: r('fields'), confusion: r('confusion'), suspects: r('suspects')};
    }"""
    with sync_playwright() as pw:
        browser, page, errors = open_report(pw, out, width=1180, height=900)
        try:
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
            boxes = page.evaluate(boxes_js)
            page.screenshot(path=str(work / "full.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    full = Image.open(work / "full.png").convert("RGB")
    pad = 8
    pieces = [
        (0, int(boxes["groups"][1]) + pad),
        (int(boxes["fields"][0]) - pad, int(boxes["fields"][1]) + pad),
        (int(boxes["confusion"][0]) - pad, int(boxes["confusion"][1]) + pad),
        (int(boxes["suspects"][0]) - pad, min(int(boxes["suspects"][0]) + 760, full.height)),
    ]
    crops = [full.crop((0, a, full.width, b)) for a, b in pieces]
    sheet = Image.new("RGB", (full.width, sum(c.height for c in crops) + 6 * (len(crops) - 1)), (200, 205, 212))
    y = 0
    for c in crops:
        sheet.paste(c, (0, y))
        y += c.height + 6
    scale = 0.8
    sheet = sheet.resize((int(sheet.width * scale), int(sheet.height * scale)), Image.Resampling.LANCZOS)
    png.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=160, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(png, optimize=True)
    return png


if __name__ == "__main__":  # python tests/test_report.py docs/report.png
    import sys
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png")
    with tempfile.TemporaryDirectory() as tmp:
        print(make_readme_screenshot(target, Path(tmp)), target.stat().st_size)


# ---------------------------------------------------------------- what a newcomer tripped over (issue 23)


def test_checked_has_one_meaning_in_summary_report_and_view(tmp_path):
    from radlint.tasks import findings

    db = build_db(tmp_path / "audit.duckdb", evil=False)
    con = duckdb_connect(db)
    try:
        # two images whose header says nothing of the body part: findings, but not checked
        con.execute("update images set body_part_examined = null, label_body_part = null, "
                    "label_body_part_source = null where uri similar to '.*img000[12][.]dcm'")
        database.create_views(con)
        summary = findings.run_summary(con, "20261101T080000Z-abcd")
        view = dict(con.execute(
            "select field, sum(n_checked) from mismatch_rates where dimension = 'modality' group by field").fetchall())
        both = dict(con.execute("select field, count(*) from findings where header_class is not null "
                                "and predicted_class is not null group by field").fetchall())
    finally:
        con.close()
    checked = {f: c["checked"] for f, c in summary["mismatches"].items()}
    assert checked == view == both
    # counting findings without a label as checked was the 160-vs-141 confusion
    assert summary["mismatches"]["body_part"]["findings"] == checked["body_part"] + 2
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    for f, c in summary["mismatches"].items():
        assert f"<td><b>{f}</b></td><td>{c['findings']}</td><td>{c['checked']}</td>" in page
    assert html_escaped(findings.CHECKED_MEANING) in page
    assert findings.CHECKED_MEANING in findings.summary_markdown(summary)


def test_vendor_spellings_are_one_group_and_tiny_groups_get_no_bar(tmp_path):
    db = build_db(tmp_path / "audit.duckdb", evil=False)
    con = duckdb_connect(db)
    try:
        # FUJIFILM is the manufacturer of images 0, 3, 6, ...: two of them spelled another way
        con.execute("update images set manufacturer = 'Fujifilm Co., Ltd.' where uri like '%img0000.dcm'")
        con.execute("update images set manufacturer = 'FUJIFILM Corporation' where uri like '%img0003.dcm'")
        con.execute("update images set institution_name = 'Tiny Clinic' where uri like '%img0005.dcm'")
        database.create_views(con)
        vendors = {r[0] for r in con.execute(
            "select group_value from mismatch_rates where dimension = 'manufacturer'").fetchall()}
        tiny = con.execute("select max(n_checked) from mismatch_rates where group_value = 'Tiny Clinic'").fetchone()[0]
    finally:
        con.close()
    assert vendors == {"FUJIFILM", "KONICA MINOLTA", "CANON"}
    assert tiny < 5
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    rates = page[page.index('id="rates"'):page.index('id="confusion"')]
    assert "Tiny Clinic" in rates and "too few for a rate" in rates
    assert not re.search(r"<title>Tiny Clinic \u2014", rates)  # no bar (a bar's tooltip starts with its group)
    assert re.search(r"<title>FUJIFILM \u2014 body_part: \d+ of 8 mismatched \([\d.]+%; 95 % interval", rates)
    assert 'class="ci"' in rates


def test_wilson_interval():
    from radlint.tasks.report import wilson_interval

    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(2, 2)  # "100 %" from two images: anything above a third is plausible
    assert 0.33 < lo < 0.35 and hi == 1.0
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28
    lo, hi = wilson_interval(50, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60


def test_a_red_confusion_cell_opens_its_images_flagged_or_not(tmp_path):
    db = build_db(tmp_path / "audit.duckdb", evil=False)
    con = duckdb_connect(db)
    try:
        # image 2's BodyPartExamined is wrong; a prediction below its class threshold (0.6) is not a flag
        con.execute("update predictions set probability = 0.55, probabilities = map_from_entries("
                    "list_transform(map_entries(probabilities), lambda e: struct_pack(key := e.key, value := "
                    "case when e.key = predicted then 0.55 else 0.45 / 8 end))) "
                    "where uri like '%img0002.dcm' and task = 'body_part'")
        database.create_views(con)
        cells = con.execute("""
            select header_class, predicted_class, count(*), count(*) filter (where is_mismatch)
            from findings where field = 'body_part' and header_class <> predicted_class group by all""").fetchall()
        unflagged = con.execute("select is_mismatch from findings where field = 'body_part' "
                                "and uri like '%img0002.dcm'").fetchone()[0]
    finally:
        con.close()
    assert cells and unflagged is False
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    confusion = page[page.index('id="confusion"'):page.index('id="suspects"') if 'id="suspects"' in page else None]
    links = re.findall(r'<a class="cell" href="#(cell-body_part-[\d-]+)">(\d+)</a>', confusion)
    assert len(links) == len(cells)  # every red body_part cell opens its images ...
    assert sorted(int(n) for _, n in links) == sorted(n for _, _, n, _ in cells)
    for anchor, n in links:
        block = confusion[confusion.index(f'id="{anchor}"'):]
        block = block[:block.index("</div>")]
        assert block.count('src="data:image/jpeg;base64,') == int(n)
    # ... the unflagged disagreement included, which the gallery of flags does not show
    assert "img0002.dcm</code>" in confusion and "not flagged" in confusion
    gallery = page[page.index('id="suspects"'):]
    assert not re.search(r'data-field="body_part"[^>]*>(?:(?!</article>).)*img0002\.dcm', gallery, re.S)
