"""LightGBM callbacks: periodic progress lines (small private class behind a public factory)."""

from __future__ import annotations

from collections.abc import Callable

import lightgbm as lgb


class _Progress:
    order = 30

    def __init__(self, every: int, label: str, report: Callable[[str], None]) -> None:
        self.every = every
        self.label = label
        self.report = report

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        it = env.iteration + 1
        if self.every > 0 and (it % self.every == 0 or it == env.end_iteration):
            scores = ", ".join(f"{data} {name} {value:.5f}" for data, name, value, *_ in env.evaluation_result_list)
            self.report(f"{self.label}: round {it}/{env.end_iteration} {scores}")


def progress(every: int, label: str, report: Callable[[str], None]) -> Callable[[lgb.callback.CallbackEnv], None]:
    """A callback printing the round and validation scores every `every` rounds."""
    return _Progress(every, label, report)
