"""Paired comparisons with a reference method. Within a seed every method shares the split, the ratio
model and the sampling latents, so the seed-to-seed noise they share cancels in the per-seed difference
d_s = x_{m,s} − x_{ref,s}. The paired interval is mean(d) ± t_{n−1} · sd(d)/√n over the n seeds both
finished; beside it, the unpaired (Welch) interval of the difference of the two means on the same seeds,
and the ratio of the half-widths (below 1: pairing made the comparison sharper)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy import stats

from tiwbench.report.intervals import CONFIDENCE, ReportError
from tiwbench.report.leaderboard import direction

COLUMNS = ["suite", "dataset", "metric", "ref_frac", "x_name", "x", "method", "vs", "n", "diff", "paired_half",
           "unpaired_half", "narrower", "higher_is_better"]


def paired_interval(d: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval of paired differences; half NaN below 2 pairs."""
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def welch_half(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the Welch interval of mean(a) − mean(b) (Welch–Satterthwaite degrees of freedom)."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    va = sum((x - sum(a) / na) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - sum(b) / nb) ** 2 for x in b) / (nb - 1) / nb
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)


def paired_table(df: pd.DataFrame, vs: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (suite, dataset, metric, ref_frac, method ≠ vs) from ``records_frame`` rows."""
    ok = df[df.status == "ok"]
    if vs not in set(ok.method):
        have = ", ".join(sorted(set(ok.method))) or "none"
        raise ReportError(f"--vs {vs}: no finished records of that method; methods here: {have}")
    rows = []
    # a suite swept over a dataset parameter has one cell per (ref_frac, swept value) and seed: pair within it
    for (suite, ds, metric, frac, x_name, x), g in ok.groupby(["suite", "dataset", "metric", "ref_frac", "x_name",
                                                               "x"], sort=True):
        base = g[g.method == vs].set_index("seed").value
        if base.empty:
            continue
        hib = direction(metric, g.higher_is_better.dropna().iloc[0] if g.higher_is_better.notna().any() else None)
        for method, gm in g[g.method != vs].groupby("method", sort=True):
            m = gm.set_index("seed").value
            seeds = sorted(set(m.index) & set(base.index))
            if not seeds:
                continue
            a, b = [float(m[s]) for s in seeds], [float(base[s]) for s in seeds]
            diff, half = paired_interval([x - y for x, y in zip(a, b)], confidence)
            unpaired = welch_half(a, b, confidence)
            rows.append({"suite": suite, "dataset": ds, "metric": metric, "ref_frac": frac, "x_name": x_name,
                         "x": x, "method": method,
                         "vs": vs, "n": len(seeds), "diff": diff, "paired_half": half, "unpaired_half": unpaired,
                         "narrower": half / unpaired if unpaired and math.isfinite(half) else math.nan,
                         "higher_is_better": hib})
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.4g}"


def _where(r) -> str:
    """The ref_frac, and the swept parameter's value where the suite has one."""
    return f"{r.ref_frac:g}" + ("" if r.x_name == "ref_frac" else f" · {r.x_name}={r.x:g}")


def _verdict(r) -> str:
    if not math.isfinite(r.paired_half) or abs(r["diff"]) <= r.paired_half:
        return "≈"
    better = (r["diff"] > 0) == bool(r.higher_is_better)
    return "better" if better else "worse"


def _suites(table: pd.DataFrame) -> bool:
    """Whether the rows come from several suites (e.g. ref_size and its budget-doubled ref_size_x2): then
    each row names its suite."""
    return table.suite.nunique() > 1


def to_markdown(table: pd.DataFrame, vs: str) -> str:
    several = _suites(table)
    lines = [f"### Paired differences to {vs}",
             f"_method − {vs} per seed; mean ± {CONFIDENCE:.0%} paired Student-t half-width over the seeds both "
             "finished; unpaired: the Welch half-width of the same comparison; ratio: paired/unpaired (below 1: "
             "pairing is sharper). better/worse: the paired interval excludes 0._", "",
             ("| suite " if several else "") + "| dataset | metric | ref_frac | method | n | diff ± paired | "
             "unpaired ± | ratio | |",
             ("|---" if several else "") + "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lead = f"| {r.suite} " if several else ""
        lines.append(f"{lead}| {r.dataset} | {r.metric} | {_where(r)} | {r.method} | {r.n} | "
                     f"{_fmt(r['diff'])} ± {_fmt(r.paired_half)} | ± {_fmt(r.unpaired_half)} | {_fmt(r.narrower)} | "
                     f"{_verdict(r)} |")
    if table.empty:
        lines.append("| – | – | – | – | 0 | no seeds in common | | | |")
    return "\n".join(lines) + "\n"


def paired_section(records: list[dict[str, Any]], vs: str, fmt: str) -> str:
    from tiwbench.report.leaderboard import records_frame

    table = paired_table(records_frame(records), vs)
    if fmt == "markdown":
        return to_markdown(table, vs)
    raise ReportError(f"--vs works with --format markdown or html, not {fmt}")


# -- chosen pairs (``--pairs``), with reference-only rows borrowed across datasets (``--borrow``) ------------------
def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``A:B,C:D`` -> [(A, B), (C, D)]: each A's per-seed difference to its B."""
    pairs = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip() or a.strip() == b.strip():
            raise ReportError(f"--pairs {item!r}: write METHOD_A:METHOD_B (A − B per seed), comma-separated")
        pairs.append((a.strip(), b.strip()))
    if not pairs:
        raise ReportError("--pairs: give at least one METHOD_A:METHOD_B")
    return pairs


def borrow_rows(df: pd.DataFrame, spec: str) -> tuple[pd.DataFrame, list[str]]:
    """``TO=FROM:M1,M2``: the finished rows of methods M1, M2 of dataset FROM, relabelled as dataset TO, where TO
    has no row of that method, suite, ref_frac and seed. For cells that are one computation on both datasets
    (e.g. a reference-only method where TO changes D_bias alone); reference levels are never borrowed. Returns
    the rows and what was borrowed, to be said beside the tables."""
    from tiwbench.report.leaderboard import REF_LEVEL_METHOD

    to, sep, rest = spec.partition("=")
    source, sep2, methods = rest.partition(":")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not (sep and sep2 and to.strip() and source.strip() and names):
        raise ReportError(f"--borrow {spec!r}: write TO=FROM:METHOD[,METHOD], e.g. gmm_tilt=gmm:dsm_ref,gan_ref")
    if REF_LEVEL_METHOD in names:
        raise ReportError("--borrow: reference levels are drawn per dataset and cannot be borrowed")
    to, source = to.strip(), source.strip()
    keys = ["suite", "method", "metric", "ref_frac", "x_name", "x", "seed"]
    have = set(map(tuple, df[df.dataset == to][keys].itertuples(index=False)))
    rows = df[(df.dataset == source) & df.method.isin(names) & (df.status == "ok")]
    rows = rows[[tuple(r) not in have for r in rows[keys].itertuples(index=False)]]
    said = [f"{m} at {f:g} ({g.seed.nunique()} seeds)" for (m, f), g in rows.groupby(["method", "ref_frac"])]
    return pd.concat([df, rows.assign(dataset=to)], ignore_index=True), said


def pairs_table(df: pd.DataFrame, pairs: list[tuple[str, str]], confidence: float = CONFIDENCE) -> pd.DataFrame:
    """For each pair (A, B): A's rows of :func:`paired_table` against B (one pairing implementation)."""
    parts = []
    for a, b in pairs:
        have = set(df[df.status == "ok"].method)
        for m in (a, b):
            if m not in have:
                raise ReportError(f"--pairs {a}:{b}: no finished records of {m!r}; methods here: "
                                  f"{', '.join(sorted(have)) or 'none'}")
        t = paired_table(df, b, confidence)
        parts.append(t[t.method == a])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def pairs_section(records: list[dict[str, Any]], pairs: str, borrow: list[str] | None = None) -> str:
    from tiwbench.report.leaderboard import records_frame

    df, said = records_frame(records), []
    for spec in borrow or []:
        df, more = borrow_rows(df, spec)
        said += [f"{spec.partition('=')[0]}: {s} from {spec.partition('=')[2].partition(':')[0]}" for s in more]
    table = pairs_table(df, parse_pairs(pairs))
    several = _suites(table)
    lines = ["### Paired differences, chosen pairs",
             f"_A − B per seed; mean ± {CONFIDENCE:.0%} paired Student-t half-width over the seeds both finished; "
             "better/worse: the paired interval excludes 0, in the metric's direction._", ""]
    if said:
        lines += [f"_Borrowed (one computation on both datasets): {'; '.join(said)}._", ""]
    lines += [("| suite " if several else "") + "| dataset | metric | ref_frac | A − B | n | diff ± paired | |",
              ("|---" if several else "") + "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lead = f"| {r.suite} " if several else ""
        lines.append(f"{lead}| {r.dataset} | {r.metric} | {_where(r)} | {r.method} − {r.vs} | {r.n} | "
                     f"{_fmt(r['diff'])} ± {_fmt(r.paired_half)} | {_verdict(r)} |")
    if table.empty:
        lines.append("| – | – | – | – | 0 | no seeds in common | |")
    return "\n".join(lines) + "\n"


def collapse_note(records: list[dict[str, Any]]) -> str:
    """How many finished GAN cells' generators collapsed (``train.collapsed``), per method ("" where none record
    it)."""
    counts: dict[str, list[int]] = {}
    for r in records:
        train = r.get("train") or {}
        if r.get("status") == "ok" and "collapsed" in train:
            c = counts.setdefault(r["method"], [0, 0])
            c[0] += int(bool(train["collapsed"]))
            c[1] += 1
    if not counts:
        return ""
    total = sum(c for c, _ in counts.values()), sum(n for _, n in counts.values())
    per = ", ".join(f"{m} {c}/{n}" for m, (c, n) in sorted(counts.items()))
    return (f"\n_Collapsed generators (spread below a tenth of the data's): {total[0]} of {total[1]} finished "
            f"cells ({per})._\n")
