"""The submit stage: align runs, calibrate, ensemble, report (paper Table 5) and write the submission."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.atomic import atomic_path, write_json, write_text
from gbmcvr.errors import UserError
from gbmcvr.post import submission as sub
from gbmcvr.post.calibrate import Calibrator
from gbmcvr.post.ensemble import combine, cross_fit, fit_weights
from gbmcvr.post.options import SubmitOptions, parse_weights
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


def make_submission(
    aligned: Aligned,
    y_valid: np.ndarray,
    base_rate: float,
    opts: SubmitOptions,
    seed: int,
    truth: pl.DataFrame | None = None,
) -> SubmitResult:
    """Calibrate each run on valid, ensemble, and build the Table-5-like rows (valid, cross-fit, test)."""
    weights_given = parse_weights(opts.weights, len(aligned.names))
    cals = [Calibrator(opts.calibration).fit(p, y_valid) for p in aligned.valid]
    cal_valid = [c.transform(p) for c, p in zip(cals, aligned.valid, strict=True)]
    cal_test = [c.transform(p) for c, p in zip(cals, aligned.test, strict=True)]
    weights = weights_given if weights_given is not None else fit_weights(cal_valid, y_valid, opts.space)
    ens_valid = combine(cal_valid, weights, opts.space)
    ens_test = np.clip(combine(cal_test, weights, opts.space), 0.0, 1.0)
    cf_cal, cf_ens = cross_fit(aligned.valid, y_valid, opts.calibration, weights_given, opts.space, opts.folds, seed)

    y_test = None
    if truth is not None:
        t = pl.DataFrame({TRUTH_ID: aligned.test_ids}).join(truth, on=TRUTH_ID, how="left", maintain_order="left")
        if t[TRUTH_INSTALL].null_count() == 0:
            y_test = t[TRUTH_INSTALL].to_numpy()
    table = []
    wnote = "fitted on valid" if weights_given is None else "fixed"
    rows = []
    for i, name in enumerate(aligned.names):
        rows.append((name, "raw", aligned.valid[i], None, aligned.test[i]))
        if opts.calibration != "none":
            rows.append((name, f"{opts.calibration}", cal_valid[i], cf_cal[i], cal_test[i]))
    label = "ensemble " + ", ".join(f"{w:.3f}" for w in weights) + f" ({wnote}, {opts.space})"
    rows.append(("ensemble", label, ens_valid, cf_ens, ens_test))
    for name, kind, pv, pcf, pt in rows:
        extra: dict[str, Any] = {}
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
    click = aligned.test_click if aligned.test_click is not None else ens_test
    frame = sub.build(aligned.test_ids, np.clip(click, 0.0, 1.0), ens_test)
    plot = {name: cal_valid[i] for i, name in enumerate(aligned.names)}
    plot["ensemble"] = ens_valid
    return SubmitResult(
        frame,
        table,
        {n: c.to_json() for n, c in zip(aligned.names, cals, strict=True)},
        weights,
        base_rate,
        plot,
        y_valid,
    )


def markdown(result: SubmitResult, opts: SubmitOptions, truth_logloss: float | None) -> str:
    """The Table-5-like report: each run raw and calibrated, and the ensemble."""
    has_test = any("test_logloss" in r for r in result.table)
    head = "| input | variant | valid log loss | valid NCE | valid AUC | calibration | cross-fit log loss |"
    sep = "|---|---|---|---|---|---|---|"
    if has_test:
        head += " test log loss | test NCE | test AUC |"
        sep += "---|---|---|"
    lines = [
        "# Submission report",
        "",
        f"NCE divides log loss by the entropy of base rate p = {result.base_rate:.4f} (install rate of the fit window).",
        f"Calibration `{opts.calibration}` fitted on the valid day; cross-fit column: calibration and weights "
        f"fitted on {opts.folds - 1} of {opts.folds} folds of valid rows, scored on the held-out fold.",
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
            line += f" {fmt(r.get('test_logloss'))} | {fmt(r.get('test_nce'))} | {fmt(r.get('test_auc'))} |"
        lines.append(line)
    if truth_logloss is not None:
        lines += ["", f"Floor: the true probabilities' test log loss is {truth_logloss:.5f}."]
    lines += ["", f"Ensemble weights: {', '.join(f'{w:.4f}' for w in result.weights)}", ""]
    return "\n".join(lines)


def reliability_plot(result: SubmitResult, path: Path, bins: int = 15) -> None:
    """Predicted vs observed install rate in equal-frequency bins of the valid rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, p in result.valid_plot.items():
        order = np.argsort(p)
        chunks = np.array_split(order, bins)
        ax.plot([p[c].mean() for c in chunks], [result.y_valid[c].mean() for c in chunks], marker="o", label=name)
    top = max(float(np.max(p)) for p in result.valid_plot.values())
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    ax.set_xlabel("mean predicted (valid, calibrated)")
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
    write_json(out_dir / f"{name}_calibration.json", result.calibrators)
    write_json(
        out_dir / f"{name}.json",
        {
            **meta,
            "calibration": opts.calibration,
            "weights": result.weights,
            "space": opts.space,
            "base_rate": result.base_rate,
            "base_rate_source": "install rate of the fit window",
            "table": result.table,
            "truth_logloss": truth_logloss,
        },
    )
    write_text(out_dir / f"{name}.md", markdown(result, opts, truth_logloss))
    sub.write(tsv, result.frame, test_ids)
    return tsv
