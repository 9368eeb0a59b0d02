"""What every stage receives: the work directory, the resolved config, progress output and the device."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gbmcvr.workdir import Workdir

if TYPE_CHECKING:
    from gbmcvr.config import PipelineConfig


def quiet(_: str) -> None:
    """Progress that prints nothing (tests, worker processes, torchrun ranks other than 0)."""


def is_main() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own (torchrun sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Context:
    """One command's surroundings; stages take it first and their own options as keywords."""

    wd: Workdir
    cfg: PipelineConfig
    progress: Callable[[str], None] = quiet
    device: str = "auto"
