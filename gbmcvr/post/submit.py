"""The submit stage: align runs, calibrate, ensemble, report (paper Table 5) and write the submission."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.atomic import atomic_path, write_json, write_text
from gbmcvr.compat import pyplot
from gbmcvr.errors import UserError
from gbmcvr.post import submission as sub
from gbmcvr.post.backtest import DayRates, PostInputs, post_process
from gbmcvr.post.ensemble import cross_fit
from gbmcvr.post.options import ENSEMBLES, SubmitOptions, parse_weights, split_calibration
from gbmcvr.post.shift import trend_rate
from gbmcvr.schema import TRUTH_ID, TRUTH_INSTALL

CLICK_COLUMNS = ("p_like", "p_ctr")


@dataclass
class Aligned:
    """Runs' predictions aligned on the same valid and test rows."""

    names: list[str]
    valid_ids: np.ndarray
    test_ids: np.ndarray
    valid: list[np.ndarray]
    test: list[np.ndarray]
    test_click: np.ndarray | None


def align(runs: dict[str, pl.DataFrame]) -> Aligned:
    """Check that every run predicts the same valid and test rows; return arrays in one row order."""
    names = list(runs)
    ref_name = names[0]
    out: dict[str, Any] = {"valid": [], "test": []}
    ids: dict[str, np.ndarray] = {}
    clicks = []
    for split in ("valid", "test"):
        ref = None
        for name in names:
            frame = runs[name].filter(pl.col("split") == split).sort("row_id")
            if frame.height == 0:
                raise UserError(f"run '{name}' has no {split} predictions (it cannot be calibrated or ensembled)")
            if ref is None:
                ref = frame["row_id"]
            elif frame.height != len(ref) or not frame["row_id"].equals(ref):
                raise UserError(
                    f"runs '{ref_name}' and '{name}' predict different {split} rows "
                    f"({len(ref):,} vs {frame.height:,}); train them on the same feature tables"
                )
            out[split].append(frame["p"].to_numpy())
            if split == "test":
                col = next((c for c in CLICK_COLUMNS if c in frame.columns), None)
                if col:
                    clicks.append(frame[col].to_numpy())
        ids[split] = ref.to_numpy()
    click = np.mean(clicks, axis=0) if clicks else None
    return Aligned(names, ids["valid"], ids["test"], out["valid"], out["test"], click)


def _row(name: str, kind: str, p: np.ndarray, y: np.ndarray, rate: float, extra: dict | None = None) -> dict:
    r = metrics.report(y, p, rate)
    return {
        "input": name,
        "kind": kind,
        **{k: r[k] for k in ("logloss", "nce", "auc", "calibration_ratio", "ece")},
        **(extra or {}),
    }


@dataclass
class SubmitResult:
    frame: pl.DataFrame
    table: list[dict]
    calibrators: dict[str, dict]
    weights: list[float]
    base_rate: float
    valid_plot: dict[str, np.ndarray]
    y_valid: np.ndarray
    ensemble: str = ""
    shift: dict[str, Any] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    history: DayRates | None = None
    target_day: int | None = None
    trend_rate: float | None = None
    trend_days: int = 7
    backtest: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None


