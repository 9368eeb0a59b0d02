"""The pipeline config: the `gbmcvr init` template is a valid config, with and without its commented keys."""

from __future__ import annotations

import re
import tomllib

from gbmcvr.config import DEFAULT_TOML, config_from_dict


def test_init_template_is_a_valid_config():
    cfg = config_from_dict(tomllib.loads(DEFAULT_TOML), "init")
    assert cfg.models == ("e2e", "ts") and cfg.submit.weights == "simplex"


def test_init_template_states_the_defaults():
    """Every value the template sets is the default of its typed section: defaults live in one place."""
    template = config_from_dict(tomllib.loads(DEFAULT_TOML), "init")
    defaults = config_from_dict({}, "init")
    assert template == defaults


def test_commented_scalar_keys_of_the_template_are_valid_when_uncommented():
    lines = []
    for line in DEFAULT_TOML.splitlines():
        keys = "refit|dask|pruner|threads_per_worker|num_boost_round|device|epochs|ssl_weight|pretrain_epochs"
        match = re.match(rf"# (\[(gbm|tune|xgb|tfm|mtdm)\]|({keys}) = .*)$", line.split("  ")[0])
        lines.append(line[2:] if match else line)
    cfg = config_from_dict(tomllib.loads("\n".join(lines)), "init, uncommented")
    assert cfg.section("gbm").dask == "tcp://scheduler:8786"
    assert (cfg.tune.pruner, cfg.tune.threads_per_worker) == ("median", 0)
    assert cfg.section("xgb").device == "cpu" and cfg.section("tfm").config.pretrain_epochs == 0


def test_select_is_a_switch_or_a_table_of_options():
    """`select = true` keeps the default options; a `[select]` table switches selection on with its options
    (unless `enabled = false`), and the effective config round-trips."""
    from gbmcvr.config import effective_toml
    from gbmcvr.fe.select_options import SelectOptions

    plain = config_from_dict({"select": True, "seed": 7}, "t")
    assert plain.select and plain.selection == SelectOptions(seed=7)
    table = config_from_dict({"select": {"rehearsal_days": 5, "weighting": "density"}}, "t")
    assert table.select and (table.selection.rehearsal_days, table.selection.weighting) == (5, "density")
    assert not config_from_dict({"select": {"enabled": False}}, "t").select
    again = config_from_dict(tomllib.loads(effective_toml(table)), "round trip")
    assert again.selection == table.selection and again.select
