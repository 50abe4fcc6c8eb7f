"""The win map's verdicts and the reference-level rows of the leaderboard, on synthetic records."""

from __future__ import annotations

from tiwbench.report.leaderboard import REF_LEVEL_METHOD, aggregate, records_frame, to_markdown
from tiwbench.report.win_map import save_win_map, winners


def _rec(method, dim, frac, seed, fd, level=0.01):
    return {"suite": "regime", "dataset": "gmm", "method": method, "ref_frac": frac, "seed": seed, "status": "ok",
            "sweep": {"dim": dim}, "config": {"method": method, "seed": seed},
            "metrics": [{"name": "fd", "value": fd, "higher_is_better": False},
                        {"name": "fd_ref_level", "value": level + 0.001 * seed, "higher_is_better": False}]}


def _records():
    out = []
    for s in range(4):
        jitter = 0.01 * (s - 1.5)
        out += [_rec("a", 4, 0.05, s, 1.0 + jitter), _rec("b", 4, 0.05, s, 2.0 + jitter),  # a clearly wins
                _rec("a", 16, 0.05, s, 1.0 + jitter), _rec("b", 16, 0.05, s, 1.0 - jitter),  # a tie
                _rec("oracle", 4, 0.05, s, 0.1), _rec("oracle", 16, 0.05, s, 0.1)]  # never a competitor
    return out


def test_winners_best_tie_and_the_oracle_left_out(tmp_path):
    agg = aggregate(records_frame(_records()))
    w = winners(agg, "fd").set_index("x")
    assert w.loc[4.0, "kind"] == "best" and w.loc[4.0, "methods"] == ["a"]
    assert w.loc[16.0, "kind"] == "tie" and sorted(w.loc[16.0, "methods"]) == ["a", "b"]
    save_win_map(agg, tmp_path / "win.png")
    assert (tmp_path / "win.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reference_level_is_one_unranked_row_per_seed():
    agg = aggregate(records_frame(_records()))
    level = agg[(agg.method == REF_LEVEL_METHOD) & (agg.x == 4.0)]
    assert len(level) == 1 and int(level.n.iloc[0]) == 4  # 4 seeds, not 3 methods × 4 seeds
    assert abs(float(level["mean"].iloc[0]) - (0.01 + 0.0015)) < 1e-12
    assert (level.mark == "").all()  # a reference row is never best
    assert "fd_ref_level" not in set(agg.metric)
    assert f"| {REF_LEVEL_METHOD} |" in to_markdown(agg)


def test_win_map_as_markdown():
    from tiwbench.report.win_map import to_markdown as win_markdown

    text = win_markdown(aggregate(records_frame(_records())))
    assert "gmm · fd (regime)" in text and "| dim | 0.05 |" in text
    assert "| 4 | **a** |" in text and ("| 16 | ≈ a, b |" in text or "| 16 | ≈ b, a |" in text)
    assert not [line for line in text.splitlines() if line.startswith("| ") and "oracle" in line]
