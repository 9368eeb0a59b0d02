"""LightGBM callbacks: boosting progress (small private class behind a public factory)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import lightgbm as lgb

from gbmcvr.progress import counted


class _Progress:
    """Rounds done of the upper bound, the valid score, and the early-stopping patience used so far: a bar with
    ETA on a terminal, else a line every `every` rounds (none when `every` is 0)."""

    order = 30

    def __init__(self, every: int, label: str, report: Callable[[str], None], patience: int | None) -> None:
        self.every, self.label, self.report, self.patience = every, label, report, patience
        self._stack = contextlib.ExitStack()
        self._task = None
        self._best: tuple[float, int] | None = None
        self._last = 0

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        it = env.iteration + 1
        if self.every <= 0:
            return
        if self._task is None:
            self._task = self._stack.enter_context(
                counted(self.report, self.label, env.end_iteration, "rounds", every=self.every)
            )
        self._last = it
        status = ""
        if env.evaluation_result_list:
            data, name, value, higher_better, *_ = env.evaluation_result_list[0]
            score = -value if higher_better else value
            if self._best is None or score < self._best[0]:
                self._best = (score, it)
            status = f"{data} {name} {value:.5f} (best @ {self._best[1]}"
            if self.patience:
                status += f", patience {it - self._best[1]}/{self.patience}"
            status += ")"
        self._task.update(it, status)
        if it == env.end_iteration:
            self.close()

    def close(self) -> None:
        """End the display; a run that stopped before its upper bound says so, with its best round."""
        stopped = self._task is not None and self._task.total is not None and self._last < self._task.total
        self._stack.close()
        self._task = None
        if stopped and self._best is not None and self.patience:
            self.report(f"{self.label}: early stop at round {self._last}, best round {self._best[1]}")


def progress(
    every: int, label: str, report: Callable[[str], None], patience: int | None = None
) -> Callable[[lgb.callback.CallbackEnv], None]:
    """A callback showing boosting progress; call its `close()` when training ends (early stopping)."""
    return _Progress(every, label, report, patience)
