"""Benchmark: MTDM training throughput, tensor index batches vs a per-row Dataset + default DataLoader.

Both feed the same default model the same rows for `--samples` training samples; prints samples/s of
each, the estimated epoch time and peak RSS as JSON. Usage: python bench/bench_mtdm.py --workdir W.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from gbmcvr.deep.batches import Tensors, batches, fit_inputs, to_tensors
from gbmcvr.deep.losses import task_losses
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.deep.run import input_columns
from gbmcvr.deep.train import _autocast, _to, build_models, resolve_device, seed_everything
from gbmcvr.fe.pipeline import LIKE
from gbmcvr.tables import load_tables


class RowDataset(Dataset):
    """The per-row feeding of popular multi-task libraries: one dict of tensors per row."""

    def __init__(self, data: Tensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = self.data
        return {"cat": d.cat[i], "num": d.num[i], "like": d.like[i], "install": d.install[i]}


def run(model, opt, cfg, device, stream, samples: int) -> float:
    model.train()
    seen, start = 0, time.perf_counter()
    for cat, num, like, install in stream:
        cat, num, like, install = (_to(x, device) for x in (cat, num, like, install))
        with _autocast(device):
            out = model(cat, num)
        loss = task_losses({k: v.float() for k, v in out.items()}, like, install, cfg)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(cat)
        if seen >= samples:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=400_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the per-row baseline")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = MtdmConfig()
    tables = load_tables(args.workdir / "features", "default", "validate", ("fit",))
    cats, nums = input_columns(tables, cfg)
    t0 = time.perf_counter()
    spec = fit_inputs(tables.splits["fit"], cats, nums, cfg.numeric_transform)
    data = to_tensors(tables.splits["fit"], spec, LIKE, tables.install_label)
    to_tensor_s = time.perf_counter() - t0
    gen = seed_everything(0)
    results = {}
    for name in ("index_batches", "dataset_dataloader"):
        model = build_models(spec, cfg)[0].to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
        if name == "index_batches":
            stream = (
                (data.cat[i], data.num[i], data.like[i], data.install[i])
                for i in batches(len(data), cfg.batch_size, gen, True)
            )
        else:
            loader = DataLoader(
                RowDataset(data),
                batch_size=cfg.batch_size,
                shuffle=True,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
            )
            stream = ((b["cat"], b["num"], b["like"], b["install"]) for b in loader)
        results[name] = run(model, opt, cfg, device, stream, args.samples)
    print(
        json.dumps(
            {
                "bench": "mtdm_throughput",
                "device": str(device),
                "rows": len(data),
                "fields": len(cats),
                "numerical": len(nums),
                "to_tensors_seconds": round(to_tensor_s, 2),
                "samples_per_s": {k: round(v) for k, v in results.items()},
                "speedup": round(results["index_batches"] / results["dataset_dataloader"], 2),
                "epoch_seconds_estimate": {k: round(len(data) / v, 1) for k, v in results.items()},
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
