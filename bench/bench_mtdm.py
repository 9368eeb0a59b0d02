"""Benchmark: MTDM training epochs at scale through the real run path (tables -> tensors -> epochs -> preds).

Runs `train_mtdm_run` on a work directory's feature tables for `--epochs` epochs and prints JSON: seconds
and rows/s per epoch, valid install log loss per epoch, the whole run's seconds and the process's peak RSS.
`--profile-rows N` instead trains one epoch on the first N fit rows under torch.profiler and prints the top
operators by self CPU time (the profiler's overhead makes that run's timing meaningless).
Usage: python bench/bench_mtdm.py --workdir W [--epochs 1] [--device cpu] [--set default --plan validate].
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from gbmcvr.deep.batches import fit_inputs, to_tensors
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.deep.run import input_columns, train_mtdm_run
from gbmcvr.deep.train import resolve_device, train_mtdm
from gbmcvr.fe.pipeline import LIKE
from gbmcvr.tables import load_tables

LEAN = ("fit", "valid", "test")  # as the MTDM stage loads them: inputs read from Parquet by the run


def _overrides(raw: list[str]) -> dict:
    """`key=value` pairs typed like the MtdmConfig field they set (ints, floats, bools, strings)."""
    types = {f.name: type(getattr(MtdmConfig(), f.name)) for f in fields(MtdmConfig)}
    out = {}
    for pair in raw:
        key, value = pair.split("=", 1)
        kind = types[key]
        out[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return out


def profile(tables, cfg: MtdmConfig, rows: int, device: torch.device) -> list[dict]:
    """One epoch over the first `rows` fit rows under torch.profiler: top operators by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cats, nums = input_columns(tables, cfg)
    fit = tables.frame("fit", cats + nums).head(rows)
    spec = fit_inputs(fit, cats, nums, cfg.numeric_transform)
    data = to_tensors(fit, spec, LIKE, tables.install_label)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        train_mtdm(data, None, spec, replace(cfg, epochs=1), 0, device)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1
    print(averages.table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in top
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--set", default="default")
    parser.add_argument("--plan", default="validate")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile-rows", type=int, default=0, help="profile one epoch on this many fit rows")
    parser.add_argument("--set-param", action="append", default=[], help="MtdmConfig override, key=value")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = replace(MtdmConfig(), epochs=args.epochs, patience=args.epochs, **_overrides(args.set_param))
    start = time.perf_counter()
    if args.profile_rows:
        tables = load_tables(args.workdir / "features", args.set, args.plan, ("fit",), lean=("fit",))
        out = {
            "bench": "mtdm_profile",
            "rows": args.profile_rows,
            "top_ops": profile(tables, cfg, args.profile_rows, device),
        }
        print(json.dumps(out))
        return
    tables = load_tables(args.workdir / "features", args.set, args.plan, lean=LEAN)
    load_s = time.perf_counter() - start
    run = train_mtdm_run(tables, cfg, 0, args.device, None, lambda line: print(line, file=sys.stderr))
    history = run.metrics["history"]
    fit_rows = tables.splits["fit"].height
    epoch_s = [round(fit_rows / h["samples_per_s"], 1) for h in history]
    print(
        json.dumps(
            {
                "bench": "mtdm_epochs",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "fit_rows": fit_rows,
                "valid_rows": tables.splits["valid"].height,
                "batch_size": cfg.batch_size,
                "overrides": args.set_param,
                "load_seconds": round(load_s, 1),
                "epoch_seconds": epoch_s,
                "rows_per_s": [round(h["samples_per_s"]) for h in history],
                "valid_logloss": [round(h["valid_logloss"], 5) for h in history],
                "run_seconds": round(time.perf_counter() - start, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # > threads: other work shared the cores
            }
        )
    )


if __name__ == "__main__":
    main()
