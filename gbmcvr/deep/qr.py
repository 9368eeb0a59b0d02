"""Quotient-remainder (QR) embeddings: a large vocabulary as two small tables.

Id i of a field with V values maps to (i // m, i % m), m = ceil(sqrt(V)) buckets by default: two tables of
ceil(V / m) and m rows instead of V, and distinct ids always get distinct (q, r) pairs. The two vectors are
combined by element-wise product ("mult") or sum ("sum"). `FieldEmbedding` keeps the MTDM's one offset
table for the fields at or below the size threshold and gives each larger field its own QR pair.
"""

from __future__ import annotations

import math

import torch
from torch import nn

COMBINES = ("mult", "sum")


def qr_buckets(rows: int) -> int:
    """The default remainder table size: ceil(sqrt(rows)), which minimises the two tables' total rows."""
    return max(1, math.ceil(math.sqrt(rows)))


def qr_ids(ids: torch.Tensor, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(quotient, remainder) indices of ids."""
    return torch.div(ids, buckets, rounding_mode="floor"), torch.remainder(ids, buckets)


class QREmbedding(nn.Module):
    """Embedding of ids 0..rows-1 through a quotient table and a remainder table."""

    def __init__(self, rows: int, dim: int, buckets: int | None = None, combine: str = "mult") -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, not {combine!r}")
        self.buckets = buckets or qr_buckets(rows)
        self.combine = combine
        self.quotient = nn.Embedding(math.ceil(rows / self.buckets), dim)
        self.remainder = nn.Embedding(self.buckets, dim)
        # a product of two N(0, s) vectors has scale s^2: start both near 1 so products are not vanishing
        mean = 1.0 if combine == "mult" else 0.0
        for table in (self.quotient, self.remainder):
            nn.init.normal_(table.weight, mean=mean, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, r = qr_ids(ids, self.buckets)
        a, b = self.quotient(q), self.remainder(r)
        return a * b if self.combine == "mult" else a + b


class FieldEmbedding(nn.Module):
    """Per-field embeddings from globally offset codes: one shared table, QR pairs for fields above threshold."""

    def __init__(self, sizes: list[int], dim: int, threshold: int, combine: str = "mult") -> None:
        super().__init__()
        rows = [s + 1 for s in sizes]  # each field's reserved unseen row included
        self.offsets = [sum(rows[:i]) for i in range(len(rows))]
        self.large = [i for i, r in enumerate(rows) if r > threshold]
        self.small = [i for i, r in enumerate(rows) if r <= threshold]
        small_rows = [rows[i] for i in self.small]
        self.small_offsets = [sum(small_rows[:k]) for k in range(len(small_rows))]
        self.table = nn.Embedding(max(sum(small_rows), 1), dim)
        nn.init.normal_(self.table.weight, std=0.01)
        self.qr = nn.ModuleList(QREmbedding(rows[i], dim, combine=combine) for i in self.large)
        self.field_rows = rows

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        """(batch, fields) offset codes -> (batch, fields, dim) vectors in field order."""
        out: list[torch.Tensor | None] = [None] * cat.shape[1]
        if self.small:
            idx = torch.tensor(self.small, device=cat.device)
            shift = torch.tensor([self.small_offsets[k] - self.offsets[i] for k, i in enumerate(self.small)])
            vecs = self.table(cat[:, idx] + shift.to(cat.device))
            for k, i in enumerate(self.small):
                out[i] = vecs[:, k]
        for emb, i in zip(self.qr, self.large, strict=True):
            out[i] = emb(cat[:, i] - self.offsets[i])
        return torch.stack(out, dim=1)


def table_rows(names: list[str], sizes: list[int], dim: int, threshold: int) -> list[dict[str, object]]:
    """Per column: embedding rows and float32 bytes with a full table and as `FieldEmbedding` builds it."""
    out = []
    for name, size in zip(names, sizes, strict=True):
        rows = size + 1
        qr = threshold > 0 and rows > threshold
        m = qr_buckets(rows)
        built = math.ceil(rows / m) + m if qr else rows
        out.append({"column": name, "full_rows": rows, "rows": built, "qr": qr, "bytes": built * dim * 4})
    return out
