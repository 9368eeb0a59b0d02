import json
import shutil

import numpy as np
import polars as pl
import pytest

from gbmcvr import stages
from gbmcvr.config import PipelineConfig
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.metrics import log_loss
from gbmcvr.post import backtest as bt
from gbmcvr.post.calibrate import prior_shift
from gbmcvr.post.options import CALIBRATIONS, ENSEMBLES, SubmitOptions
from gbmcvr.workdir import Workdir

SCORE = bt.score_candidates
SHIFT_W = 0.6  # the odds of installing on days 66 and 67 are 0.6 times those of the earlier days


def _inputs(rng, n=4000, w=SHIFT_W):
    true_v, true_t = rng.beta(2, 8, n), rng.beta(2, 8, n)
    y_valid = (rng.random(n) < true_v).astype(np.int8)
    y_target = (rng.random(n) < prior_shift(true_t, w)).astype(np.int8)
    valid = [np.clip(true_v + rng.normal(0, s, n), 0.01, 0.99) for s in (0.03, 0.06)]
    target = [np.clip(true_t + rng.normal(0, s, n), 0.01, 0.99) for s in (0.03, 0.06)]
    history = bt.DayRates(np.arange(45, 66), np.full(21, float(y_valid.mean())))
    return bt.PostInputs(valid, y_valid, target, history, 66), y_target


def test_auto_never_picks_a_method_that_loses_on_the_backtest():
    inputs, y = _inputs(np.random.default_rng(0))
    pairs = bt.candidates("auto", "auto", 2)
    assert len(pairs) == len(CALIBRATIONS) * len(ENSEMBLES)
    rows = bt.score_candidates(bt.candidate_predictions(inputs, pairs), y, 0.2)
    cal, weights = bt.choose(rows)
    chosen = next(r for r in rows if (r["calibration"], r["weights"]) == (cal, weights))
    assert chosen["logloss"] == min(r["logloss"] for r in rows)
    # the shift is a label shift, so a shift-em method wins, and brings the mean close to the day's rate
    assert cal.endswith("shift-em")
    assert abs(chosen["calibration_ratio"] - 1) < abs(
        next(r for r in rows if r["calibration"] == "none")["calibration_ratio"] - 1
    )


def test_choose_takes_the_first_of_equal_scores():
    rows = [
        {"calibration": c, "weights": "equal", "logloss": v} for c, v in (("none", 0.3), ("platt", 0.2), ("trend", 0.2))
    ]
    assert bt.choose(rows) == ("platt", "equal")


def test_candidate_predictions_match_post_process():
    inputs, _ = _inputs(np.random.default_rng(1), n=1500)
    preds = bt.candidate_predictions(inputs, [("isotonic+trend", "stacker"), ("platt+shift-em", "logit")])
    for (cal, weights), p in preds.items():
        assert np.array_equal(p, bt.post_process(inputs, cal, weights).target)


def _fake_workdir(root, seed=0, n=1500, flip_day66=False):
    """Raw store (days 45-66 labelled, 67 unlabeled), validate and backtest runs of two models, kept-aside labels."""
    rng = np.random.default_rng(seed)
    wd = Workdir(root)
    wd.raw.mkdir(parents=True)
    true = {d: rng.beta(2, 8, n) for d in range(45, 68)}
    y = {d: (rng.random(n) < (prior_shift(true[d], SHIFT_W) if d >= 66 else true[d])).astype(np.int8) for d in true}
    if flip_day66:
        y[66] = 1 - y[66]
    ids = {d: np.arange(n) + 10_000 * d for d in true}
    train = pl.concat(
        [pl.DataFrame({"f_0": ids[d], "f_1": d, "is_clicked": y[d], "is_installed": y[d]}) for d in range(45, 67)]
    )
    train.write_parquet(wd.raw / "train.parquet")
    pl.DataFrame({"f_0": ids[67], "f_1": 67}).write_parquet(wd.raw / "test.parquet")
    plan = wd.feature_plan("default", "backtest")
    plan.mkdir(parents=True)
    train.filter(pl.col("f_1") == 66).write_parquet(plan / "test_labels.parquet")
    for name, noise in (("a", 0.03), ("b", 0.06)):
        for run_plan, (valid_day, test_day) in (("validate", (66, 67)), ("backtest", (65, 66))):
            run = wd.run(name, run_plan)
            run.mkdir(parents=True)
            frames = [
                pl.DataFrame(
                    {"row_id": ids[d], "split": split, "p": np.clip(true[d] + rng.normal(0, noise, n), 0.01, 0.99)}
                )
                for split, d in (("valid", valid_day), ("test", test_day))
            ]
            pl.concat(frames).write_parquet(run / "preds.parquet")
            (run / "run.json").write_text(json.dumps({"kind": "e2e", "feature_set": "default"}))
            (run / "metrics.json").write_text(json.dumps({"base_rate": 0.2}))
    return wd


