"""The one exception type for mistakes a user can fix; the CLI turns it into exit code 2 and one line."""

from __future__ import annotations

from collections.abc import Iterator


class UserError(Exception):
    """A problem with the user's input (paths, data, config) rather than a bug in gbmcvr."""

    exit_code = 2


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, innermost last (a cycle ends the walk)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
