import pytest

from tiwbench.registry import METHODS, Registry, RegistryError
from tiwbench.training.methods import Method


def test_entry_point_methods_are_found():
    names = METHODS.names()
    assert {"tiw_dsm", "dsm_ref", "dsm_obs", "iw_dsm", "tiw_dsm_nocorr", "oracle"} <= set(names)
    for n in ("dsm_ref", "dsm_obs", "iw_dsm", "tiw_dsm_nocorr", "oracle"):
        assert METHODS.origin(n).startswith("entry point baselines.")
    assert METHODS.origin("tiw_dsm") == "builtin"


def test_did_you_mean_on_a_bad_name():
    with pytest.raises(RegistryError) as e:
        METHODS.get("tiw_dms")
    msg = str(e.value)
    assert "Did you mean 'tiw_dsm'" in msg and "tiwbench ls methods" in msg and "\n" not in msg


def test_lazy_alias_and_base_class_check():
    reg = Registry("method", Method)
    reg.register("plain", "baselines.dsm_obs:DSMObs", aliases=("dsm",))
    assert reg.get("dsm").name == "dsm_obs"
    reg.register("wrong", "collections:OrderedDict")
    with pytest.raises(RegistryError, match="is not a Method"):
        reg.get("wrong")
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("dsm", "baselines.dsm_ref:DSMRef")


def test_decorator_registration():
    reg = Registry("thing")

    @reg.register("x")
    class X:
        pass

    assert reg.get("x") is X and "x" in reg and "y" not in reg
