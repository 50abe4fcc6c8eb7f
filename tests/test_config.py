import pytest

from tiwbench.config import ConfigError, TrainConfig, from_dict, load_suite, resolve_budget


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


BASE = "name: t\ndatasets: [toy2d]\nmethods: [tiw_dsm]\nref_fracs: [0.05]\nseeds: [0]\n"


def test_shipped_suites_load():
    for name in ("ref_size", "ref_size_digits", "smoke", "toy_exact"):
        s = load_suite(name)
        for ds in s.datasets:
            for profile in ("smoke", "default", "paper"):
                resolve_budget(s, profile, ds)


def test_ref_size_defaults_leave_digits_to_its_own_suite():
    """ref_size's default datasets are the converged ones; digits_lt (unconverged at the default CPU profile,
    docs/results.md) is ref_size_digits, whose cells are ref_size's digits_lt cells under another name."""
    from tiwbench.config import profile_metrics

    ref, digits = load_suite("ref_size"), load_suite("ref_size_digits")
    assert ref.datasets == ["gmm", "toy2d"] and digits.datasets == ["digits_lt"]
    assert "unconverged" in digits.description
    assert (digits.methods, digits.ref_fracs, digits.seeds, digits.ratio) == (ref.methods, ref.ref_fracs, ref.seeds,
                                                                              ref.ratio)
    for profile in ("smoke", "default", "paper"):
        assert resolve_budget(digits, profile, "digits_lt") == resolve_budget(ref, profile, "digits_lt")
        assert profile_metrics(digits, profile, "digits_lt") == profile_metrics(ref, profile, "digits_lt")


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, BASE + "seedz: [1]\n")
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert "'seedz'" in str(e.value) and path in str(e.value) and "did you mean 'seeds'" in str(e.value)


def test_unknown_nested_key_and_bad_type(tmp_path):
    with pytest.raises(ConfigError, match=r"profiles\.default\.toy2d\.train: unknown key 'stpes'"):
        load_suite(_write(tmp_path, BASE + "profiles: {default: {toy2d: {train: {stpes: 3}}}}\n"))
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        load_suite(_write(tmp_path, BASE + "profiles: {default: {toy2d: {train: {steps: many}}}}\n"))
    with pytest.raises(ConfigError, match="not in"):
        load_suite(_write(tmp_path, BASE.replace("[0.05]", "[1.5]")))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(_write(tmp_path, BASE + "profiles: {\n"))


def test_from_dict_rejects_bool_for_int_and_keeps_base():
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"steps": True}, "x")
    base = TrainConfig(steps=7)
    assert from_dict(TrainConfig, {"lr": 1}, "x", base).steps == 7


def test_unknown_suite_name_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'ref_size'"):
        load_suite("ref_sise")


def test_every_paper_profile_checkpoints_and_image_paper_profiles_agree():
    from tiwbench.config import available_suites, profile_metrics

    image: dict = {}
    for name in available_suites():
        suite = load_suite(name)
        for ds in suite.profiles.get("paper", {}):
            if ds == "all":
                continue
            budget, _ = resolve_budget(suite, "paper", ds)
            assert budget.train.checkpoint_every > 0, (name, ds)
            if ds in ("cifar10_lt", "ffhq_gender"):
                assert "fid" in profile_metrics(suite, "paper", ds), (name, ds)
                assert budget.eval.fid_ref_samples == 0, (name, ds)  # the full reference set
                image[(name, ds)] = (budget.train.amp, budget.train.channels_last, budget.train.compile,
                                     budget.sample.dtype, budget.ratio.channels)
    assert {k[1] for k in image} == {"cifar10_lt", "ffhq_gender"} and len(set(image.values())) == 1, image


def test_profile_metrics_override_the_suites(tmp_path):
    from tiwbench.sweep.runner import expand

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ndatasets: [toy2d]\nmethods: [dsm_obs]\nref_fracs: [0.1]\nseeds: [0]\nmetrics: [fd]\n"
                 "profiles:\n  paper:\n    toy2d: {metrics: [fd, bias]}\n")
    assert [c.metrics for c in expand(load_suite(str(p)), "paper")] == [["fd", "bias"]]
    assert [c.metrics for c in expand(load_suite(str(p)), "default")] == [["fd"]]
    p.write_text(p.read_text().replace("[fd, bias]", "fd"))
    with pytest.raises(ConfigError, match="metrics"):
        load_suite(str(p))
