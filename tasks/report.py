"""The review report: one self-contained static HTML page over an audit database.

``radlint report --db DB --out report.html`` calls :func:`write_report`. The page opens from disk
with no server and references nothing outside itself: CSS and JavaScript are inline, plots are
inline SVG generated here and thumbnails are base64 ``data:`` URIs taken from the ``thumbnails``
table (made during the audit; the lake is not read again). Every text that comes from the database
(header values, institution names, URIs ...) is HTML-escaped: DICOM headers are untrusted input.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from radlint.tasks.findings import CHECKED_MEANING, SUSPECT_ORDER

FIELDS = ("body_part", "projection", "orientation")
FIELD_COLOURS = {"body_part": "#3b6fb6", "projection": "#d9822b", "orientation": "#2a9d6f"}
GALLERY_LIMIT = 300
GROUP_LIMIT = 25
MONTH_LIMIT = 36
GROUP_THUMBS = 6  # thumbnails shown per flagged group
CELL_IMAGES = 12  # images listed under a disagreeing confusion-matrix cell, most confident first
UNKNOWN = "(unknown)"
# A group's rate is drawn as a bar only from this many checked findings: 2 of 2 is not "100 %".
MIN_RATE_N = 5

# suggested_correction of an orientation finding -> Pillow transpose that applies it, and words.
_ROTATIONS = {
    "rot90cw": ("ROTATE_270", "turn 90\u00b0 clockwise"),
    "rot90ccw": ("ROTATE_90", "turn 90\u00b0 counter-clockwise"),
    "rot180": ("ROTATE_180", "turn 180\u00b0"),
}


def write_report(db: str | Path, out: str | Path, *, limit: int = GALLERY_LIMIT) -> Path:
    """Write the HTML report of the audit database ``db`` to ``out`` and return its path.

    The database is opened read-only, so a report can be made while nobody writes to it.
    ``limit`` caps the gallery of suspects (mismatches, most severe first).
    """
    from radlint.tasks import database

    out = Path(out)
    con = database.connect(db, read_only=True)
    try:
        data = _collect(con, limit)
    finally:
        con.close()
    data["db"] = str(db)
    page = render(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


# ---------------------------------------------------------------- queries


def _relations(con) -> set[str]:
    rows = con.execute("select table_name from information_schema.tables").fetchall()
    return {r[0] for r in rows}


def _dicts(con, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _collect(con, limit: int) -> dict[str, Any]:
    rel = _relations(con)
    data: dict[str, Any] = {
        "latest_run": None,
        "n_runs": 0,
        "totals": {},
        "skipped": [],
        "per_field": [],
        "rates": {},
        "confusion": {},
        "suspects": [],
        "groups": [],
        "has_thumbnails": "thumbnails" in rel,
    }
    if "runs" in rel:
        runs = _dicts(con, "select * from runs order by started_at desc nulls last, run_id desc limit 1")
        data["latest_run"] = runs[0] if runs else None
        data["n_runs"] = con.execute("select count(*) from runs").fetchone()[0]
    totals = data["totals"]
    if "images" in rel:
        totals["images"] = con.execute("select count(distinct uri) from images").fetchone()[0]
        totals["image_versions"] = con.execute("select count(*) from images").fetchone()[0]
    if "predictions" in rel:
        totals["predictions"] = con.execute("select count(*) from predictions").fetchone()[0]
    if "skipped" in rel:
        latest_id = data["latest_run"]["run_id"] if data["latest_run"] else None
        data["skipped"] = _dicts(
            con,
            "select reason, count(distinct (uri, etag)) as n, "
            "count(distinct (uri, etag)) filter (where run_id = ?) as n_latest "
            "from skipped group by reason order by n desc, reason",
            [latest_id],
        )
        totals["skipped"] = sum(r["n"] for r in data["skipped"])
    if "findings" not in rel:
        return data
    # the view is evaluated once (window functions over every table) and then queried many times
    con.execute("create or replace temp table _report_findings as select * from findings")

    totals["findings"] = con.execute("select count(*) from _report_findings").fetchone()[0]
    totals["mismatches"] = con.execute("select count(*) from _report_findings where is_mismatch").fetchone()[0]
    totals["images_with_mismatch"] = con.execute(
        "select count(distinct uri) from _report_findings where is_mismatch"
    ).fetchone()[0]

    data["per_field"] = _dicts(
        con,
        """
        select field,
               count(*) as n,
               count(*) filter (where is_mismatch is not null) as checked,
               count(*) filter (where is_mismatch) as mismatches,
               count(*) filter (where header_class is null) as unknown_label,
               count(*) filter (where predicted_class is null) as no_prediction
        from _report_findings group by field
        """,
    )
    order = {f: i for i, f in enumerate(FIELDS)}
    data["per_field"].sort(key=lambda r: (order.get(r["field"], 99), str(r["field"])))

    # Rates come from the mismatch_rates view (one definition of checked and of the groups, vendor
    # spellings included), evaluated once.
    con.execute("create or replace temp table _report_rates as select * from mismatch_rates")
    for column, title in (("institution_name", "institution"), ("manufacturer", "manufacturer"), ("study_month", "study month")):
        if column == "study_month":
            keep = (f"select distinct group_value from _report_rates where dimension = '{column}' "
                    f"order by group_value desc limit {MONTH_LIMIT}")
            order_by = "g"
        else:
            keep = (f"select group_value from _report_rates where dimension = '{column}' "
                    f"group by group_value order by sum(n_checked) desc, group_value limit {GROUP_LIMIT}")
            order_by = "total desc, g"
        rows = _dicts(
            con,
            f"""
            select group_value as g, field, n_checked as n, n_mismatch as m,
                   sum(n_checked) over (partition by group_value) as total
            from _report_rates
            where dimension = '{column}' and group_value in ({keep})
            order by {order_by}, field
            """,
        )
        n_groups = con.execute(
            "select count(distinct group_value) from _report_rates where dimension = ?", [column]
        ).fetchone()[0]
        data["rates"][column] = {"title": title, "rows": rows, "n_groups": n_groups}

    for r in _dicts(
        con,
        """
        select field, header_class, predicted_class, count(*) as n
        from _report_findings
        where header_class is not null and predicted_class is not null
        group by all
        """,
    ):
        data["confusion"].setdefault(r["field"], []).append(r)
    # A red cell (label and prediction disagree) opens its images, flagged or not: strong but
    # unflagged disagreements (below a class threshold) are seen nowhere else.
    data["cell_images"] = {}
    if "thumbnails" in rel and "images" in rel:
        for r in _dicts(
            con,
            f"""
            select f.field, f.header_class, f.predicted_class, f.uri, f.predicted_prob, f.is_mismatch,
                   t.jpeg, t.width, t.height
            from _report_findings as f
            left join images as i on i.uri = f.uri and i.run_id = f.run_id
            left join (
                select uri, etag, any_value(width) as width, any_value(height) as height, any_value(jpeg) as jpeg
                from thumbnails group by uri, etag
            ) as t on t.uri = i.uri and t.etag = i.etag
            where f.header_class is not null and f.predicted_class is not null
              and not list_contains(string_split(f.header_class, '|'), f.predicted_class)
            qualify row_number() over (
                partition by f.field, f.header_class, f.predicted_class order by f.predicted_prob desc, f.uri
            ) <= {CELL_IMAGES}
            order by f.field, f.header_class, f.predicted_class, f.predicted_prob desc, f.uri
            """,
        ):
            data["cell_images"].setdefault((r["field"], r["header_class"], r["predicted_class"]), []).append(r)

    thumb_join = ""
    thumb_cols = "null as jpeg, null as width, null as height"
    if "thumbnails" in rel and "images" in rel:
        thumb_cols = "t.jpeg, t.width, t.height"
        thumb_join = """
        left join images as i on i.uri = s.uri and i.run_id = s.run_id
        left join (
            select uri, etag, any_value(width) as width, any_value(height) as height, any_value(jpeg) as jpeg
            from thumbnails group by uri, etag
        ) as t on t.uri = i.uri and t.etag = i.etag
        """
    if "group_findings" in rel:
        data["groups"] = _dicts(
            con,
            f"""
            select field, dimension, group_value, header_class, predicted_class, n_images, n_disagree,
                   share_disagree, n_flagged
            from group_findings where is_flagged
            order by n_disagree desc, share_disagree desc, field, dimension, group_value
            limit {GROUP_LIMIT}
            """,
        )
        # a few thumbnails of each group's disagreeing images (the latest version of each uri)
        for g in data["groups"]:
            g["thumbs"] = _dicts(
                con,
                f"""
                select f.uri, t.jpeg, t.width, t.height
                from _report_findings as f
                join images as i on i.uri = f.uri and i.run_id = f.run_id
                join thumbnails as t on t.uri = i.uri and t.etag = i.etag
                where f.field = ? and f.header_class = ? and f.predicted_class = ?
                  and (case ? when 'header_value' then f.header_value when 'institution_name' then i.institution_name
                       when 'manufacturer' then i.manufacturer when 'series_description' then i.series_description
                       else i.protocol_name end) = ?
                order by f.uri limit {GROUP_THUMBS}
                """,
                [g["field"], g["header_class"], g["predicted_class"], g["dimension"], g["group_value"]],
            ) if "thumbnails" in rel and g["predicted_class"] is not None else []
    data["suspects"] = _dicts(
        con,
        f"""
        with s as (
            select * from _report_findings where is_mismatch
            order by {SUSPECT_ORDER}
            limit {int(limit)}
        )
        select s.uri, s.field, s.header_value, s.header_class, s.label_source, s.predicted_class,
               s.predicted_prob, s.severity, s.suggested_correction, s.institution_name, s.flag_basis,
               s.lake_predicted_class, s.lake_label_prob,
               s.manufacturer, s.study_month, {thumb_cols}
        from s {thumb_join}
        qualify row_number() over (partition by s.uri, s.field order by {'i.audited_at desc nulls last' if thumb_join else 's.uri'}) = 1
        order by s.severity desc nulls last, s.predicted_prob desc, s.uri, s.field
        """,
    )
    return data


# ---------------------------------------------------------------- rendering helpers


def esc(value: Any) -> str:
    """HTML-escape any value (None -> empty); safe in text and in quoted attributes."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def _fmt_int(n: Any) -> str:
    return "\u2014" if n is None else f"{int(n):,}"