def make_submission(
    aligned: Aligned,
    y_valid: np.ndarray,
    base_rate: float,
    opts: SubmitOptions,
    seed: int,
    truth: pl.DataFrame | None = None,
    history: DayRates | None = None,
    target_day: int | None = None,
    backtest: dict[str, Any] | None = None,
) -> SubmitResult:
    """Calibrate each run on valid, ensemble, shift to the test day, and build the Table-5-like rows."""
    history = history or DayRates(np.array([]), np.array([]))
    target_day = int(target_day) if target_day is not None else 0
    inputs = PostInputs(aligned.valid, y_valid, aligned.test, history, target_day)
    args = (opts.space, opts.folds, seed, opts.trend_days)
    done = post_process(inputs, opts.calibration, opts.weights, *args)
    singles = [
        post_process(PostInputs([v], y_valid, [t], history, target_day), opts.calibration, "equal", *args)
        for v, t in zip(aligned.valid, aligned.test, strict=True)
    ]
    base, shift = split_calibration(opts.calibration)
    named = opts.weights in ENSEMBLES
    weights_given = None if named else parse_weights(opts.weights, len(aligned.names))
    method = opts.weights if named else "simplex"
    cf_cal, cf_ens = cross_fit(aligned.valid, y_valid, base, weights_given, opts.space, opts.folds, seed, method)

    y_test = None
    if truth is not None:
        t = pl.DataFrame({TRUTH_ID: aligned.test_ids}).join(truth, on=TRUTH_ID, how="left", maintain_order="left")
        if t[TRUTH_INSTALL].null_count() == 0:
            y_test = t[TRUTH_INSTALL].to_numpy()
    table = []
    rows = []
    for i, name in enumerate(aligned.names):
        rows.append((name, "raw", aligned.valid[i], None, aligned.test[i]))
        if opts.calibration != "none":
            rows.append((name, opts.calibration, singles[i].valid, cf_cal[i], singles[i].target))
    label = "ensemble " + done.ensemble.label() + (f", then {shift}" if shift else "")
    rows.append(("ensemble", label, done.valid, cf_ens, done.target))
    for name, kind, pv, pcf, pt in rows:
        extra: dict[str, Any] = {"valid_mean": float(np.mean(pv)), "test_mean": float(np.mean(pt))}
        if pcf is not None:
            extra["crossfit_logloss"] = metrics.log_loss(y_valid, pcf)
        if y_test is not None:
            r = metrics.report(y_test, pt, base_rate)
            extra.update(
                {
                    "test_logloss": r["logloss"],
                    "test_nce": r["nce"],
                    "test_auc": r["auc"],
                    "test_calibration_ratio": r["calibration_ratio"],
                }
            )
        table.append(_row(name, kind, pv, y_valid, base_rate, extra))
    ens_test = done.target
    click = aligned.test_click if aligned.test_click is not None else ens_test
    frame = sub.build(aligned.test_ids, np.clip(click, 0.0, 1.0), ens_test)
    plot = {name: singles[i].members_valid[0] for i, name in enumerate(aligned.names)}
    plot["ensemble"] = done.valid
    means = {
        "valid_rate": float(np.mean(y_valid)),
        "valid_mean": float(np.mean(done.valid)),
        "test_mean_before_shift": float(np.mean(done.ensemble.apply(done.members_target))),
        "test_mean": float(np.mean(ens_test)),
    }
    if y_test is not None:
        means["test_rate"] = float(np.mean(y_test))
    trend = None
    if len(history.days):
        trend = trend_rate(history.days, history.rates, target_day, opts.trend_days)
    return SubmitResult(
        frame,
        table,
        {n: c.to_json() for n, c in zip(aligned.names, done.calibrators, strict=True)},
        done.ensemble.weights or done.ensemble.coef,
        base_rate,
        plot,
        y_valid,
        done.ensemble.label(),
        done.shift,
        means,
        history,
        target_day,
        trend,
        opts.trend_days,
        backtest,
    )


def markdown(result: SubmitResult, opts: SubmitOptions, truth_logloss: float | None) -> str:
    """The Table-5-like report: each run raw and calibrated, the ensemble, means, and the backtest evidence."""
    has_test = any("test_logloss" in r for r in result.table)
    head = "| input | variant | valid log loss | valid NCE | valid AUC | calibration | cross-fit log loss |"
    sep = "|---|---|---|---|---|---|---|"
    if has_test:
        head += " test log loss | test NCE | test AUC | test calibration |"
        sep += "---|---|---|---|"
    lines = [
        "# Submission report",
        "",
        f"NCE divides log loss by the entropy of base rate p = {result.base_rate:.4f} (install rate of every labelled train row, as `gbmcvr score` uses).",
        f"Calibration `{opts.calibration}` (valid-fitted part on the valid day), ensemble `{opts.weights}`; "
        f"cross-fit column: calibration and ensemble fitted on {opts.folds - 1} of {opts.folds} folds of valid rows, "
        "scored on the held-out fold (the test-day shift step does not act on valid rows).",
        "",
        head,
        sep,
    ]
    fmt = lambda v: "—" if v is None else f"{v:.5f}"  # noqa: E731
    for r in result.table:
        line = (
            f"| {r['input']} | {r['kind']} | {fmt(r['logloss'])} | {fmt(r['nce'])} | {fmt(r['auc'])} | "
            f"{r['calibration_ratio']:.3f} | {fmt(r.get('crossfit_logloss'))} |"
        )
        if has_test:
            line += (
                f" {fmt(r.get('test_logloss'))} | {fmt(r.get('test_nce'))} | {fmt(r.get('test_auc'))} |"
                f" {r.get('test_calibration_ratio', float('nan')):.3f} |"
            )
        lines.append(line)
    if truth_logloss is not None:
        lines += ["", f"Floor: the true probabilities' test log loss is {truth_logloss:.5f}."]
    lines += ["", f"Ensemble: {result.ensemble}", ""]
    lines += _means_lines(result)
    if result.backtest is not None:
        lines += _backtest_lines(result.backtest)
    if result.refit:
        lines += _refit_lines(result.refit)
    return "\n".join(lines)