def _choose_recording(root, monkeypatch, flip=False):
    """Run the backtest choice; return what the scorer was given and the choice."""
    seen = {}

    def recording_score(preds, y_target, base_rate, days=None):
        seen["preds"] = preds
        return SCORE(preds, y_target, base_rate, days)

    monkeypatch.setattr(bt, "score_candidates", recording_score)
    wd = _fake_workdir(root, flip_day66=flip)
    opts = SubmitOptions(calibration="auto", weights="auto")
    return stages.backtest_choice(Context(wd, PipelineConfig()), ["a", "b"], opts=opts), seen


def test_backtest_predictions_do_not_depend_on_day66_labels(tmp_path, monkeypatch):
    choice, seen = _choose_recording(tmp_path / "w1", monkeypatch)
    flipped, seen_flipped = _choose_recording(tmp_path / "w2", monkeypatch, flip=True)
    assert seen["preds"].keys() == seen_flipped["preds"].keys()
    for key, p in seen["preds"].items():
        assert np.array_equal(p, seen_flipped["preds"][key]), key
    # the scores (and only they) change with the labels; the choice is their argmin
    for result in (choice, flipped):
        best = min(r["logloss"] for r in result["rows"])
        assert (
            next(
                r
                for r in result["rows"]
                if (r["calibration"], r["weights"]) == (result["calibration"], result["weights"])
            )["logloss"]
            == best
        )


def test_day_rates_of_the_backtest_stop_before_its_test_day(tmp_path):
    wd = _fake_workdir(tmp_path)
    rates = stages.day_rates(Context(wd, PipelineConfig()), "backtest")
    assert rates.days.tolist() == list(range(45, 66))
    assert stages.day_rates(Context(wd, PipelineConfig()), "validate").days.tolist() == list(range(45, 67))


def test_submit_auto_uses_the_backtest_choice_and_reports_it(tmp_path):
    wd = _fake_workdir(tmp_path)
    opts = SubmitOptions(calibration="auto", weights="auto", name="s")
    done = stages.submit(Context(wd, PipelineConfig()), ["a", "b"], opts=opts)
    tsv, result = done.tsv, done.result
    report = json.loads(tsv.with_suffix(".json").read_text())
    assert report["calibration"] == result.backtest["calibration"] and report["backtest"]["rows"]
    md = tsv.with_suffix(".md").read_text()
    assert "**chosen**" in md and "## Backtest" in md and "mean prediction" in md
    assert (wd.submissions / "s_rates.png").is_file()
    # day 67 carries the backtest day's label shift (odds x 0.6): the chosen shift step lowers the mean
    assert result.means["test_mean"] < result.means["test_mean_before_shift"]


def test_auto_without_backtest_runs_is_a_user_error(tmp_path):
    wd = _fake_workdir(tmp_path)
    shutil.rmtree(wd.models / "backtest" / "b")
    with pytest.raises(UserError, match="no backtest run for 'b'"):
        stages.submit(Context(wd, PipelineConfig()), ["a", "b"], opts=SubmitOptions(calibration="auto"))


def test_ensembles_fit_and_the_stacker_is_out_of_fold():
    inputs, _ = _inputs(np.random.default_rng(3), n=3000)
    for method in ENSEMBLES:
        done = bt.post_process(inputs, "none", method)
        assert done.target.shape == inputs.target[0].shape and np.all((done.target >= 0) & (done.target <= 1))
    stack = bt.post_process(inputs, "none", "stacker")
    in_sample = log_loss(inputs.y_valid, stack.ensemble.apply(stack.members_valid))
    assert log_loss(inputs.y_valid, stack.valid) > in_sample


