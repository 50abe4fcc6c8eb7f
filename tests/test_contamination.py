"""Split composition: a contaminated reference set, and the toy oracle set's own stream."""

import pytest
import torch

from tiwbench.data.base import DataError
from tiwbench.data.digits import DigitsLT
from tiwbench.data.mixtures import Toy2D


def test_toy_oracle_set_does_not_change_with_ref_frac_or_contamination():
    ds = Toy2D()
    a = ds.split(0.05, seed=3)
    for other in (ds.split(0.5, seed=3), Toy2D(contamination=0.4).split(0.25, seed=3)):
        assert torch.equal(a.oracle, other.oracle) and torch.equal(a.bias, other.bias)
    assert not torch.equal(a.oracle, ds.split(0.05, seed=4).oracle)
    assert not torch.equal(a.oracle[: len(a.ref)], a.ref)  # not the reference draw's stream either


def test_toy_contaminated_reference_composition():
    n_bias, frac, c = 4000, 1.0, 0.5  # 4000 reference points, 2000 of them from p_bias
    clean = Toy2D(n_bias=n_bias).split(frac, seed=0)
    dirty = Toy2D(n_bias=n_bias, contamination=c).split(frac, seed=0)
    assert len(dirty.ref) == len(clean.ref) == 4000
    ds = Toy2D()
    for part, weights in ((dirty.ref_labels[:2000], ds.data_mixture.weights),
                          (dirty.ref_labels[2000:], ds.bias_mixture.weights)):
        props = torch.bincount(part, minlength=8).double() / len(part)
        se = (weights * (1 - weights) / len(part)).sqrt()
        assert torch.all((props - weights).abs() < 4 * se + 1e-3), (props, weights)


def test_digits_contaminated_reference_class_counts():
    """ref_frac 0.1 of 600 → 60 reference images; contamination 0.5 → 30 balanced (3 a class) and 30
    apportioned by ρ^{k/9} with ρ = 0.1 (by hand: 7, 6, 4, 3, 3, 2, 2, 1, 1, 1, largest remainders)."""
    ds = DigitsLT(contamination=0.5)
    bias_idx, ref_idx = ds.split_indices(0.1, seed=0)
    _, labels = ds.data()
    counts = torch.bincount(labels[ref_idx], minlength=10).tolist()
    assert counts == [10, 9, 7, 6, 6, 5, 5, 4, 4, 4]
    assert not set(bias_idx.tolist()) & set(ref_idx.tolist())  # still disjoint from D_bias
    clean = torch.bincount(labels[DigitsLT().split_indices(0.1, seed=0)[1]], minlength=10).tolist()
    assert clean == [6] * 10


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_contamination_outside_unit_interval_is_refused(value):
    for cls in (Toy2D, DigitsLT):
        with pytest.raises(DataError, match="contamination must be in"):
            cls(contamination=value)
