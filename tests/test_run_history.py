"""The run history: every attempt kept, listed with its scores, compared, pruned only on request."""

from __future__ import annotations

import json

import pytest

from gbmcvr.errors import UserError
from gbmcvr.run_history import compare, entries, prune, table
from tests.factories import make_workdir, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hist")
    wd, _, _ = make_workdir(root, scale=0.004, plans=("validate",))
    (wd.root / "gbmcvr.toml").write_text("[gbm]\nnum_boost_round = 12\nearly_stopping_rounds = 4\nlog_every = 0\n")
    return wd


def _train(wd, capsys, *extra) -> None:
    code, _, err = run_cli(["train", "e2e", "--workdir", wd.root, *extra], capsys)
    assert code == 0, err


def test_every_attempt_is_kept_listed_compared_and_pruned(trained, tmp_path, capsys) -> None:
    import shutil

    wd = type(trained)(tmp_path / "work")
    shutil.copytree(trained.root, wd.root)
    _train(wd, capsys)
    first = json.loads((wd.models / "e2e" / "run.json").read_text())
    for key in ("started_at", "finished_at", "seconds", "gbmcvr_version", "git_commit", "command", "seed", "plan"):
        assert key in first, key
    (wd.root / "p.json").write_text(json.dumps({"num_leaves": 7}))
    _train(wd, capsys, "--overwrite", "--params", wd.root / "p.json")
    _train(wd, capsys, "--overwrite")

    found = [e.address for e in entries(wd.models)]
    assert found[0] == "e2e" and len(found) == 3
    kept = sorted((wd.models / "history" / "e2e").iterdir())
    assert len(kept) == 2
    assert json.loads((kept[0] / "run.json").read_text())["started_at"] == first["started_at"]

    rows = table(wd.models, "valid_logloss")
    losses = [r["valid_logloss"] for r in rows]
    assert losses == sorted(losses) and all(isinstance(x, float) for x in losses)
    assert {r["params"] for r in rows} == {"defaults", str(wd.root / "p.json")}
    assert len(table(wd.models, history=False)) == 1

    tuned = next(r["run"] for r in rows if r["params"] != "defaults")
    diff = {k: (a, b) for k, a, b in compare(wd.models, "e2e", tuned)}
    assert [v for k, v in diff.items() if k.endswith("num_leaves")] == [(63, 7)]

    code, out, _ = run_cli(["runs", "--json", "--workdir", wd.root], capsys)
    assert code == 0 and len(json.loads(out)) == 3
    code, out, _ = run_cli(["runs", "--workdir", wd.root], capsys)
    assert code == 0 and "valid_logloss" in out
    code, out, _ = run_cli(["runs", "compare", "e2e", tuned, "--workdir", wd.root], capsys)
    assert code == 0 and "num_leaves" in out

    assert prune(wd.models, 1) == [kept[0]]
    assert [e.address for e in entries(wd.models)] == ["e2e", tuned]
    with pytest.raises(UserError, match="no run 'nope'"):
        compare(wd.models, "e2e", "nope")
    code, _, err = run_cli(["runs", "--sort", "colour", "--workdir", wd.root], capsys)
    assert code == 2 and "--sort must be one of" in err
