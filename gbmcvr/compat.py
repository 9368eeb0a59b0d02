"""Optional dependencies, imported in one place with a message that says how to install them."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any

from gbmcvr.errors import UserError


def dask_modules() -> tuple[ModuleType, ModuleType]:
    """`dask.dataframe` and `distributed`, or a UserError naming the extra that provides them."""
    try:
        import dask.dataframe as dd
        import distributed
    except ImportError as exc:
        raise UserError(
            f"training on Dask needs dask[distributed] ({exc.name} is missing): pip install 'gbmcvr[dask]'"
        ) from None
    return dd, distributed


def deep() -> SimpleNamespace:
    """The torch-backed modules of the deep models (importing torch takes seconds, so only when a deep model
    trains or loads), or a UserError saying how to install PyTorch."""
    try:
        import torch
    except ImportError:
        raise UserError("the deep model needs PyTorch: pip install torch (CPU: torch==2.13.0)") from None
    from gbmcvr.deep import distributed, kaml_run, run, train

    return SimpleNamespace(torch=torch, distributed=distributed, kaml_run=kaml_run, run=run, train=train)


def mlflow() -> ModuleType:
    """The `mlflow` package, or a UserError naming the extra that provides it."""
    try:
        import mlflow as ml
    except ImportError:
        raise UserError("tracking with MLflow needs mlflow: pip install 'gbmcvr[mlflow]'") from None
    return ml


def catboost() -> ModuleType:
    """The `catboost` package, or a UserError saying how to install it."""
    try:
        import catboost as cb
    except ImportError:
        raise UserError("the CatBoost model needs catboost: pip install catboost") from None
    return cb


def xgboost() -> ModuleType:
    """The `xgboost` package, or a UserError saying how to install it."""
    try:
        import xgboost as xgb
    except ImportError:
        raise UserError("the XGBoost model needs xgboost: pip install 'xgboost>=2'") from None
    return xgb


class _Figures:
    """pyplot's `subplots` and `close` on bare matplotlib Figures: nothing is registered with pyplot and the
    process's backend is left alone (a notebook's inline plots keep working while gbmcvr writes PNGs)."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        fig.clear()


def pyplot() -> _Figures:
    """Figures for report PNGs, without pyplot's global state or a backend switch."""
    return _Figures()
