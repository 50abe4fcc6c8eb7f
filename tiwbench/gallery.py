"""The HTML report's sample pictures: per (suite, dataset, ref_frac), one row per seed with the methods
side by side, each picture inlined as base64 so the page is one self-contained file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

GALLERY_STYLE = """
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:0.4em 0 1.2em}
.gallery figure{margin:0;text-align:center}
.gallery img{width:200px;height:auto;image-rendering:pixelated;border:1px solid #ddd}
.gallery figcaption{font-size:0.85em;color:#444}
"""


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
                figs.append(f'<figure><img alt="samples of {label}" src="data:image/png;base64,{b64}">'
                            f"<figcaption>{label}</figcaption></figure>")
            parts.append(f"<h3>{html.escape(ds)} · ref_frac {frac:g} · seed {seed} "
                         f"<small>(suite {html.escape(suite)})</small></h3>"
                         f'<div class="gallery">{"".join(figs)}</div>')
    return "\n".join(parts)
