"""Command-line conventions: version, -h, choices, literal help text, the effective config, light imports."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from gbmcvr import __version__
from gbmcvr.config import config_from_dict, effective_toml, load_config
from tests.factories import run_cli


def test_version_and_short_help(capsys) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"gbmcvr {__version__}"
    code, out, _ = run_cli(["train", "-h"], capsys)
    assert code == 0 and "--run-id" in out
    assert "[gbm] dask" in out  # help text is shown literally, not eaten as markup


def test_choices_are_checked_by_the_parser(capsys) -> None:
    code, _, err = run_cli(["train", "e2e", "--device", "tpu"], capsys)
    assert code == 2 and "'tpu' is not one of" in err
    code, _, err = run_cli(["features", "--plan", "fulll"], capsys)
    assert code == 2 and "'fulll' is not one of" in err


def test_the_command_line_imports_no_heavy_library() -> None:
    """`gbmcvr --help` answers at once: Polars, LightGBM, Optuna, torch load only in the commands using them."""
    code = (
        "import sys, gbmcvr.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'polars', 'lightgbm', 'optuna', 'torch', 'numpy', 'sklearn', 'matplotlib', 'catboost'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_effective_config_round_trips(tmp_path, capsys) -> None:
    (tmp_path / "gbmcvr.toml").write_text("seed = 7\n[gbm]\nnum_boost_round = 40\n[gbm.e2e]\nnum_leaves = 15\n")
    code, out, err = run_cli(["config", "--workdir", tmp_path], capsys)
    assert code == 0, err
    parsed = tomllib.loads(out)
    assert parsed["seed"] == 7 and parsed["gbm"]["num_boost_round"] == 40
    assert parsed["gbm"]["e2e"]["num_leaves"] == 15 and parsed["gbm"]["ts_like"]["num_leaves"] == 63
    assert parsed["mtdm"]["epochs"] == 8 and "iterations" in parsed["cb"]
    again = config_from_dict(parsed, "printed")
    original = load_config(None, tmp_path / "gbmcvr.toml")
    assert effective_toml(again).splitlines()[1:] == effective_toml(original).splitlines()[1:]


def test_importing_and_plotting_leave_the_process_alone(tmp_path) -> None:
    """No backend switch and no logging change on import or when a report plot is written."""
    code = (
        "import matplotlib, logging; matplotlib.use('svg'); "
        "import gbmcvr.stages, gbmcvr.cli; from gbmcvr.compat import pyplot; "
        "plt = pyplot(); fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, 1]); "
        f"fig.savefig(r'{tmp_path / 'x.png'}'); plt.close(fig); "
        "import optuna; print(matplotlib.get_backend(), optuna.logging.get_verbosity())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    backend, verbosity = done.stdout.split()
    assert backend == "svg"
    assert int(verbosity) == 20  # optuna's own default (INFO) is untouched
    assert (tmp_path / "x.png").stat().st_size > 0


def test_the_default_feature_set_pastes_into_gbmcvr_toml(tmp_path, capsys) -> None:
    from gbmcvr.fe.spec import default_spec
    from gbmcvr.stages import feature_spec_of

    code, out, _ = run_cli(["features", "--show-default"], capsys)
    assert code == 0
    (tmp_path / "gbmcvr.toml").write_text(out)
    cfg = load_config(None, tmp_path / "gbmcvr.toml")
    assert feature_spec_of(cfg) == default_spec(cfg.load_profile())


def test_quiet_and_verbose(tmp_path, capsys) -> None:
    """-q keeps only warnings and errors; -v adds debug lines (the work directory and config in use)."""
    code, _, err = run_cli(["-v", "config", "--workdir", tmp_path], capsys)
    assert code == 0 and f"work directory {tmp_path.resolve()}" in err
    code, _, err = run_cli(["-q", "synth", tmp_path / "d", "--scale", "0.001"], capsys)
    assert code == 0 and "generating" not in err
    code, _, err = run_cli(["synth", tmp_path / "d2", "--scale", "0.001"], capsys)
    assert code == 0 and "generating" in err