def _refit_lines(evidence: dict[str, Any]) -> list[str]:
    lines = [
        "## Refit on the full plan (rehearsal evidence)",
        "",
        "Pooled over the rehearsal days' test-day rows; the refit is used only when it wins by more than two "
        "day-clustered standard errors.",
        "",
        "| model | test-day log loss with refit | without refit | gain ± SE | per-day gains | refit used |",
        "|---|---|---|---|---|---|",
    ]
    for kind, e in evidence.items():
        if e is None:
            lines.append(f"| {kind} | — | — | — | — | no (no evidence) |")
            continue
        used = "yes" if e.get("refit", e["with_refit"] < e["without_refit"]) else "no"
        gain = f"{e['gain']:+.5f} ± {e['se']:.5f}" if "gain" in e else "—"
        days = ", ".join(f"{d}: {g:+.5f}" for d, g in e.get("per_day", {}).items()) or "—"
        lines.append(f"| {kind} | {e['with_refit']:.5f} | {e['without_refit']:.5f} | {gain} | {days} | {used} |")
    return [*lines, ""]


def _means_lines(result: SubmitResult) -> list[str]:
    m = result.means
    lines = [
        "## What the test day will probably look like",
        "",
        f"- valid day: install rate {m['valid_rate']:.4f}, mean prediction {m['valid_mean']:.4f}",
        f"- test day: mean prediction {m['test_mean']:.4f} (before the shift step {m['test_mean_before_shift']:.4f})",
    ]
    if result.trend_rate is not None:
        lines.append(f"- test day's install rate extrapolated by the trend: {result.trend_rate:.4f}")
    if "test_rate" in m:
        lines.append(f"- test day's actual install rate (truth): {m['test_rate']:.4f}")
    if result.shift:
        detail = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.shift.items())
        lines.append(f"- shift step: {detail}")
    return [*lines, ""]