def _fmt_pct(x: float | None, digits: int = 1) -> str:
    return "\u2014" if x is None else f"{100.0 * x:.{digits}f}%"


def _fmt_time(t: Any) -> str:
    if t is None:
        return "\u2014"
    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(t)


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def corrected_jpeg(jpeg: bytes, correction: str | None) -> bytes | None:
    """The stored thumbnail turned by an orientation correction (None when it is no rotation)."""
    if correction not in _ROTATIONS:
        return None
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg))
    img = img.transpose(getattr(Image.Transpose, _ROTATIONS[correction][0]))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def wilson_interval(m: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of the rate m / n ((0, 1) when n is 0): honest for small n and
    for rates near 0 or 1, where m / n +- z * se is not."""
    if n <= 0:
        return 0.0, 1.0
    p = m / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def hbar_svg(groups: list[str], series: dict[str, dict[str, tuple[int, int]]], *, title: str) -> str:
    """Horizontal grouped bars of mismatch rate: one row per group, one bar per field.

    ``series[field][group] = (mismatches, checked)``. A group with fewer than MIN_RATE_N checked
    findings shows its counts instead of a bar; a bar carries its 95 % Wilson interval as a line.
    """
    fields = [f for f in FIELDS if f in series] + sorted(f for f in series if f not in FIELDS)
    bar_h, gap, label_w, plot_w, right_w = 13, 8, 190, 330, 150
    rates = [wilson_interval(m, n)[1] for f in fields for (m, n) in series[f].values() if n >= MIN_RATE_N]
    top = max(rates + [0.0])
    scale_max = 0.05
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0):
        if top <= step:
            scale_max = step
            break
    legend_h = 22
    row_h = bar_h * max(1, len(fields)) + gap
    height = legend_h + row_h * len(groups) + 24
    width = label_w + plot_w + right_w
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
    ]
    x = label_w
    for f in fields:
        colour = FIELD_COLOURS.get(f, "#777")
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="13" class="lg">{esc(f)}</text>')
        x += 14 + 8 * len(f) + 16
    y0 = legend_h
    for tick in (0.0, scale_max / 2, scale_max):
        tx = label_w + plot_w * tick / scale_max
        parts.append(f'<line x1="{tx:.1f}" y1="{y0 - 2}" x2="{tx:.1f}" y2="{height - 18}" class="grid"/>')
        parts.append(f'<text x="{tx:.1f}" y="{height - 5}" class="tick" text-anchor="middle">{_fmt_pct(tick, 0 if tick * 100 == int(tick * 100) else 1)}</text>')
    for gi, g in enumerate(groups):
        y = y0 + gi * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + row_h / 2 + 1:.1f}" class="gl" text-anchor="end">'
            f"<title>{esc(g)}</title>{esc(_short(g))}</text>"
        )
        for fi, f in enumerate(fields):
            m, n = series[f].get(g, (0, 0))
            by = y + fi * bar_h
            if not n:
                continue
            if n < MIN_RATE_N:  # counts only: a bar would read as a rate
                parts.append(
                    f'<text x="{label_w + 4}" y="{by + bar_h - 3}" class="val">{esc(f)}: {m} of {n} '
                    f"(too few for a rate)</text>"
                )
                continue
            rate = m / n
            lo, hi = wilson_interval(m, n)
            w = plot_w * min(rate, scale_max) / scale_max
            colour = FIELD_COLOURS.get(f, "#777")
            tip = (f"{g} \u2014 {f}: {m} of {n} mismatched ({_fmt_pct(rate)}; 95 % interval "
                   f"{_fmt_pct(lo)}\u2013{_fmt_pct(hi)})")
            parts.append(
                f'<rect x="{label_w}" y="{by}" width="{max(w, 0.5):.1f}" height="{bar_h - 1}" fill="{colour}">'
                f"<title>{esc(tip)}</title></rect>"
            )
            x_lo, x_hi = (label_w + plot_w * min(v, scale_max) / scale_max for v in (lo, hi))
            parts.append(
                f'<line x1="{x_lo:.1f}" y1="{by + bar_h / 2:.1f}" x2="{x_hi:.1f}" y2="{by + bar_h / 2:.1f}" class="ci"/>'
            )
            parts.append(
                f'<text x="{label_w + plot_w + 4}" y="{by + bar_h - 3}" class="val">{_fmt_pct(rate)} ({m}/{n}, '
                f"{_fmt_pct(lo, 0)}\u2013{_fmt_pct(hi, 0)})</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- sections


def _summary_section(data: dict[str, Any]) -> str:
    run = data["latest_run"]
    t = data["totals"]
    cards = [
        ("images audited", _fmt_int(t.get("images"))),
        ("findings (image \u00d7 field)", _fmt_int(t.get("findings"))),
        ("mismatches", _fmt_int(t.get("mismatches"))),
        ("images with a mismatch", _fmt_int(t.get("images_with_mismatch"))),
        ("skipped objects", _fmt_int(t.get("skipped"))),
        ("audit runs", _fmt_int(data["n_runs"])),
    ]
    stats = "".join(f'<div class="stat"><div class="num">{v}</div><div class="lbl">{esc(k)}</div></div>' for k, v in cards)
    if run:
        models = run.get("models")
        try:
            parsed = json.loads(models) if isinstance(models, str) else models
            models_text = ", ".join(
                f"{m.get('name', '?')} ({str(m.get('sha256', ''))[:12]})" if isinstance(m, dict) else str(m)
                for m in (parsed or [])
            )
        except (TypeError, ValueError):
            models_text = str(models)
        wall = run.get("wall_seconds")
        rows = [
            ("run id", esc(run.get("run_id"))),
            ("status", f'<span class="status s-{esc(run.get("status"))}">{esc(run.get("status"))}</span>'),
            ("lake", f"<code>{esc(run.get('lake'))}</code>"),
            ("started", esc(_fmt_time(run.get("started_at")))),
            ("finished", esc(_fmt_time(run.get("finished_at")))),
            ("wall time", "\u2014" if wall is None else f"{float(wall):,.1f} s"),
            ("objects listed / new", f"{_fmt_int(run.get('n_listed'))} / {_fmt_int(run.get('n_new'))}"),
            ("images / skipped / predictions added", f"{_fmt_int(run.get('n_images'))} / {_fmt_int(run.get('n_skipped'))} / {_fmt_int(run.get('n_predictions'))}"),
            ("shards (failed)", f"{_fmt_int(run.get('n_shards'))} ({_fmt_int(run.get('n_failed_shards'))})"),
            ("models", esc(models_text) or "\u2014"),
        ]
        run_html = _table(["latest run", ""], rows, "kv")
    else:
        run_html = '<p class="empty">No audit run recorded in this database.</p>'
    if data["skipped"]:
        skipped_html = _table(
            ["skip reason", "objects (all runs)", "in latest run"],
            [(f"<code>{esc(r['reason'])}</code>", _fmt_int(r["n"]), _fmt_int(r["n_latest"])) for r in data["skipped"]],
        )
    else:
        skipped_html = '<p class="empty">No skipped objects.</p>'
    return (
        '<section id="summary"><h2>Run summary</h2>'
        f'<div class="stats">{stats}</div><div class="row">{run_html}{skipped_html}</div></section>'
    )


def _fields_section(data: dict[str, Any]) -> str:
    pf = data["per_field"]
    if not pf:
        return '<section id="fields"><h2>Mismatches per field</h2><p class="empty">No findings yet.</p></section>'
    rows = []
    series: dict[str, dict[str, tuple[int, int]]] = {}
    for r in pf:
        rate = r["mismatches"] / r["checked"] if r["checked"] else None
        rows.append(
            (
                f"<b>{esc(r['field'])}</b>",
                _fmt_int(r["n"]),
                _fmt_int(r["checked"]),
                _fmt_int(r["mismatches"]),
                _fmt_pct(rate, 2),
                _fmt_int(r["unknown_label"]),
                _fmt_int(r["no_prediction"]),
            )
        )
        series.setdefault(r["field"], {})["all images"] = (r["mismatches"], r["checked"])
    table = _table(
        ["field", "findings", "checked", "mismatches", "rate", "label unknown", "no prediction"],
        rows,
        "num",
    )
    chart = hbar_svg(["all images"], series, title="Mismatch rate per field")
    note = f'<p class="note">{esc(CHECKED_MEANING)}; the printed audit summary counts the same.</p>'
    return f'<section id="fields"><h2>Mismatches per field</h2>{table}{note}<div class="plot">{chart}</div></section>'


def _rates_section(data: dict[str, Any]) -> str:
    parts = [
        '<section id="rates"><h2>Mismatch rates by group</h2>'
        f'<p class="note">Rate = mismatches / checked findings, per field ({esc(CHECKED_MEANING)}); the line '
        f"through a bar is its 95 % Wilson interval. Groups with fewer than {MIN_RATE_N} checked findings show their "
        "counts, not a bar. Manufacturers are grouped by vendor (case, punctuation and suffixes such as "
        "Co., Ltd. or Inc. ignored). Hover a bar for counts.</p>"
    ]
    if not data["rates"] or not any(v["rows"] for v in data["rates"].values()):
        parts.append('<p class="empty">No checked findings yet.</p></section>')
        return "".join(parts)
    for column, info in data["rates"].items():
        groups: list[str] = []
        series: dict[str, dict[str, tuple[int, int]]] = {}
        for r in info["rows"]:
            if r["g"] not in groups:
                groups.append(r["g"])
            series.setdefault(r["field"], {})[r["g"]] = (int(r["m"]), int(r["n"]))
        title = f"Mismatch rate by {info['title']}"
        more = ""
        if info["n_groups"] > len(groups):
            what = "latest months" if column == "study_month" else "largest groups"
            more = f'<p class="note">Showing the {len(groups)} {what} of {info["n_groups"]}.</p>'
        parts.append(f'<div class="plot"><h3>{esc(title)}</h3>{more}{hbar_svg(groups, series, title=title)}</div>')
    parts.append("</section>")
    return "".join(parts)


def _confusion_section(data: dict[str, Any]) -> str:
    head = (
        '<section id="confusion"><h2>Label vs prediction</h2>'
        '<p class="note">Labelled findings only (header or label file; orientation "upright" is assumed when nothing '
        "says otherwise). Rows: label (<code>header_class</code>); columns: the model's most probable class "
        "(<code>predicted_class</code>). Green cells agree; red cells disagree (a disagreement is a mismatch only "
        "when the prediction reaches its class threshold). Shade = share of the row. A red cell's number opens "
        f"its images (up to {CELL_IMAGES}, most confident first), flagged or not.</p>"
    )
    if not data["confusion"]:
        return head + '<p class="empty">No labelled findings yet.</p></section>'
    blocks = []
    fields = [f for f in FIELDS if f in data["confusion"]] + sorted(f for f in data["confusion"] if f not in FIELDS)
    for field in fields:
        cells = data["confusion"][field]
        labels = sorted({c["header_class"] for c in cells})
        preds = sorted({c["predicted_class"] for c in cells})
        counts = {(c["header_class"], c["predicted_class"]): int(c["n"]) for c in cells}
        row_tot = {lab: sum(counts.get((lab, p), 0) for p in preds) for lab in labels}
        header = "".join(f'<th class="col">{esc(p)}</th>' for p in preds)
        body = []
        lists = []
        for lab in labels:
            accepted = set(lab.split("|"))
            tds = []
            for p in preds:
                n = counts.get((lab, p), 0)
                share = n / row_tot[lab] if row_tot[lab] else 0.0
                agree = p in accepted
                rgb = "42,157,111" if agree else "200,55,55"
                alpha = 0.08 + 0.82 * share if n else 0.0
                style = f"background: rgba({rgb},{alpha:.2f});" + ("color:#fff;" if alpha > 0.55 else "")
                tip = f"label {lab}, predicted {p}: {n} ({_fmt_pct(share)} of the row)"
                images = data.get("cell_images", {}).get((field, lab, p)) if n and not agree else None
                text = str(n) if n else ""
                if images:
                    anchor = f"cell-{field}-{labels.index(lab)}-{preds.index(p)}"
                    text = f'<a class="cell" href="#{esc(anchor)}">{n}</a>'
                    lists.append(_cell_images(anchor, field, lab, p, n, images))
                tds.append(f'<td style="{style}" title="{esc(tip)}">{text}</td>')
            body.append(f'<tr><th class="rowh">{esc(lab)}</th>{"".join(tds)}<td class="tot">{row_tot[lab]}</td></tr>')
        blocks.append(
            f'<div class="cm"><h3>{esc(field)}</h3><table class="confusion">'
            f'<thead><tr><th class="corner">label \\ predicted</th>{header}<th class="tot">total</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{"".join(lists)}</div>'
        )
    return head + f'<div class="cms">{"".join(blocks)}</div></section>'


def _cell_images(anchor: str, field: str, label: str, predicted: str, n: int, images: list[dict[str, Any]]) -> str:
    """The images of one disagreeing confusion-matrix cell, shown when its link is followed (CSS :target)."""
    items = []
    for r in images:
        thumb = (f'<img class="gthumb" src="{_data_uri(r["jpeg"])}" alt="thumbnail">' if r.get("jpeg") is not None
                 else '<span class="empty">no thumbnail</span>')
        flag = "flagged" if r.get("is_mismatch") else "not flagged"
        p = "" if r.get("predicted_prob") is None else f"p {float(r['predicted_prob']):.2f}"
        items.append(f'<figure class="cellimg">{thumb}<figcaption>{esc(p)}, {flag}<br><code>{esc(r["uri"])}</code>'
                     "</figcaption></figure>")
    shown = f"the {len(images)} most confident of {n}" if n > len(images) else f"all {n}"
    return (f'<div class="cellimgs" id="{esc(anchor)}"><h4>{esc(field)}: label {esc(label)}, predicted '
            f'{esc(predicted)} ({shown}) <a href="#confusion">close</a></h4>{"".join(items)}</div>')


def _card(i: int, r: dict[str, Any]) -> str:
    field = r["field"] or ""
    inst = r["institution_name"] if r["institution_name"] is not None else UNKNOWN
    sev = r["severity"]
    sev_attr = f"{float(sev):.6f}" if sev is not None else "0"
    corr = r["suggested_correction"]
    jpeg = r.get("jpeg")
    alt_note = "thumbnail; may carry burned-in patient text"
    if jpeg:
        w, h = r.get("width"), r.get("height")
        size = f' width="{int(w)}" height="{int(h)}"' if w and h else ""
        stored = f'<img class="thumb stored" src="{_data_uri(bytes(jpeg))}"{size} alt="as stored: {alt_note}">'
        rotated = corrected_jpeg(bytes(jpeg), corr) if field == "orientation" else None
        if rotated is not None:
            rsize = f' width="{int(h)}" height="{int(w)}"' if w and h and corr != "rot180" else size
            fixed = f'<img class="thumb corrected" src="{_data_uri(rotated)}"{rsize} alt="corrected: {alt_note}">'
        else:
            # same pixels, corrected label: the page copies the stored image's data URI (halves the file size)
            fixed = f'<img class="thumb corrected same" data-same="1"{size} alt="corrected label: {alt_note}">'
    else:
        stored = '<div class="nothumb">no thumbnail</div>'
        fixed = '<div class="nothumb">no thumbnail</div>'
    if field == "orientation" and corr in _ROTATIONS:
        fixed_caption = f"corrected: {esc(_ROTATIONS[corr][1])}"
    else:
        fixed_caption = f"corrected label: <b>{esc(corr)}</b>"
    conf = r["predicted_prob"]
    hv = f'<code class="hv">{esc(r["header_value"])}</code>' if r["header_value"] is not None else '<span class="src">(no header value)</span>'
    return (
        f'<article class="card" data-field="{esc(field)}" data-inst="{esc(inst)}" data-severity="{sev_attr}" data-rank="{i}">'
        f'<div class="thumbs"><figure>{stored}<figcaption>as stored: <b>{esc(r["header_class"])}</b></figcaption></figure>'
        f"<figure>{fixed}<figcaption>{fixed_caption}</figcaption></figure></div>"
        '<dl class="facts">'
        f'<dt>field</dt><dd><span class="tag f-{esc(field)}">{esc(field)}</span></dd>'
        f'<dt>label</dt><dd>{hv} \u2192 <b>{esc(r["header_class"])}</b>'
        f' <span class="src">({esc(r["label_source"])})</span></dd>'
        f'<dt>prediction</dt><dd><b>{esc(r["predicted_class"])}</b>{_lake_note(r)}</dd>'
        f'<dt>confidence</dt><dd>{_fmt_pct(conf)}</dd>'
        f'<dt>severity</dt><dd><span class="sev">{"" if sev is None else f"{float(sev):.3f}"}</span></dd>'
        f"<dt>institution</dt><dd>{esc(inst)}</dd>"
        f'<dt>uri</dt><dd class="uri"><code>{esc(r["uri"])}</code></dd>'
        "</dl></article>"
    )


def _lake_note(r: dict[str, Any]) -> str:
    """Which view decided the flag: the lake probe, the generic model, or both."""
    basis = r.get("flag_basis")
    if not basis:
        return ""
    lake = r.get("lake_predicted_class")
    p = r.get("lake_label_prob")
    detail = f"; this lake's look-alikes say <b>{esc(lake)}</b>" if lake and basis != "generic" else ""
    label_p = f", p(label) {float(p):.2f}" if p is not None and basis != "generic" else ""
    return f' <span class="basis b-{esc(basis)}">flagged by {esc(basis)}{detail}{label_p}</span>'


def _groups_section(data: dict[str, Any]) -> str:
    groups = data.get("groups") or []
    head = (
        '<section id="groups"><h2>Groups to review first</h2>'
        "<p>Groups of images (one institution, manufacturer, protocol, series description or header value) whose "
        "labels the generic model disagrees with for at least half of the images. Either the group is labelled "
        "wrong as a whole (a protocol mapped to the wrong body part), or the model does not know this kind of "
        "film; either way one look at the group decides it. The lake-adaptive probes learn a group's labels as "
        "this lake's truth, so such a group is not listed again image by image.</p>"
    )
    if not groups:
        return head + '<p class="empty">No group stands out.</p></section>'
    rows = []
    for g in groups:
        thumbs = "".join(
            f'<img class="gthumb" src="{_data_uri(bytes(t["jpeg"]))}" alt="{esc(t["uri"])}" title="{esc(t["uri"])}">'
            for t in g.get("thumbs") or [] if t.get("jpeg")
        )
        rows.append(
            f'<article class="group" data-field="{esc(g["field"])}"><h3><span class="tag f-{esc(g["field"])}">'
            f'{esc(g["field"])}</span> {esc(g["dimension"])} = <code>{esc(g["group_value"])}</code></h3>'
            f'<p>labelled <b>{esc(g["header_class"])}</b>; the model says <b>{esc(g["predicted_class"])}</b> for '
            f'{_fmt_int(g["n_disagree"])} of {_fmt_int(g["n_images"])} images ({_fmt_pct(g["share_disagree"])}); '
            f'{_fmt_int(g["n_flagged"])} flagged one by one</p><div class="gthumbs">{thumbs}</div></article>'
        )
    return head + "".join(rows) + "</section>"


def _gallery_section(data: dict[str, Any], limit_note: str) -> str:
    suspects = data["suspects"]
    head = (
        '<section id="suspects"><h2>Top suspects</h2>'
        '<p class="warn"><b>Privacy note:</b> thumbnails are reduced copies of the stored pixels and may carry '
        "burned-in patient text (names, dates, ids printed into the image). Share this page only where the images "
        "themselves may be seen.</p>"
    )
    if not suspects:
        return head + '<p class="empty">No mismatches found.</p></section>'
    fields = [f for f in FIELDS if any(s["field"] == f for s in suspects)]
    fields += sorted({s["field"] for s in suspects} - set(fields))
    insts = sorted({s["institution_name"] if s["institution_name"] is not None else UNKNOWN for s in suspects})
    f_opts = "".join(f'<option value="{esc(f)}">{esc(f)}</option>' for f in fields)
    i_opts = "".join(f'<option value="{esc(i)}">{esc(i)}</option>' for i in insts)
    controls = (
        '<div class="controls">'
        f'<label>field <select id="f-field"><option value="">all fields</option>{f_opts}</select></label>'
        f'<label>institution <select id="f-inst"><option value="">all institutions</option>{i_opts}</select></label>'
        '<button type="button" id="sort" aria-label="sort by severity">severity \u2193 highest first</button>'
        f'<span id="shown">{len(suspects)} of {len(suspects)} shown</span>{limit_note}'
        "</div>"
    )
    cards = "".join(_card(i, r) for i, r in enumerate(suspects))
    return head + controls + f'<div id="gallery">{cards}</div></section>'


CSS = """
.group { border-top:1px solid var(--line); padding:8px 0; }
.group h3 { font-size:15px; margin:4px 0; }
.gthumbs { display:flex; flex-wrap:wrap; gap:6px; }
.gthumb { max-height:96px; border:1px solid var(--line); border-radius:4px; background:#000; }
.basis { display:inline-block; margin-left:6px; font-size:12px; color:var(--muted); }
:root { --fg:#1d232b; --muted:#5b6673; --line:#d9dee4; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#1f2d3d; color:#fff; padding:14px 24px; }
header.top h1 { margin:0; font-size:20px; }
header.top .sub { color:#b8c4d0; font-size:12px; }
nav { display:flex; gap:16px; padding:6px 24px; background:#e9edf1; border-bottom:1px solid var(--line); font-size:13px; }
nav a { color:#1f4e85; text-decoration:none; }
main { padding: 8px 24px 24px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:14px 0; }
h2 { font-size:17px; margin:2px 0 10px; }
h3 { font-size:14px; margin:6px 0; }
.stats { display:flex; flex-wrap:wrap; gap:10px; margin-bottom:10px; }
.stat { border:1px solid var(--line); border-radius:6px; padding:6px 12px; min-width:130px; background:#fafbfc; }
.stat .num { font-size:20px; font-weight:600; }
.stat .lbl { color:var(--muted); font-size:12px; }
.row { display:flex; flex-wrap:wrap; gap:24px; align-items:flex-start; }
table { border-collapse:collapse; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
table.num td { text-align:right; } table.num td:first-child { text-align:left; }
table.kv td:first-child { color:var(--muted); white-space:nowrap; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; word-break:break-all; }
.note code { word-break:normal; }
.status { padding:1px 6px; border-radius:4px; background:#e3e7eb; }
.s-completed { background:#d5f0e3; } .s-incomplete { background:#fde2c8; } .s-running { background:#dde8fb; }
.note { color:var(--muted); font-size:12px; margin:4px 0 8px; }
.empty { color:var(--muted); font-style:italic; }
.warn { background:#fff6dc; border:1px solid #f0d58a; border-radius:6px; padding:6px 10px; font-size:13px; }
.plot { margin:8px 0 14px; overflow-x:auto; }
svg.chart text { font-size:11px; fill:#333; }
svg.chart .tick, svg.chart .val { font-size:10px; fill:#555; }
svg.chart line.ci { stroke:#222; stroke-width:1.2; }
.cellimgs { display:none; margin:8px 0; } .cellimgs:target { display:block; }
.cellimgs h4 { font-size:13px; margin:4px 0; }
figure.cellimg { display:inline-block; margin:4px; width:150px; vertical-align:top; font-size:11px; }
figure.cellimg code { font-size:10px; }
table.confusion a.cell { color:inherit; font-weight:600; }
svg.chart .grid { stroke:#e3e6ea; stroke-width:1; }
.cms { display:flex; flex-wrap:wrap; gap:24px; }
table.confusion td { text-align:center; min-width:44px; border:1px solid #eceff2; }
table.confusion th.col { writing-mode: vertical-rl; transform: rotate(180deg); white-space:nowrap; font-weight:500; }
table.confusion th.rowh { white-space:nowrap; font-weight:500; }
table.confusion .tot { color:var(--muted); }
table.confusion th.corner { color:var(--muted); font-weight:400; font-size:11px; vertical-align:bottom; }
.controls { display:flex; flex-wrap:wrap; gap:14px; align-items:center; margin:10px 0; }
.controls select, .controls button { font:inherit; padding:3px 6px; }
#shown { color:var(--muted); }
#gallery { display:grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px; background:#fcfcfd; display:flex; flex-direction:column; gap:6px; }
[hidden] { display:none !important; }
.thumbs { display:flex; gap:8px; justify-content:center; }
figure { margin:0; text-align:center; }
figure img, .nothumb { max-width:165px; max-height:165px; width:auto; height:auto; background:#000; display:block; margin:0 auto; }
.nothumb { width:120px; height:120px; color:#aaa; font-size:11px; display:flex; align-items:center; justify-content:center; }
figcaption { font-size:11px; color:var(--muted); margin-top:2px; }
dl.facts { display:grid; grid-template-columns: 80px 1fr; gap:1px 8px; margin:0; font-size:12px; }
dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; min-width:0; }
.src { color:var(--muted); font-size:11px; }
.tag { padding:0 6px; border-radius:4px; color:#fff; font-size:11px; background:#777; }
.f-body_part { background:#3b6fb6; } .f-projection { background:#d9822b; } .f-orientation { background:#2a9d6f; }
.sev { font-weight:600; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:10px 0 24px; }
footer b { color:#a12d2d; }
"""

JS = """
(function () {
  'use strict';
  var gallery = document.getElementById('gallery');
  if (!gallery) { return; }
  var cards = Array.prototype.slice.call(gallery.querySelectorAll('.card'));
  cards.forEach(function (card) {
    var same = card.querySelector('img[data-same]');
    var stored = card.querySelector('img.stored');
    if (same && stored) { same.src = stored.src; }
  });
  var fieldSel = document.getElementById('f-field');
  var instSel = document.getElementById('f-inst');
  var sortBtn = document.getElementById('sort');
  var shown = document.getElementById('shown');
  var desc = true;
  function apply() {
    var n = 0;
    cards.forEach(function (card) {
      var ok = (!fieldSel.value || card.dataset.field === fieldSel.value) &&
               (!instSel.value || card.dataset.inst === instSel.value);
      card.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = n + ' of ' + cards.length + ' shown';
  }
  function sort() {
    cards.sort(function (a, b) {
      var d = parseFloat(a.dataset.severity) - parseFloat(b.dataset.severity);
      if (d === 0) { d = parseInt(b.dataset.rank, 10) - parseInt(a.dataset.rank, 10); }
      return desc ? -d : d;
    });
    cards.forEach(function (card) { gallery.appendChild(card); });
    sortBtn.textContent = desc ? 'severity \\u2193 highest first' : 'severity \\u2191 lowest first';
  }
  fieldSel.addEventListener('change', apply);
  instSel.addEventListener('change', apply);
  sortBtn.addEventListener('click', function () { desc = !desc; sort(); });
  apply();
})();
"""


def render(data: dict[str, Any]) -> str:
    """The whole page from the collected data (pure; no database access)."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n = len(data["suspects"])
    total = data["totals"].get("mismatches") or 0
    limit_note = f'<span class="note">the {n} most severe of {total:,} mismatches</span>' if total > n else ""
    body = "".join(
        [
            _summary_section(data),
            _groups_section(data),
            _fields_section(data),
            _rates_section(data),
            _confusion_section(data),
            _gallery_section(data, limit_note),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>radlint report</title>"
        f"<style>{CSS}</style></head><body>"
        '<header class="top"><h1>radlint audit report</h1>'
        f'<div class="sub">database <code>{esc(data.get("db"))}</code> \u00b7 generated {generated}</div></header>'
        '<nav><a href="#summary">summary</a><a href="#groups">groups</a><a href="#fields">per field</a><a href="#rates">rates</a>'
        '<a href="#confusion">label vs prediction</a><a href="#suspects">top suspects</a></nav>'
        f"<main>{body}</main>"
        "<footer><b>Not for clinical use.</b> radlint flags labels that the pixels contradict, for review by people; "
        "it makes no diagnosis.</footer>"
        f"<script>{JS}</script></body></html>\n"
    )
