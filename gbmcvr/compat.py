"""Optional dependencies, imported in one place with a message that says how to install them."""

from __future__ import annotations

from types import ModuleType

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
