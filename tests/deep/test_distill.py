from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from gbmcvr.deep.distill import bernoulli_kl, student_loss
from gbmcvr.deep.losses import task_losses
from gbmcvr.deep.model import MTDM
from gbmcvr.deep.params import MtdmConfig

SMALL = MtdmConfig(embedding_dim=4, experts=2, expert_hidden=(16,), tower_hidden=(8,))


def test_kl_student_loss_matches_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, generator=g) * 2
    teacher = torch.rand(9, generator=g)
    teacher[0], teacher[1] = 0.0, 1.0  # the 0 log 0 = 0 edge cases
    p = torch.sigmoid(logits)
    log_student = torch.log(torch.stack([p, 1 - p], dim=1))
    reference = F.kl_div(log_student, torch.stack([teacher, 1 - teacher], dim=1), reduction="batchmean")
    assert float(bernoulli_kl(logits, teacher)) == pytest.approx(float(reference), rel=1e-5, abs=1e-7)
    assert float(student_loss("kl", torch.logit(teacher[2:]), teacher[2:])) == pytest.approx(0.0, abs=1e-6)


def test_mse_and_bce_student_losses():
    logits, teacher = torch.tensor([0.0, 2.0]), torch.tensor([0.25, 0.5])
    p = torch.sigmoid(logits)
    assert float(student_loss("mse", logits, teacher)) == pytest.approx(float(((p - teacher) ** 2).mean()))
    bce = F.binary_cross_entropy_with_logits(logits, teacher)
    assert float(student_loss("bce", logits, teacher)) == pytest.approx(float(bce))
    # KL and soft-label BCE differ by the teacher's entropy only
    entropy = -(teacher * teacher.log() + (1 - teacher) * (1 - teacher).log()).mean()
    assert float(student_loss("kl", logits, teacher)) == pytest.approx(float(bce - entropy), rel=1e-5)


def test_student_with_and_without_its_own_labels():
    torch.manual_seed(0)
    model = MTDM(10, 2, 1, SMALL)
    with torch.no_grad():
        out = model(torch.randint(0, 10, (6, 2)), torch.randn(6, 1))
    like, install, teacher = torch.tensor([1.0, 0, 1, 0, 1, 1]), torch.tensor([1.0, 0, 0, 0, 1, 0]), torch.rand(6)
    cfg = replace(SMALL, distill_run="t", distill_weight=2.0, distill_loss="kl")
    alone = task_losses(out, like, install, replace(cfg, distill_label=False), teacher)
    assert float(alone["total"]) == pytest.approx(2.0 * float(alone["distill"]))
    both = task_losses(out, like, install, cfg, teacher)
    labels = both["ctr"] + both["cvr"] + both["ctcvr"]
    assert float(both["total"]) == pytest.approx(float(labels + 2.0 * both["distill"]), rel=1e-6)


def test_stacked_mmoe_bottom():
    model = MTDM(10, 2, 1, replace(SMALL, bottom="mmoe2"))
    out = model(torch.randint(0, 10, (5, 2)), torch.randn(5, 1))
    assert out["install"].shape == (5,)
    assert type(model.bottom).__name__ == "StackedMMoE"


def test_an_mtdm_run_can_be_the_teacher(tmp_path):
    import numpy as np
    import polars as pl

    from gbmcvr.deep.batches import fit_inputs, to_tensors
    from gbmcvr.deep.run import MtdmRun, save_models, teacher_predictions
    from gbmcvr.deep.train import MtdmResult, predict
    from gbmcvr.models.base import TrainedRun
    from gbmcvr.runs import write_run

    frame = pl.DataFrame({"a": [0, 1, 2, 1], "x": [0.1, 0.5, -1.0, 2.0], "like": [1, 0, 1, 0], "y": [1, 0, 0, 0]})
    spec = fit_inputs(frame, ["a"], ["x"], "log1p_standard")
    cfg = replace(SMALL, ctcvr_head="tower", loss_weights={"ctr": 1.0, "cvr": 0.0, "ctcvr": 1.0})
    torch.manual_seed(0)
    model = MTDM(spec.embedding_rows, 1, 1, cfg, sizes=spec.sizes)
    run = MtdmRun(MtdmResult([model], 1), spec, pl.DataFrame({"row_id": [1], "split": ["valid"], "p": [0.5]}), {})
    save = lambda folder: save_models(folder, run, cfg)  # noqa: E731
    write_run(tmp_path / "teacher", TrainedRun("mtdm", run.preds, {}, {}, ["mtdm"], "key", save), {"seed": 0})
    got = teacher_predictions(tmp_path / "teacher", frame)
    want = predict(model, to_tensors(frame, spec, None, None), torch.device("cpu"))["p"]
    assert np.allclose(got, want)
