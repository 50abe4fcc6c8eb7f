"""The HTML report: one self-contained page with the leaderboards, the plot and the sample pictures
(per suite, dataset and ref_frac, one row per seed with the methods side by side), each picture
inlined as base64."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from tiwbench.report.leaderboard import LEGEND, cell_parts, table_flag_note, table_title, tables

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
p.flag{color:#b00;font-weight:bold}
td[data-flags]{outline:1px dashed #c60}
small{color:#666}
img{max-width:100%}
"""


def to_html(agg: pd.DataFrame, png: bytes | None = None, extra: str = "", notice: str = "") -> str:
    """One self-contained page: ``notice`` (the flags raised), tables, the plot embedded as a base64 PNG,
    then ``extra`` (the samples)."""
    body = ["<h1>tiwbench report</h1>", f"<p><small>{html.escape(LEGEND)}</small></p>"]
    if notice:
        body.insert(1, f'<p class="flag">⚑ {html.escape(notice)}</p>')
    if png:
        b64 = base64.b64encode(png).decode("ascii")
        body.append(f'<img alt="metrics against ref_frac" src="data:image/png;base64,{b64}">')
    for t in tables(agg):
        rows = ["<tr><th>method</th>" + "".join(f"<th>{html.escape(x)}</th>" for x in t["labels"]) + "</tr>"]
        for m in t["methods"]:
            tds = []
            for f in t["fracs"]:
                r = t["cells"].get((m, f))
                if r is None:
                    tds.append("<td>–</td>")
                    continue
                main, detail = cell_parts(r)
                cls = "failed" if r.n == 0 else r.mark
                main = ("≈ " if r.mark == "tie" else "") + main
                flags = r.get("cell_flags") if isinstance(r.get("cell_flags"), list) else []
                data = f' data-flags="{html.escape(" ".join(flags))}"' if flags else ""
                tds.append(f'<td class="{cls}"{data}>{html.escape(main)}<br><small>{html.escape(detail)}</small></td>')
            rows.append(f"<tr><td>{html.escape(m)}</td>{''.join(tds)}</tr>")
        note = table_flag_note(t)
        if note:  # the table's flags, machine-readable in data-flags
            note = f'<p class="flag" data-flags="{html.escape(" ".join(t["flags"]))}">{html.escape(note)}</p>'
        body.append(f"<h2>{html.escape(table_title(t))}</h2>{note}<table>{''.join(rows)}</table>")
    if agg.empty:
        body.append("<p>no records found</p>")
    if extra:
        body.append(extra)
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>tiwbench report</title>'
            f"<style>{HTML_STYLE}{GALLERY_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
