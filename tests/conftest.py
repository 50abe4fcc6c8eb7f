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