def test_backtest_stands_in_the_unrefit_predictions_for_a_run_without_refit(tmp_path):
    wd = _fake_workdir(tmp_path)
    path = wd.run("a", "backtest") / "preds.parquet"
    preds = pl.read_parquet(path)
    preds.with_columns(pl.when(pl.col("split") == "test").then(0.5).alias("p_without_refit")).write_parquet(path)
    refit = stages.aligned_runs(wd, ["a", "b"], "backtest", {"a": True, "b": False})
    unrefit = stages.aligned_runs(wd, ["a", "b"], "backtest", {"a": False, "b": False})
    assert not np.all(refit.test[0] == 0.5) and np.all(unrefit.test[0] == 0.5)
    assert np.array_equal(refit.valid[0], unrefit.valid[0]) and np.array_equal(refit.test[1], unrefit.test[1])


def test_scores_carry_the_gap_to_the_best_by_hand():
    y = np.array([1, 0])
    rows = bt.score_candidates(
        {("none", "equal"): np.array([0.5, 0.5]), ("platt", "equal"): np.array([0.9, 0.1])}, y, 0.5
    )
    by = {r["calibration"]: r for r in rows}
    assert by["none"]["logloss"] == pytest.approx(np.log(2)) and by["platt"]["logloss"] == pytest.approx(-np.log(0.9))
    assert by["platt"]["gap"] == 0 and by["none"]["gap"] == pytest.approx(np.log(2) + np.log(0.9))
    assert by["none"]["gap_se"] == pytest.approx(0, abs=1e-12)
    assert bt.choose(rows) == ("platt", "equal")


def test_a_choice_that_wins_by_less_than_two_standard_errors_is_not_taken():
    rng = np.random.default_rng(5)
    y = (rng.random(4000) < 0.2).astype(np.int8)
    base = np.clip(0.2 + rng.normal(0, 0.02, y.size), 0.01, 0.99)
    noisy = np.clip(base + rng.normal(0, 0.002, y.size), 0.01, 0.99)  # a tiny, noise-sized difference
    rows = bt.score_candidates({("none", "equal"): base, ("platt", "equal"): noisy}, y, 0.2)
    by = {r["calibration"]: r for r in rows}
    if by["platt"]["logloss"] < by["none"]["logloss"]:
        assert by["none"]["gap"] < 2 * by["none"]["gap_se"]
    assert bt.decide(rows) == ("none", "equal")
    better = np.where(y == 1, 0.6, 0.1)  # a real improvement, many standard errors
    rows = bt.score_candidates({("none", "equal"): base, ("platt", "equal"): better}, y, 0.2)
    assert bt.decide(rows) == ("platt", "equal")
    assert rows[0]["gap"] > 2 * rows[0]["gap_se"]


def test_a_calibration_that_helps_on_one_day_and_hurts_on_another_is_not_taken():
    """Row-level SE would call the pooled gain significant; days that disagree widen the day-clustered SE."""
    rng = np.random.default_rng(7)
    n = 3000
    y = (rng.random(2 * n) < 0.2).astype(np.int8)
    days = np.repeat([64, 65], n)
    base = np.full(2 * n, 0.2)
    # a level correction that wins clearly on day 64 and loses on day 65 by a bit less
    shifted = np.where(days == 64, np.where(y == 1, 0.35, 0.15), np.where(y == 1, 0.12, 0.22))
    pooled = {("none", "equal"): base, ("scaling", "equal"): shifted}
    rows = bt.score_candidates(pooled, y, 0.2, days)
    none = rows[0]
    diff = -(y * np.log(base) + (1 - y) * np.log1p(-base)) + (y * np.log(shifted) + (1 - y) * np.log1p(-shifted))
    row_se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert none["gap"] == pytest.approx(diff.mean()) and none["gap"] > 2 * row_se  # "significant" by rows
    assert none["gap_se"] > 2 * row_se and bt.decide(rows) == ("none", "equal")  # not by days
    assert bt.decide(bt.score_candidates(pooled, y, 0.2)) == ("scaling", "equal")  # one pooled day: taken
