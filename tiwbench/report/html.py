"""The HTML report: one self-contained page with everything the markdown report has (the headline, the
leaderboards each beside its figure, paired differences, the ratio study, checkpoint selection, the win
map and the budget check where present), then the sample pictures (per suite, dataset and ref_frac, one
row per seed with the methods side by side), each picture inlined as base64."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.report.leaderboard import (
    LEGEND,
    REF_LEVEL_METHOD,
    cell_parts,
    row_label,
    table_flag_note,
    table_title,
    tables,
    unpaired_note,
)
from tiwbench.report.verdicts import table_id

GALLERY_STYLE = """
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:0.4em 0 1.2em}
.gallery figure{margin:0;text-align:center}
.gallery img{image-rendering:pixelated;border:1px solid #ddd}
.gallery figcaption{font-size:0.85em;color:#444}
"""


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def pictures(records: list[dict[str, Any]]) -> dict[tuple, dict[str, bytes]]:
    """(suite, dataset, ref_frac, seed) -> {method: PNG bytes}, from the files the records name."""
    out: dict[tuple, dict[str, bytes]] = {}
    for r in records:
        name = (r.get("pictures") or {}).get("samples")
        if r.get("status") != "ok" or not name or "_path" not in r:
            continue
        p = Path(r["_path"]).parent / name
        if p.is_file():
            key = (r.get("suite") or "", r["dataset"], float(r["ref_frac"]), r.get("seed"))
            out.setdefault(key, {})[r["method"]] = p.read_bytes()
    return out


def gallery_html(records: list[dict[str, Any]], max_seeds: int = 1) -> str:
    """Sections of sample pictures: the first ``max_seeds`` seeds of each (suite, dataset, ref_frac);
    within a seed every method sampled from the same latents, so the pictures compare one to one."""
    pics = pictures(records)
    if not pics:
        return ""
    parts = ['<h2 id="samples">Samples</h2>',
             "<p><small>The first samples of each cell; within a seed every method starts from the same "
             "latents. Image datasets: a grid; 2-D mixtures: samples (blue) over the true modes (red).</small></p>"]
    cells = sorted({k[:3] for k in pics})
    for suite, ds, frac in cells:
        seeds = sorted({k[3] for k in pics if k[:3] == (suite, ds, frac)}, key=lambda s: (s is None, s))
        for seed in seeds[:max_seeds]:
            figs = []
            for method, png in sorted(pics[(suite, ds, frac, seed)].items()):
                b64 = base64.b64encode(png).decode("ascii")
                label = html.escape(method)
                w, h = png_size(png)  # shown at its own size: a grid pixel is a sample pixel
                figs.append(f'<figure><img alt="samples of {label}" width="{w}" height="{h}" '
                            f'src="data:image/png;base64,{b64}">'
                            f"<figcaption>{label}</figcaption></figure>")
            parts.append(f"<h3>{html.escape(ds)} · ref_frac {frac:g} · seed {seed} "
                         f"<small>(suite {html.escape(suite)})</small></h3>"
                         f'<div class="gallery">{"".join(figs)}</div>')
    return "\n".join(parts)


HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
td.best{font-weight:bold;background:#e6f4e6}
td.tie{background:#f4f4e0}
td.failed{color:#b00;background:#fbeaea}
tr.reference td{color:#555;font-style:italic}
p.flag{color:#b00;font-weight:bold}
td[data-flags]{outline:1px dashed #c60}
small{color:#666}
img{max-width:100%}
.pair{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.pair>figure{margin:0}
ul.headline li{margin:0.3em 0}
table.verdicts td{text-align:left}
table.verdicts td a{color:inherit;text-decoration:none}
td.verdict.winner{background:#e6f4e6}
td.verdict.tie{background:#f4f4e0}
td.verdict.only{background:#eef}
"""


def png_img(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _inline(text: str) -> str:
    """Escaped text with markdown's **bold** and a whole-cell _emphasis_ as tags."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def markdown_html(text: str) -> str:
    """The report's own markdown (## and ### headings, pipe tables, _notes_, - items, plain lines) as HTML,
    so that every section the markdown report has is in the page with the same content."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            rows.append([c.strip() for c in s.strip("|").split("|")])
            continue
        flush()
        if not s:
            continue
        level = len(s) - len(s.lstrip("#"))
        if 1 <= level <= 4 and s[level:level + 1] == " ":
            out.append(f"<h{level}>{_inline(s[level + 1:])}</h{level}>")
        elif s.startswith("_") and s.endswith("_") and len(s) > 1:
            out.append(f"<p><small>{_inline(s[1:-1])}</small></p>")
        elif s.startswith("- "):
            out.append(f"<ul><li>{_inline(s[2:])}</li></ul>")
        else:
            out.append(f"<p>{_inline(s)}</p>")
    flush()
    return "\n".join(out)


def leaderboard_table(t: dict) -> str:
    """One leaderboard table as HTML: the cells as in the markdown, marks as classes, references in italics."""
    rows = ["<tr><th>method</th>" + "".join(f"<th>{html.escape(x)}</th>" for x in t["labels"]) + "</tr>"]
    for m in t["methods"]:
        tds = []
        for f in t["fracs"]:
            r = t["cells"].get((m, f))
            if r is None:
                tds.append("<td>–</td>")
                continue
            main, detail = cell_parts(r)
            if r.n == 0:
                detail = f"({detail})"
            cls = "failed" if r.n == 0 else r.mark
            main = ("≈ " if r.mark == "tie" else "") + main
            flags = r.get("cell_flags") if isinstance(r.get("cell_flags"), list) else []
            data = f' data-flags="{html.escape(" ".join(flags))}"' if flags else ""
            tds.append(f'<td class="{cls}"{data}>{html.escape(main)}<br><small>{html.escape(detail)}</small></td>')
        ref = ' class="reference"' if m in t.get("ceilings", ()) or m == REF_LEVEL_METHOD else ""
        rows.append(f"<tr{ref}><td>{html.escape(row_label(t, m))}</td>{''.join(tds)}</tr>")
    note = unpaired_note(t)
    return f"<table>{''.join(rows)}</table>" + (f"<p><small>{html.escape(note)}</small></p>" if note else "")


def to_html(agg: pd.DataFrame, figures: dict[int, bytes] | None = None, extra: str = "", top: str = "",
            notice: str = "") -> str:
    """One self-contained page: ``notice`` (the flags raised), ``top`` (the headline), the legend, each
    leaderboard table beside its figure (``figures``: table index -> PNG), then ``extra`` (the other sections
    and the samples)."""
    body = ["<h1>tiwbench report</h1>", top, f"<p><small>{html.escape(LEGEND)}</small></p>"]
    if notice:
        body.insert(1, f'<p class="flag">⚑ {html.escape(notice)}</p>')
    for i, t in enumerate(tables(agg)):
        fig = (figures or {}).get(i)
        side = f"<figure>{png_img(fig, f'{table_title(t)} against ref_frac')}</figure>" if fig else ""
        note = table_flag_note(t)
        if note:  # the table's flags, machine-readable in data-flags
            note = f'<p class="flag" data-flags="{html.escape(" ".join(t["flags"]))}">{html.escape(note)}</p>'
        body.append(f'<h2 id="{table_id(t)}">{html.escape(table_title(t))}</h2>{note}'
                    f'<div class="pair"><div>{leaderboard_table(t)}</div>{side}</div>')
    if agg.empty:
        body.append("<p>no records found</p>")
    if extra:
        body.append(extra)
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>tiwbench report</title>'
            f"<style>{HTML_STYLE}{GALLERY_STYLE}</style></head><body>\n" + "\n".join(b for b in body if b)
            + "\n</body></html>\n")
