"""Model parameters checked when the config or a parameters file is read, before any work: LightGBM's and
CatBoost's own names and aliases, ranges, types, GPU devices; each refusal is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gbmcvr.errors import UserError
from gbmcvr.gbm.params import gbm_config, read_params_file
from gbmcvr.models.cb import cb_config, flat
from tests.factories import run_cli

GPU_LESS = "no GPU on this machine"


def _show_space(root: Path, toml: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Read the config through the CLI (the cheapest command that reads it) and return its outcome."""
    (root / "gbmcvr.toml").write_text(toml)
    return run_cli(["tune", "e2e", "--show-space", "--workdir", root], capsys)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[gbm.e2e]\nlearning_rate = 0\n", ("[gbm].e2e", "learning_rate", "positive")),
        ("[gbm.e2e]\nlearning_rate = -0.1\n", ("learning_rate", "positive")),
        ("[gbm.e2e]\nnum_leaves = 1\n", ("num_leaves", "at least 2")),
        ('[gbm.e2e]\nnum_leaves = "many"\n', ("num_leaves", "integer", "many")),
        ("[gbm]\nnum_boost_round = 0\n", ("num_boost_round", "at least 1")),
        ("[gbm.ts_like]\nbagging_fraction = 1.5\n", ("[gbm].ts_like", "bagging_fraction", "(0, 1]")),
        ("[gbm.e2e]\nsubsample = 0\n", ("subsample", "(0, 1]")),
        ("[gbm.e2e]\nnum_leafs = 8\n", ("unknown LightGBM parameter 'num_leafs'", "did you mean 'num_leaves'")),
        ("[gbm.e2e]\ncolsample_bytree = 0.5\nfeature_fraction = 0.6\n", ("same LightGBM parameter", "give it once")),
        ("[gbm.e2e]\nn_estimators = 10\n", ("n_estimators", "num_boost_round in [gbm]")),
        ('[gbm.e2e]\nobjective = "nope"\n', ("LightGBM refused the parameters", "nope")),
        ("[mtdm]\nlearning_rate = -0.001\n", ("[mtdm]", "learning_rate", "positive")),
        ("[mtdm]\ndropout = 1.0\n", ("dropout", "[0, 1)")),
        ("[mtdm]\ndropout = -0.1\n", ("dropout", "[0, 1)")),
        ("[mtdm]\nepochs = 0\n", ("epochs", "at least 1")),
        ("[mtdm]\nbatch_size = 0\n", ("batch_size", "at least 1")),
        ("seed = -1\n", ("seed", "[0, 2^31)")),
        ("seed = 4294967296\n", ("seed", "[0, 2^31)")),
        ("[cb]\nlearning_rate = 0\n", ("[cb]", "learning_rate", "positive")),
        ("[cb]\ndepht = 4\n", ("unknown CatBoost parameter 'depht'", "did you mean 'depth'")),
        ("[cb]\neta = 0.1\nlearning_rate = 0.2\n", ("same CatBoost parameter", "give it once")),
        ("[cb]\nrandom_state = 3\n", ("random_state", "top-level seed")),
        ('[cb]\ngrow_policy = "nope"\n', ("CatBoost refused the parameters", "nope")),
        ("[cb]\nsubsample = 2.0\n", ("CatBoost refused the parameters", "Subsample")),
        (
            '[tune.e2e]\nsubsample = { type = "float", low = 0.5, high = 1.0 }\n',
            ("[tune.e2e]", "same LightGBM parameter", "named 'bagging_fraction'"),
        ),
        ('[tune.e2e]\nnum_leafs = { type = "int", low = 4, high = 8 }\n', ("did you mean 'num_leaves'",)),
        ('[tune.ts-like]\nnum_leaves = { type = "int", low = 1, high = 8 }\n', ("num_leaves", "at least 2")),
        ('[tune.cb]\neta = { type = "float", low = 0.01, high = 0.1 }\n', ("[tune.cb]", "same CatBoost parameter")),
    ],
)
def test_refused_when_the_config_is_read(tmp_path, capsys, toml, words):
    code, out, err = _show_space(tmp_path, toml, capsys)
    assert code == 2, err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "[tune.e2e]" not in out


def test_lightgbm_names_and_aliases_accepted_and_normalised():
    raw = {
        "e2e": {
            "colsample_bytree": 0.5,
            "subsample": 0.9,
            "interaction_constraints": [[0, 1]],
            "device_type": "cpu",
            "extra_trees": True,
        }
    }
    cfg = gbm_config(raw, "[gbm]")
    assert cfg.stage_params["e2e"] == {
        "feature_fraction": 0.5,
        "bagging_fraction": 0.9,
        "interaction_constraints": [[0, 1]],
        "device_type": "cpu",
        "extra_trees": True,
    }
    # an alias replaces the default it names, not a second value beside it
    params = cfg.params("e2e", 7)
    assert params["feature_fraction"] == 0.5 and "colsample_bytree" not in params and params["seed"] == 7


