import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy():
    from tiwbench.data.mixtures import Toy2D

    return Toy2D()


class ExactDenoiser:
    """A 'network' that is a closed-form denoiser, with the attribute the losses read."""

    def __init__(self, fn, sigma_data=0.5):
        self.fn, self.sigma_data = fn, sigma_data

    def __call__(self, x, sigma):
        return self.fn(x.double(), sigma.double()).to(x.dtype)


@pytest.fixture
def exact_denoiser():
    return ExactDenoiser


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine, two threads spinning against other
    jobs are ~10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a one-module plugin as pip would (a dist-info with entry points) and make ``registry`` re-read
    its entry points as a fresh process would; the registry is restored afterwards."""

    def install(registry, group: str, module: str, source: str, entry: str) -> None:
        (tmp_path / f"{module}.py").write_text(source)
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        for attr in ("_entries", "_origin"):
            monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))
        monkeypatch.setattr(registry, "_entry_points_loaded", False)

    return install
