"""docs/claims.md lists the commands that reproduce each headline claim: every one must still parse and
name a suite, datasets, methods, estimators, kernels, ref_fracs, seeds and sweep points that resolve, so
that a renamed method or a misspelling there fails here instead of in a reader's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.main import get_command

from tiwbench import cli
from tiwbench.config import load_suite
from tiwbench.sweep.runner import check_method_name, expand

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "claims.md"


def _command_lines() -> list[str]:
    """Every line of the doc's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", CLAIMS.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def check_command(line: str) -> None:
    """Parse one documented command as the CLI would and resolve its names; raises on any that does not."""
    argv = shlex.split(line)
    if argv[:3] == ["python", "-m", "pytest"]:
        for path in argv[3:]:
            if not path.startswith("-"):
                assert (ROOT / path).is_file(), f"{line}: no file {path}"
        return
    if argv == ["make", "run"]:
        assert re.search(r"^run:", (ROOT / "Makefile").read_text(), flags=re.M), "Makefile has no run target"
        return
    assert argv[0] == "tiwbench", f"{line}: not a tiwbench, make or pytest command"
    group = get_command(cli.app)
    sub = group.commands.get(argv[1]) if len(argv) > 1 else None
    assert sub is not None, f"{line}: no subcommand {argv[1:2]}"
    params = sub.make_context(argv[1], argv[2:]).params  # unknown options and bad types raise here
    if argv[1] == "run":
        suite = load_suite(params["suite"])
        cells = expand(suite, params["profile"], cli._csv(params["dataset"], str), cli._csv(params["methods"], str),
                       cli._csv(params["ref_fracs"], float), cli._csv(params["seeds"], int),
                       cli._sweep_option(params["sweep"] or []))
        assert cells, f"{line}: selects no cell"
    elif argv[1] == "report":
        from tiwbench.report.paired import parse_pairs

        for name in [params["vs"]] if params.get("vs") else []:
            check_method_name(name)
        for a, b in parse_pairs(params["pairs"]) if params.get("pairs") else []:
            check_method_name(a)
            check_method_name(b)
        for spec in params.get("borrow") or []:
            for name in spec.partition(":")[2].split(","):
                check_method_name(name)


def test_claims_doc_has_commands():
    lines = _command_lines()
    assert sum(line.startswith("tiwbench run") for line in lines) >= 10


@pytest.mark.parametrize("line", _command_lines())
def test_each_documented_command_resolves(line):
    check_command(line)


@pytest.mark.parametrize("line", [
    "tiwbench run --suite ratio_studdy",                                            # suite
    "tiwbench run --suite ratio_study --methods tiw_dsm@denoiser_dif",              # estimator
    "tiwbench run --suite kernel_study --methods tiw_dsm~vpp",                      # kernel
    "tiwbench run --suite ref_size --dataset gmmm",                                 # dataset
    "tiwbench run --suite regime --sweep dim=5",                                    # sweep point
    "tiwbench run --suite ref_size --profil default",                               # option
    "tiwbench report --vs iw_dsn",                                                  # --vs method
    "python -m pytest tests/test_theorem_1.py -q",                                  # test file
])
def test_a_misspelled_name_is_caught(line):
    with pytest.raises(Exception, match=r"(?i)did you mean|no such option|not a point|no file"):
        check_command(line)


def test_readme_opens_with_the_two_commands():
    """A newcomer finds the two set-up commands on the first screen, and .ci/run calls the same test command."""
    head = (ROOT / "README.md").read_text().splitlines()[:30]
    assert any(line.startswith("make run ") for line in head) and any(line.startswith("make test ") for line in head)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_claim_reproduces_with_tiwbench_commands():
    """No claim names a script: what a script computed is a `tiwbench report` option, so a reader reproduces a
    claim with the documented commands alone."""
    text = CLAIMS.read_text()
    assert "scripts/" not in text and "python " not in text.replace("python -m pytest", "")
