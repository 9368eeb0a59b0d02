"""MTDM inputs: feature frames to tensors once (Arrow -> numpy -> torch), then shuffled index batches.

Categorical fields share one embedding table: field f owns rows [offset_f, offset_f + size_f], the last
of them reserved for values unseen at fit time (or null), so predicting on new data never indexes out of
range. Numerical columns are log1p-transformed (sign-preserving) and standardised with fit-window
statistics, or mapped through fit-window quantiles to a normal distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.special import ndtri

from gbmcvr.errors import UserError


@dataclass
class InputSpec:
    """Which columns feed the model and how: learned on the fit window, saved as JSON with the model."""

    categorical: list[str]
    sizes: list[int]
    numerical: list[str]
    transform: str
    stats: dict[str, list[Any]]

    @property
    def offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(np.asarray(self.sizes) + 1)[:-1]]).astype(int).tolist()

    @property
    def embedding_rows(self) -> int:
        return int(sum(self.sizes) + len(self.sizes))

    def to_json(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "sizes": self.sizes,
            "numerical": self.numerical,
            "transform": self.transform,
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> InputSpec:
        return cls(obj["categorical"], obj["sizes"], obj["numerical"], obj["transform"], obj["stats"])


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def fit_inputs(fit: pl.DataFrame, categorical: list[str], numerical: list[str], transform: str) -> InputSpec:
    """Vocabulary sizes (max code + 1) and numeric transform statistics from the fit window (a column at a time)."""
    check_finite(fit, numerical)
    sizes = [int((fit[c].max() or 0) + 1) for c in categorical]
    for c in categorical:
        if fit[c].min() is not None and fit[c].min() < 0:
            raise UserError(f"categorical column '{c}' has negative codes; MTDM needs codes >= 0")
    stats: dict[str, list[Any]] = {}
    if numerical and transform == "log1p_standard":
        means, stds = [], []
        for c in numerical:
            z = _signed_log1p(fit[c].to_numpy().astype(np.float64))
            means.append(float(z.mean()))
            stds.append(float(max(z.std(), 1e-6)))
        stats = {"mean": means, "std": stds}
    elif numerical:
        qs = np.linspace(0, 1, 201)
        rows = np.random.default_rng(0).permutation(fit.height)[:200_000]
        sample = fit.select(numerical)[rows].to_numpy().astype(np.float64)
        stats = {"quantiles": np.quantile(sample, qs, axis=0).T.tolist(), "levels": qs.tolist()}
    return InputSpec(categorical, sizes, numerical, transform, stats)


def check_finite(frame: pl.DataFrame, columns: list[str]) -> None:
    """Refuse NaN or null in numerical inputs, naming the column (the model cannot use them)."""
    for c in columns:
        col = frame[c]
        if col.null_count() or (col.dtype.is_float() and col.is_nan().any()):
            raise UserError(f"MTDM input column '{c}' has NaN or missing values; fill them in the feature config")


def _numeric(frame: pl.DataFrame, spec: InputSpec) -> np.ndarray:
    """Transformed numericals as one float32 (rows, columns) array, computed a column at a time in float64."""
    out = np.empty((frame.height, len(spec.numerical)), dtype=np.float32)
    if not spec.numerical:
        return out
    check_finite(frame, spec.numerical)
    if spec.transform != "log1p_standard":
        levels = np.asarray(spec.stats["levels"])
    for j, c in enumerate(spec.numerical):
        x = frame[c].to_numpy().astype(np.float64)
        if spec.transform == "log1p_standard":
            out[:, j] = (_signed_log1p(x) - spec.stats["mean"][j]) / spec.stats["std"][j]
        else:
            u = np.interp(x, np.asarray(spec.stats["quantiles"][j]), levels)
            out[:, j] = ndtri(np.clip(u, 1e-3, 1 - 1e-3))
    return out


def _categorical(frame: pl.DataFrame, spec: InputSpec) -> np.ndarray:
    """Codes plus field offsets as int32; unseen (>= size) or null values go to the field's reserved row."""
    if spec.embedding_rows > np.iinfo(np.int32).max:
        raise UserError(f"MTDM: {spec.embedding_rows:,} embedding rows do not fit int32 codes")
    out = np.empty((frame.height, len(spec.categorical)), dtype=np.int32)
    for j, (c, size, off) in enumerate(zip(spec.categorical, spec.sizes, spec.offsets, strict=True)):
        v = frame[c].fill_null(-1).to_numpy().astype(np.int64)
        v = np.where((v < 0) | (v >= size), size, v)
        out[:, j] = v + off
    return out


@dataclass
class Tensors:
    """One split as tensors: int32 offset codes, float32 numericals, (when labelled) like / install labels."""

    cat: torch.Tensor
    num: torch.Tensor
    like: torch.Tensor | None
    install: torch.Tensor | None
    teacher: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.cat.shape[0]

    def to(self, device: torch.device) -> Tensors:
        """The same split on `device` (itself when already there): the training data stays resident on a GPU."""
        return Tensors(*(None if t is None else t.to(device) for t in self._all()))

    def rows(self, idx: torch.Tensor) -> Tensors:
        """The rows `idx` of every tensor (one index_select each)."""
        return Tensors(*(None if t is None else t.index_select(0, idx) for t in self._all()))

    def _all(self) -> tuple[torch.Tensor | None, ...]:
        return self.cat, self.num, self.like, self.install, self.teacher


def to_tensors(frame: pl.DataFrame, spec: InputSpec, like: str | None, install: str | None) -> Tensors:
    y_like = torch.from_numpy(frame[like].to_numpy().astype(np.float32)) if like and like in frame.columns else None
    y_inst = (
        torch.from_numpy(frame[install].to_numpy().astype(np.float32)) if install and install in frame.columns else None
    )
    return Tensors(torch.from_numpy(_categorical(frame, spec)), torch.from_numpy(_numeric(frame, spec)), y_like, y_inst)


def batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool) -> Iterator[torch.Tensor]:
    """Index batches over n rows (a shuffled permutation when training)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
