"""reports/index.html: one page linking every run's and submission's outputs; every link resolves."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tests.factories import make_workdir, run_cli


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


def test_the_report_links_every_output_and_every_link_resolves(tmp_path: Path, capsys) -> None:
    wd, _, _ = make_workdir(tmp_path, scale=0.003, plans=("validate",))
    (wd.root / "gbmcvr.toml").write_text("[gbm]\nnum_boost_round = 10\nearly_stopping_rounds = 3\nlog_every = 0\n")
    for args in (["train", "e2e"], ["submit", "--runs", "e2e", "--name", "s1"], ["report"]):
        code, _, err = run_cli([*args, "--workdir", wd.root], capsys)
        assert code == 0, err
    page = wd.root / "reports" / "index.html"
    parser = _Links()
    parser.feed(page.read_text())
    assert parser.links
    for link in parser.links:
        assert (page.parent / link).resolve().is_file(), link
    linked = {(page.parent / link).resolve() for link in parser.links}
    for expected in ("models/e2e/importance.png", "models/e2e/metrics.json", "submissions/s1.tsv"):
        assert (wd.root / expected).resolve() in linked, expected
    assert (wd.root / "reports" / "curves" / "e2e.png").resolve() in linked