def test_alias_dimension_replaces_the_default_in_trials():
    """A space dimension named by an alias reaches LightGBM under its canonical name, over the default."""
    from gbmcvr.gbm.params import canonical_names

    cfg = gbm_config({}, "[gbm]")
    params = cfg.params("e2e", 1, canonical_names({"sub_feature": 0.4}))
    assert params["feature_fraction"] == 0.4 and "sub_feature" not in params


def test_per_feature_parameters_are_not_refused_for_their_length():
    """The probe has as many features as a per-feature parameter names; the real count is checked in training."""
    cfg = gbm_config({"e2e": {"monotone_constraints": [1, -1, 0, 0, 0], "feature_contri": "1,1,1,1,1"}}, "[gbm]")
    assert cfg.stage_params["e2e"]["monotone_constraints"] == [1, -1, 0, 0, 0]
    with pytest.raises(UserError, match="LightGBM refused the parameters: .*monotone_constraints"):
        gbm_config({"e2e": {"monotone_constraints": [1, 0], "feature_contri": [1, 1, 1]}}, "[gbm]")


def _has_gpu(module: str) -> bool:
    if module == "lightgbm":
        from gbmcvr.gbm.params import probe

        return probe({"device_type": "gpu"}) is None
    from catboost.utils import get_gpu_device_count

    return get_gpu_device_count() > 0


@pytest.mark.parametrize("device", ["gpu", "cuda", "GPU"])
def test_gpu_lightgbm_refused_in_one_line_without_a_gpu(device):
    if device == "gpu" and _has_gpu("lightgbm"):
        pytest.skip("this machine has a GPU LightGBM can use")
    if device == "GPU":
        if _has_gpu("catboost"):
            pytest.skip("this machine has a GPU CatBoost can use")
        with pytest.raises(UserError, match='task_type = "GPU" needs a GPU'):
            cb_config({"task_type": "GPU"}, "[cb]")
        return
    with pytest.raises(UserError, match=f'device_type = "{device}" needs a GPU') as info:
        gbm_config({"e2e": {"device": device}}, "[gbm]")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"num_leaves": "many"}, ("num_leaves", "integer", "many")),
        ({"learning_rate": 0.0}, ("learning_rate", "positive")),
        ({"bagging_fraction": 0}, ("bagging_fraction", "(0, 1]")),
        ({"params": {"leaves": 3}}, ("unknown LightGBM parameter 'leaves'",)),
        ({"num_leaves": None}, ("num_leaves", "got None")),
    ],
)
def test_params_file_refused_when_read(tmp_path, params, words):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(params))
    with pytest.raises(UserError) as info:
        read_params_file(path, ("e2e",))
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)


def test_params_file_integral_floats_become_integers(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"params": {"num_leaves": 31.0, "sub_row": 0.5}}))
    assert read_params_file(path, ("e2e",)) == {"e2e": {"num_leaves": 31, "bagging_fraction": 0.5}}


def test_catboost_own_names_and_aliases():
    cfg = cb_config({"eta": 0.1, "max_depth": 4, "od_wait": 7, "grow_policy": "Lossguide", "max_leaves": 8}, "[cb]")
    assert (cfg.learning_rate, cfg.depth, cfg.early_stopping_rounds) == (0.1, 4, 7)
    assert cfg.extra == {"grow_policy": "Lossguide", "max_leaves": 8}
    assert cb_config(flat(cfg), "[cb]") == cfg
    assert flat(cb_config({}, "[cb]")) == {k: v for k, v in flat(cfg).items() if k not in cfg.extra} | {
        "learning_rate": 0.08,
        "depth": 6,
        "early_stopping_rounds": 100,
    }


@pytest.mark.parametrize("command", ["synth", "tune"])
def test_negative_seed_option_refused(tmp_path, capsys, command):
    args = [tmp_path / "out", "--scale", "0.01"] if command == "synth" else ["e2e", "--workdir", tmp_path]
    code, _, err = run_cli([command, *args, "--seed", "-1"], capsys)
    assert code == 2 and "--seed" in err
    assert not (tmp_path / "out").exists()


def test_catboost_errors_during_training_are_one_line():
    import catboost

    from gbmcvr.models.cb import catboost_errors

    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    model = catboost.CatBoostClassifier(iterations=2, grow_policy="nope", verbose=False, allow_writing_files=False)
    with pytest.raises(UserError, match="^CatBoost refused the parameters: Key 'nope'") as info, catboost_errors():
        model.fit(x, np.arange(20) % 2)
    assert "\n" not in str(info.value) and ".cpp" not in str(info.value)


def test_torch_value_errors_during_training_are_one_line():
    import torch

    from gbmcvr.deep.params import torch_errors

    with pytest.raises(UserError, match="^PyTorch refused the parameters: Invalid learning rate"), torch_errors():
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=-1.0)
    with pytest.raises(ValueError, match="not from torch"), torch_errors():
        raise ValueError("not from torch")
