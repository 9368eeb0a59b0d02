"""MTDM data parallel: batch shards, and `torchrun --nproc_per_node 2 -m gbmcvr train mtdm` on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from gbmcvr.deep.batches import Tensors
from gbmcvr.deep.distributed import DataParallel, shard_rows
from gbmcvr.workdir import Workdir
from tests.factories import run_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "[mtdm]\nepochs = 2\nbatch_size = 1024\nexpert_hidden = [32]\nexperts = 2\n"


def _rank(rank: int, world: int = 2) -> DataParallel:
    return DataParallel(rank, world, rank, torch.device("cpu"), seed=0)


def test_ranks_split_each_global_batch_without_overlap():
    idx = torch.tensor([9, 4, 7, 1, 3])
    parts = [_rank(r).shard(idx) for r in (0, 1)]
    assert parts[0].tolist() == [9, 7, 3] and parts[1].tolist() == [4, 1]
    assert _rank(1).shard(torch.tensor([5])) is None  # a batch smaller than the world is skipped on every rank
    data = Tensors(torch.arange(5).view(5, 1), torch.zeros(5, 2), torch.ones(5), None)
    part = shard_rows(data, _rank(1))
    assert part.cat.view(-1).tolist() == [1, 3] and part.num.shape == (2, 2) and part.install is None


def test_ddp_outside_torchrun_is_a_user_error(small_work, tmp_path, capsys):
    wd, _, _ = small_work
    own = Workdir(tmp_path)
    (own.root / "features").parent.mkdir(exist_ok=True)
    (own.root / "features").symlink_to(wd.features)
    code, _, err = run_cli(["train", "mtdm", "--ddp", "--device", "cpu", "--workdir", tmp_path], capsys)
    assert code == 2 and "torchrun" in err


def test_torchrun_two_cpu_processes(small_work, tmp_path, capsys):
    wd, _, _ = small_work
    own = Workdir(tmp_path)
    (own.root / "features").symlink_to(wd.features)
    own.config_file.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "gbmcvr", "train", "mtdm", "--device", "cpu", "--run-id", "ddp", "--workdir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("valid log loss") == 1  # only rank 0 reports
    assert done.stderr.count("mtdm epoch 1/2") == 1
    meta = json.loads((own.run("ddp") / "run.json").read_text())
    assert meta["world_size"] == 2
    metrics = json.loads((own.run("ddp") / "metrics.json").read_text())
    # one process on the same data and seed: the data-parallel model learns as well
    code, out, err = run_cli(["train", "mtdm", "--device", "cpu", "--run-id", "one", "--workdir", tmp_path], capsys)
    assert code == 0, err
    single = json.loads((own.run("one") / "metrics.json").read_text())
    assert (
        abs(metrics["valid"]["p"]["logloss"] - single["valid"]["p"]["logloss"]) < 0.02 * single["valid"]["p"]["logloss"]
    )
