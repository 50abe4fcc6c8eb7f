"""The HTML report in a real headless browser (Debian's chromium): it loads without console errors and
every inlined picture decodes. Skipped, with the reason, where chromium is not installed
(`make browser` installs it where apt is available)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_ratio_study import _records as ratio_records  # noqa: I001  (synthetic records of the report tests)
from test_report import record, write

from tiwbench.records import atomic_write_bytes, atomic_write_json, cell_dir
from tiwbench.report.render import report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]

# put in the head of a copy of the page: records script errors and console.error calls, and checks every image
SENTINEL = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const _err = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); _err(...a); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const out = document.createElement("pre"); out.id = "sentinel";
  out.textContent = JSON.stringify({errors: window.__errors, images: imgs.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    """Console messages as chromium logs them (``[...:INFO:CONSOLE:1] "msg", source: ...``; it logs
    console.error at INFO too). The report has no script of its own, so any message is a fault."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


def sentinel(stdout: str) -> dict:
    import html

    m = re.search(r'<pre id="sentinel">(.*?)</pre>', stdout, re.S)
    assert m, "the page's load handler never ran"
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser` installs it with apt)")
def test_html_report_loads_in_headless_chromium(tmp_path):
    import torch

    from tiwbench.report.cell_picture import GRID_NAME, image_grid, png_bytes

    recs = [record(m, f, s, 0.1 * (i + 1) + 0.01 * s) for i, m in enumerate(("dsm_obs", "tiw_dsm"))
            for f in (0.05, 0.25) for s in range(3)]
    for r in recs:
        r["dataset"], r["pictures"] = "digits_lt", {"samples": GRID_NAME}
    runs = write(tmp_path / "runs", recs)
    for p in runs.rglob("record.json"):  # a grid beside each record, as the runner writes it
        atomic_write_bytes(p.parent / GRID_NAME, png_bytes(image_grid(torch.rand(16, 1, 8, 8) * 2 - 1)))
    for r in ratio_records():  # a suite comparing ratio estimators: the ratio study's tables and figures
        atomic_write_json(cell_dir(runs, r["suite"], r["dataset"], r["method"], r["ref_frac"], r["seed"])
                          / "record.json", r)
    page = tmp_path / "report.html"
    report(runs, "html", output=page, vs="dsm_obs")
    text = page.read_text()
    assert text.count('alt="samples of ') == 4 and "Paired differences to dsm_obs" in text
    images = text.count("<img ")  # the samples, each leaderboard's figure, the ratio study's two
    assert images == 4 + 3 + 2

    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</head>", SENTINEL + "</head>", 1))  # before anything can fail
    proc = browse(checked, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = sentinel(proc.stdout)
    assert result["errors"] == [] and result["broken"] == []
    assert result["images"] == images
    # the page as shipped, without the sentinel: no console errors in chromium's own log, and what the
    # browser built holds the headline, the paired differences and the ratio study
    plain = browse(page, tmp_path, "--virtual-time-budget=3000", "--dump-dom")
    assert plain.returncode == 0 and "<h1>tiwbench report</h1>" in plain.stdout
    assert console_messages(plain.stderr) == []
    for heading in ('<h2 id="headline">Headline</h2>', "<h3>Paired differences to dsm_obs</h3>",
                    "<h2>Ratio study</h2>"):
        assert heading in plain.stdout
    assert "no winner" in plain.stdout or "wins" in plain.stdout  # a sentence of the headline
    shot = tmp_path / "shot.png"  # and it renders: a screenshot at the width the page is read at
    browse(page, tmp_path, "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the checks can fail: a page with a broken picture, a console error and a script error
    bad = tmp_path / "bad.html"
    bad.write_text(f'<!DOCTYPE html><html><head>{SENTINEL}</head><body><img alt="bad" src="data:image/png;base64,'
                   'AAAA"><script>console.error("boom"); nosuch();</script></body></html>')
    proc = browse(bad, tmp_path, "--virtual-time-budget=3000", "--dump-dom")
    caught = sentinel(proc.stdout)
    assert caught["broken"] == ["bad"] and any("boom" in e for e in caught["errors"])
    assert any("nosuch" in e for e in caught["errors"])
    assert any("nosuch is not defined" in line for line in console_messages(proc.stderr))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser` installs it with apt)")
def test_verdict_grid_in_the_browser_says_what_the_markdown_says(tmp_path):
    """The grid as chromium builds it: a clear winner, a tie and a ceiling that leads every seed but never
    wins, cell for cell the markdown's verdicts, each cell linking to a table that exists."""
    import html as html_mod

    from test_verdicts import planted

    runs = write(tmp_path / "runs", planted())
    page = tmp_path / "report.html"
    report(runs, "html", output=page)
    md = report(runs, "markdown")
    grid = md.split("## Verdicts")[1].split("## Headline")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in grid.splitlines()
            if line.startswith("| 0.")]
    expected = [cell.replace("**", "") for row in rows for cell in row[1:]]
    dom = browse(page, tmp_path, "--virtual-time-budget=3000", "--dump-dom").stdout
    cells = re.findall(r'<td class="verdict (\w+)" data-winner="([^"]*)"[^>]*><a href="#([^"]+)">(.*?)</a></td>', dom)
    assert [html_mod.unescape(re.sub("<[^>]+>", "", c[3])) for c in cells] == expected
    kinds = {html_mod.unescape(re.sub("<[^>]+>", "", c[3])): (c[0], c[1]) for c in cells}
    assert ("winner", "a") in kinds.values() and ("tie", "") in kinds.values()
    assert all(w != "oracle" for _, w in kinds.values())  # the ceiling never wins
    for _, _, anchor, _ in cells:
        assert f'id="{anchor}"' in dom
