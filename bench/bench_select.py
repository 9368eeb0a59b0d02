"""Benchmark: the noise floor of a `gbmcvr select` decision and the selection's outcome (JSON).

Usage: python bench/bench_select.py --workdir W [--data D] [--scale 0.05] [--seed 0] [--user-columns f_5,f_8]
       [--days 1,3] [--weighting none,density] [--no-search]

Generates `gbmcvr synth` data when D has none, ingests it, builds the candidate tables once (backtest plan), then
for each number of rehearsal days k: the pooled gain and day-clustered SE of the decisions "default set vs raw
columns", "default set + lagged" and "default set - target" (the noise floor: a decision needs a gain above
about 2 SE), beside the row-level SE that ignores the days; and, unless --no-search, the whole selection for
each (k, weighting): chosen set, steps with per-day gains, and the holdout day (backtest test day) log loss of
raw columns, default and chosen set.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT, load_profile
from gbmcvr.data.synth import write_synth
from gbmcvr.fe.pipeline import build
from gbmcvr.fe.select import (
    CANDIDATE_SET,
    DEFAULT_HANDLING,
    DEFAULT_ON,
    PLAN,
    SEARCHED,
    Choice,
    Proxy,
    SelectOptions,
    candidate_raw,
    holdout,
    rehearsal_build,
    requirements,
    search,
)
from gbmcvr.fe.spec import feature_spec
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir


def cached(proxy: Proxy) -> Proxy:
    """The proxy with its per-row losses memoised by choice: the weightings' searches share their fits."""
    memo: dict[Choice, np.ndarray] = {}
    score = proxy.score

    def memoised(choice: Choice) -> np.ndarray:
        if choice not in memo:
            memo[choice] = score(choice)
        else:
            proxy.fits += 1  # the search's budget counts candidates, fitted or remembered
        return memo[choice]

    proxy.score = memoised  # type: ignore[method-assign]
    return proxy


def noise_floor(proxy: Proxy) -> dict:
    """Pooled gain, day-clustered SE and row-level SE of three reference decisions on the proxy's rehearsal days."""
    built = set(proxy.family.values())
    default = tuple(f for f in DEFAULT_ON if f in built)
    base = proxy.score(Choice(default, DEFAULT_HANDLING))
    out: dict = {"days": {str(d): int((proxy.days == d).sum()) for d in proxy.rehearsal_days}}
    decisions = {
        "default vs raw columns": (proxy.score(Choice((), DEFAULT_HANDLING)), base),
        "default + lagged": (base, proxy.score(Choice((*default, "lagged"), DEFAULT_HANDLING))),
        "default - target": (base, proxy.score(Choice(tuple(f for f in default if f != "target"), DEFAULT_HANDLING))),
    }
    for name, (before, after) in decisions.items():
        g = proxy.gain(before, after)
        diff = before - after
        w = np.ones(len(diff)) if proxy.weights is None else proxy.weights
        out[name] = {
            "gain": round(g.mean, 6),
            "se_day_clustered": round(g.se, 6),
            "se_rows": round(float(np.sqrt(np.sum(w**2 * (diff - g.mean) ** 2)) / w.sum()), 6),
            "tau": round(float(np.sqrt(g.tau2)), 6),
            "per_day": {str(d): round(v, 6) for d, v in g.per_day.items()},
        }
    return out


def outcome(proxy: Proxy, tables, candidates: dict, opts: SelectOptions) -> dict:
    """The search on the proxy as it stands (weights set or not), and the holdout day."""
    built = {c["family"] for c in tables.manifest["columns"]}
    families = tuple(f for f in SEARCHED if f in built)
    proxy.fits = 0
    sel = search(proxy, families, requirements(candidates), opts)
    sel.holdout = holdout(tables, proxy, sel)
    return {
        "chosen": sel.choice.label(),
        "steps": [
            {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items() if k != "choice"} for s in sel.steps
        ],
        "holdout": {
            name: round(v["logloss"], 6) if isinstance(v, dict) else round(v, 6) for name, v in sel.holdout.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="synth seed")
    parser.add_argument("--user-columns", default=None, help="synth: the columns that carry the user identity")
    parser.add_argument("--days", default="1,3", help="rehearsal day counts to compare")
    parser.add_argument("--weighting", default="none,density")
    parser.add_argument("--no-search", action="store_true", help="noise floor only")
    parser.add_argument("--rounds", type=int, default=SelectOptions.rounds, help="proxy rounds")
    parser.add_argument("--max-fits", type=int, default=SelectOptions.max_fits, help="candidates per search")
    args = parser.parse_args()
    start = time.perf_counter()
    wd = Workdir(args.workdir)
    data = args.data or args.workdir / "data"
    if not (data / "train").is_dir():
        users = tuple(args.user_columns.split(",")) if args.user_columns else None
        write_synth(data, args.scale, args.seed, **({"user_columns": users} if users else {}))
    if not (wd.raw / "manifest.json").is_file():
        ingest(data, SHARECHAT, wd.raw, print)
    profile = load_profile("sharechat2023")
    candidates = candidate_raw(profile)
    spec = feature_spec(rehearsal_build(candidates), profile, "candidate families")
    build(wd.raw, profile, spec, CANDIDATE_SET, PLAN, wd.features, print)
    tables = load_tables(wd.features, CANDIDATE_SET, PLAN)
    built = time.perf_counter() - start
    report: dict = {"scale": args.scale, "seed": args.seed, "user_columns": args.user_columns, "build_s": round(built)}
    base = SelectOptions(seed=42, rounds=args.rounds, max_fits=args.max_fits)
    for k in (int(x) for x in args.days.split(",")):
        t = time.perf_counter()
        opts = replace(base, rehearsal_days=k)
        proxy = cached(Proxy(tables, opts, print))
        for weighting in args.weighting.split(",") if k > 1 else ["none"]:
            proxy.weights = None
            if weighting == "density":
                found = proxy.weigh(tables.splits["test"])
                report[f"weights_k{k}"] = {
                    "auc": round(found.auc, 4),
                    "clipped": round(found.clipped, 4),
                    "effective_rows": round(found.effective_rows),
                    "rows": len(found.weights),
                }
            key = f"k{k}_{weighting}"
            report[key] = {"noise_floor": noise_floor(proxy)}
            if not args.no_search:
                report[key]["select"] = outcome(proxy, tables, candidates, opts)
            report[key]["seconds"] = round(time.perf_counter() - t)
            print(json.dumps({key: report[key]}), flush=True)
    report["seconds"] = round(time.perf_counter() - start)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
