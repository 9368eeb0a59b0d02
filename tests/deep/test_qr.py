from dataclasses import replace

import pytest
import torch

from gbmcvr.deep.model import MTDM
from gbmcvr.deep.params import MtdmConfig, mtdm_config
from gbmcvr.deep.qr import FieldEmbedding, QREmbedding, qr_buckets, qr_ids, table_rows
from gbmcvr.errors import UserError


def test_table_sizes():
    emb = QREmbedding(1000, 4)
    assert emb.buckets == qr_buckets(1000) == 32
    assert emb.quotient.num_embeddings == 32 and emb.remainder.num_embeddings == 32  # ceil(1000 / 32) = 32
    odd = QREmbedding(101, 3, buckets=10, combine="sum")
    assert (odd.quotient.num_embeddings, odd.remainder.num_embeddings) == (11, 10)
    rows = table_rows(["small", "big"], [9, 9999], 4, threshold=100)
    assert rows[0] == {"column": "small", "full_rows": 10, "rows": 10, "qr": False, "bytes": 160}
    assert rows[1]["full_rows"] == 10000 and rows[1]["rows"] == 200 and rows[1]["qr"]


def test_distinct_ids_map_to_distinct_pairs():
    ids = torch.arange(1000)
    q, r = qr_ids(ids, 32)
    assert len(set(zip(q.tolist(), r.tolist(), strict=True))) == 1000
    assert int(q.max()) < 32 and int(r.max()) < 32
    assert torch.equal(q * 32 + r, ids)


@pytest.mark.parametrize("combine", ["mult", "sum"])
def test_combination(combine):
    emb = QREmbedding(50, 3, buckets=8, combine=combine)
    ids = torch.tensor([0, 9, 49])
    a, b = emb.quotient(ids // 8), emb.remainder(ids % 8)
    assert torch.allclose(emb(ids), a * b if combine == "mult" else a + b)


def test_field_embedding_keeps_small_fields_in_one_table():
    sizes = [3, 500, 4]  # offsets 0, 4, 505
    emb = FieldEmbedding(sizes, 2, threshold=10)
    assert emb.small == [0, 2] and emb.large == [1]
    assert emb.table.num_embeddings == 4 + 5
    cat = torch.tensor([[1, 4 + 7, 505 + 2]])
    out = emb(cat)
    assert torch.allclose(out[0, 0], emb.table.weight[1])
    assert torch.allclose(out[0, 2], emb.table.weight[4 + 2])
    assert torch.allclose(out[0, 1], emb.qr[0](torch.tensor([7]))[0])


def test_mtdm_with_qr_embeddings():
    cfg = replace(MtdmConfig(embedding_dim=4, experts=2, expert_hidden=(8,)), qr_threshold=10, qr_combine="sum")
    model = MTDM(4 + 501, 2, 1, cfg, sizes=[3, 500])
    out = model(torch.tensor([[1, 4 + 499], [0, 4]]), torch.randn(2, 1))
    assert out["install"].shape == (2,)
    with pytest.raises(UserError, match="qr_combine"):
        mtdm_config({"qr_combine": "concat"}, "[mtdm]")
