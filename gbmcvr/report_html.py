"""One HTML page per work directory (`reports/index.html`): the analysis, the feature selection, every run
(scores, importance, learning curve), and each submission (backtest table and choice, reliability, daily
rates), linked by relative paths so the folder can be copied or zipped as it is."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from gbmcvr.atomic import atomic_path, write_text
from gbmcvr.compat import pyplot
from gbmcvr.run_history import table as run_table
from gbmcvr.workdir import Workdir

REPORTS = "reports"


def _rel(path: Path, page: Path) -> str:
    return os.path.relpath(path, page.parent).replace(os.sep, "/")


def _link(path: Path, page: Path, text: str | None = None) -> str:
    return f'<a href="{html.escape(_rel(path, page))}">{html.escape(text or path.name)}</a>'


def _image(path: Path, page: Path, alt: str) -> str:
    return f'<img src="{html.escape(_rel(path, page))}" alt="{html.escape(alt)}" style="max-width:100%">'


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.5f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def learning_curves(run_dir: Path, out: Path) -> Path | None:
    """A PNG of the valid-day metric per boosting round (MTDM: per epoch) of one run, if it kept one."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    curves = {k: v for k, v in (metrics.get("learning_curve") or {}).items() if v}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=stage)
    ax.set_xlabel("round")
    ax.set_ylabel("valid log loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def write_report(wd: Workdir) -> Path:
    """Write reports/index.html for everything the work directory holds now; returns its path."""
    page = wd.root / REPORTS / "index.html"
    parts = [f"<h1>gbmcvr report: {html.escape(str(wd.root.resolve()))}</h1>"]
    analyze = wd.root / REPORTS / "analyze" / "analyze.md"
    parts.append("<h2>Data analysis</h2>")
    if analyze.is_file():
        parts.append(f"<p>{_link(analyze, page, 'analyze.md')} (`gbmcvr analyze`)</p>")
        parts += [_image(png, page, png.stem) for png in sorted(analyze.parent.glob("*.png"))]
    else:
        parts.append("<p>none yet (`gbmcvr analyze`)</p>")
    selections = sorted(wd.features.glob("*-selection/report.md")) if wd.features.is_dir() else []
    parts.append("<h2>Feature selection</h2>")
    for report in selections:
        parts.append(f"<p>{_link(report, page, f'{report.parent.name}/report.md')}</p>")
        if (report.parent / "gain.png").is_file():
            parts.append(_image(report.parent / "gain.png", page, "selection gains"))
    if not selections:
        parts.append("<p>none (`gbmcvr select`)</p>")
    rows = run_table(wd.models, "valid_logloss", history=False) if wd.models.is_dir() else []
    parts.append("<h2>Runs</h2>")
    if rows:
        columns = ["run", "kind", "plan", "started", "features", "params", "valid_logloss", "valid_auc", "backtest"]
        parts.append(_table(rows, columns))
    for r in rows:
        run_dir = Path(r["path"])
        parts.append(f"<h3>{html.escape(r['run'])}</h3>")
        parts.append(f"<p>{_link(run_dir / 'run.json', page)} {_link(run_dir / 'metrics.json', page)}</p>")
        if (run_dir / "importance.png").is_file():
            parts.append(_image(run_dir / "importance.png", page, f"{r['run']} importance"))
        curve = learning_curves(run_dir, wd.root / REPORTS / "curves" / f"{r['run'].replace('/', '_')}.png")
        if curve is not None:
            parts.append(_image(curve, page, f"{r['run']} learning curve"))
    parts.append("<h2>Submissions</h2>")
    submissions = sorted(wd.submissions.glob("*.tsv")) if wd.submissions.is_dir() else []
    for tsv in submissions:
        parts.append(f"<h3>{html.escape(tsv.stem)}</h3><p>{_link(tsv, page)} {_link(tsv.with_suffix('.md'), page)}</p>")
        meta = tsv.with_suffix(".json")
        backtest = json.loads(meta.read_text()).get("backtest") if meta.is_file() else None
        if isinstance(backtest, dict) and backtest.get("rows"):
            parts.append(
                f"<p>backtest choice: calibration <b>{html.escape(str(backtest.get('calibration')))}</b>, weights "
                f"<b>{html.escape(str(backtest.get('weights')))}</b> (on day {backtest.get('target_day')})</p>"
            )
            parts.append(_table(backtest["rows"], ["calibration", "weights", "logloss", "gap", "gap_se"]))
        for suffix in ("_backtest_reliability.png", "_reliability.png", "_rates.png"):
            png = tsv.with_name(tsv.stem + suffix)
            if png.is_file():
                parts.append(_image(png, page, png.stem))
    if not submissions:
        parts.append("<p>none yet (`gbmcvr submit`)</p>")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    text = f"<!doctype html><html><head><meta charset='utf-8'><title>gbmcvr report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    write_text(page, text)
    return page