def _backtest_lines(bt: dict[str, Any]) -> list[str]:
    rows = sorted(bt["rows"], key=lambda r: r["logloss"])
    chosen = (bt["calibration"], bt["weights"])
    days = bt.get("days", [bt["target_day"]])
    day = ", ".join(map(str, days))
    simplest = tuple(bt.get("simplest", (bt["rows"][0]["calibration"], bt["rows"][0]["weights"])))
    base = next((r for r in bt["rows"] if (r["calibration"], r["weights"]) == simplest), bt["rows"][0])
    z = bt.get("significance", 2.0)
    if chosen == simplest:
        why = (
            f"it is the simplest candidate and no other beat it by more than {z:g} paired standard errors "
            f"over the rows of day(s) {day} (install rate {bt['test_rate']:.4f})"
        )
    else:
        why = (
            f"it beats the simplest candidate ({simplest[0]}, {simplest[1]}) by {base['gap']:.6f} log loss "
            f"(paired standard error {base['gap_se']:.6f}, more than {z:g} SE) over the rows of day(s) {day}"
        )
    lines = [
        f"## Backtest (fitted without the labels of day(s) {day}, scored on them)",
        "",
        f"Asked for calibration `{bt['asked']['calibration']}`, weights `{bt['asked']['weights']}`; "
        f"chosen: calibration `{chosen[0]}`, weights `{chosen[1]}`, because {why}.",
        "",
        "| calibration | weights | log loss | gap to best (± SE) | per day | NCE | calibration ratio | mean prediction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **chosen**" if (r["calibration"], r["weights"]) == chosen else ""
        gap = f"{r['gap']:.6f} ± {r['gap_se']:.6f}" if "gap" in r else "—"
        per_day = ", ".join(f"{d}: {v:.5f}" for d, v in r.get("per_day", {}).items()) or "—"
        lines.append(
            f"| {r['calibration']}{mark} | {r['weights']} | {r['logloss']:.5f} | {gap} | {per_day} | {r['nce']:.5f} | "
            f"{r['calibration_ratio']:.3f} | {r['mean_p']:.4f} |"
        )
    return [*lines, ""]


def rate_plot(result: SubmitResult, path: Path) -> None:
    """Install rate per labelled day, the trend's test-day rate and the submission's mean prediction."""
    plt = pyplot()

    hist = result.history
    fig, ax = plt.subplots(figsize=(8, 4))
    if hist is not None and len(hist.days):
        ax.plot(hist.days[:-1], hist.rates[:-1], marker="o", color="tab:blue", label="fit days")
        ax.plot(hist.days[-1:], hist.rates[-1:], marker="s", color="tab:green", linestyle="", label="valid day")
    if result.trend_rate is not None and hist is not None:
        k = result.trend_days
        start = int(np.sort(hist.days)[-min(k, len(hist.days))])
        ends = [start, result.target_day]
        line = [trend_rate(hist.days, hist.rates, d, k) for d in ends]
        ax.plot(
            ends, line, color="tab:orange", linestyle="--", marker="^", markevery=[1], label=f"trend (last {k} days)"
        )
    ax.plot(
        [result.target_day],
        [result.means["test_mean"]],
        marker="*",
        markersize=12,
        color="tab:red",
        linestyle="",
        label="submission mean",
    )
    if "test_rate" in result.means:
        ax.plot(
            [result.target_day],
            [result.means["test_rate"]],
            marker="x",
            color="black",
            linestyle="",
            label="test rate (truth)",
        )
    ax.set_xlabel("day")
    ax.set_ylabel("install rate")
    ax.set_title("Install rate per day and the test day's expectation")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reliability_bins(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-frequency bins of predictions: mean prediction, observed rate and row count of each."""
    order = np.argsort(p, kind="stable")
    return [
        {"mean_p": float(p[c].mean()), "rate": float(y[c].mean()), "rows": len(c)}
        for c in np.array_split(order, bins)
        if len(c)
    ]


def backtest_reliability_plot(backtest: dict[str, Any], path: Path) -> None:
    """Out-of-sample reliability: the chosen method on the rehearsal days it never fitted on, with bin counts."""
    plt = pyplot()
    bins = backtest["reliability"]
    fig, ax = plt.subplots(figsize=(6, 6))
    xs, ys = [b["mean_p"] for b in bins], [b["rate"] for b in bins]
    ax.plot(xs, ys, marker="o", label=f"{backtest['calibration']}, {backtest['weights']}")
    for b in bins:
        ax.annotate(f"{b['rows']:,}", (b["mean_p"], b["rate"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    top = max(max(xs), max(ys))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    ax.set_xlabel("mean predicted (rehearsal days, out of sample)")
    ax.set_ylabel("observed install rate")
    ax.set_title(f"Reliability on rehearsal day(s) {', '.join(map(str, backtest.get('days', [])))} (rows per bin)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reliability_plot(result: SubmitResult, path: Path, bins: int = 15) -> None:
    """Predicted vs observed install rate in equal-frequency bins of the valid rows."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, p in result.valid_plot.items():
        order = np.argsort(p)
        chunks = np.array_split(order, bins)
        ax.plot([p[c].mean() for c in chunks], [result.y_valid[c].mean() for c in chunks], marker="o", label=name)
    top = max(float(np.max(p)) for p in result.valid_plot.values())
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    ax.set_xlabel(f"mean predicted (valid, calibrated; in sample; {len(result.y_valid) // bins:,} rows per bin)")
    ax.set_ylabel("observed install rate")
    ax.set_title("Reliability diagram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_submission(
    out_dir: Path,
    name: str,
    result: SubmitResult,
    opts: SubmitOptions,
    test_ids: pl.Series,
    meta: dict[str, Any],
    truth_logloss: float | None,
    overwrite: bool,
) -> Path:
    """Validate, then write <name>.tsv, .json, .md, _reliability.png and _calibration.json, each atomically."""
    tsv = Path(out_dir) / f"{name}.tsv"
    if tsv.exists() and not overwrite:
        raise UserError(f"{tsv}: submission exists (choose another --name or pass --overwrite)")
    sub.validate(result.frame, test_ids, str(tsv))
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}_reliability.png") as tmp:
        reliability_plot(result, tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    with atomic_path(out_dir / f"{name}_rates.png") as tmp:
        rate_plot(result, tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    if result.backtest is not None and result.backtest.get("reliability"):
        with atomic_path(out_dir / f"{name}_backtest_reliability.png") as tmp:
            backtest_reliability_plot(result.backtest, tmp.with_suffix(".png"))
            tmp.with_suffix(".png").replace(tmp)
    write_json(out_dir / f"{name}_calibration.json", result.calibrators)
    write_json(
        out_dir / f"{name}.json",
        {
            **meta,
            "calibration": opts.calibration,
            "weights": result.weights,
            "ensemble": result.ensemble,
            "shift": result.shift,
            "means": result.means,
            "trend_rate": result.trend_rate,
            "backtest": result.backtest,
            "refit_evidence": result.refit,
            "space": opts.space,
            "base_rate": result.base_rate,
            "base_rate_source": "install rate of every labelled train row",
            "table": result.table,
            "truth_logloss": truth_logloss,
        },
    )
    write_text(out_dir / f"{name}.md", markdown(result, opts, truth_logloss))
    sub.write(tsv, result.frame, test_ids)
    return tsv
