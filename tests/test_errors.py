from gbmcvr.errors import exception_chain


def _raised_while_handling() -> BaseException:
    """An UnboundLocalError raised while a KeyboardInterrupt is handled (as Optuna 5's `finally` does)."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise UnboundLocalError("cleanup")  # noqa: B904 (raised while handling, as Optuna does)
    except UnboundLocalError as outer:
        return outer


def test_the_chain_runs_from_the_outer_exception_inwards():
    outer = _raised_while_handling()
    assert [type(e) for e in exception_chain(outer)] == [UnboundLocalError, KeyboardInterrupt]


def test_a_cycle_ends_the_walk():
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert [str(e) for e in exception_chain(a)] == ["a", "b"]
    assert list(exception_chain(None)) == []
