"""`gbmcvr analyze`: run the analysis sections on a raw store and write analyze.md, analyze.json and PNG plots."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from gbmcvr.atomic import atomic_dir, write_json, write_text
from gbmcvr.compat import pyplot
from gbmcvr.data import analyze as an
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import Profile, load_profile
from gbmcvr.errors import UserError
from gbmcvr.fe import entity_groups
from gbmcvr.fe.pipeline import raw_fingerprint

ADVERSARIAL_SAMPLE = 100_000  # rows per side: the held-out AUC's standard error is then ~0.002
SAMPLE_ROWS = 300_000  # rows for base-value detection and dependency candidates (checked on all rows)
ENTITY_SAMPLE = 200_000  # train and test rows on which entity keys are discovered


def read_raw(raw: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The raw store's train and test frames, or a UserError naming the command that writes them."""
    paths = [Path(raw) / "train.parquet", Path(raw) / "test.parquet"]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: raw store not found (write it with `gbmcvr ingest DATA_DIR`, or pass --data)")
    return pl.read_parquet(paths[0], glob=False), pl.read_parquet(paths[1], glob=False)


def analyze_frames(
    train: pl.DataFrame,
    test: pl.DataFrame,
    profile: Profile,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
    entities: an.DiscoveryReport | None = None,
) -> dict[str, Any]:
    """Every section's frame and its seconds for one dataset (bins and samples learned with `seed`); `entities`
    is the raw store's stored discovery when there is one (the groups the key families use), else it runs here."""
    features = list(profile.feature_columns)
    kept = list(profile.kept(profile.feature_columns))
    day = profile.day_column
    sections: dict[str, pl.DataFrame] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], pl.DataFrame]) -> None:
        start = time.perf_counter()
        sections[name] = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        progress(f"analyze: {name} ({seconds[name]:.1f}s)")

    numerical = list(profile.numerical)
    timed("base_values", lambda: an.base_values(train, numerical, profile.base_values, SAMPLE_ROWS, seed))
    timed("missing_values", lambda: an.missing_values(train, test, features))
    timed("missing_blocks", lambda: an.missing_blocks(train, features))
    timed("per_day", lambda: an.per_day(train, test, day, profile.click_label, profile.install_label))

    def binned_counts() -> pl.DataFrame:
        both = pl.concat([train.select(day, *features), test.select(day, *features)], how="vertical_relaxed")
        reference = train.sample(min(train.height, SAMPLE_ROWS), seed=seed)
        bins = an.bin_expressions(reference, numerical, [*profile.categorical, *profile.binary])
        return an.binned_counts(both, day, bins)

    timed("binning", binned_counts)
    counts = sections.pop("binning")
    timed("drift", lambda: an.drift(counts, profile.test_day))
    timed("day_similarity", lambda: an.day_similarity(counts, profile.test_day, kept))
    timed("novelty", lambda: an.novelty(train, test, [*profile.categorical, *numerical]))
    timed(
        "duplicates",
        lambda: pl.concat(
            [
                an.duplicates(train, features, list(profile.labels), "train"),
                an.duplicates(test, features, [], "test"),
            ]
        ),
    )
    timed("adversarial", lambda: an.adversarial(train, test, features, ADVERSARIAL_SAMPLE, seed=seed))
    categorical = list(profile.categorical)
    timed(
        "dependencies",
        lambda: an.functional_dependencies(
            train, categorical, [*categorical, *profile.binary, *numerical], SAMPLE_ROWS, seed=seed
        ),
    )
    timed("entity_groups", lambda: an.entity_groups(sections["dependencies"]))
    discovery: dict[str, an.DiscoveryReport] = {}

    def entity_discovery() -> pl.DataFrame:
        discovery["report"] = entities or an.entity_discovery(train, test, profile, ENTITY_SAMPLE, seed)
        return discovery["report"].frame()

    timed("entity_discovery", entity_discovery)
    return {"sections": sections, "seconds": seconds, "entities": discovery["report"]}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pl.DataFrame, rows: int | None = None) -> str:
    """A frame as a Markdown table (the first `rows` rows), numbers to four significant digits."""
    shown = frame if rows is None else frame.head(rows)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in shown.iter_rows()]
    if rows is not None and frame.height > rows:
        lines.append(f"\n({frame.height - rows} more rows in analyze.json)")
    return "\n".join(lines)


def _figure(width: float, height: float):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(width, height))
    return plt, fig, ax


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_per_day(frame: pl.DataFrame, path: Path) -> None:
    """Rows per day (bars) and click, install and like rates (lines) of the train days."""
    plt, fig, ax = _figure(8, 4)
    train = frame.filter(pl.col("split") == "train")
    rows = ax.twinx()
    rows.bar(frame["day"].to_list(), frame["rows"].to_list(), color="#dddddd", label="rows")
    rows.set_ylabel("rows")
    ax.set_zorder(rows.get_zorder() + 1)
    ax.patch.set_visible(False)
    for col, color in (("click_rate", "C0"), ("install_rate", "C1"), ("like_rate", "C2")):
        ax.plot(train["day"].to_list(), train[col].to_list(), marker="o", ms=3, color=color, label=col)
    ax.set_xlabel("day (last bar: the test day, unlabelled)")
    ax.set_ylabel("rate")
    ax.set_title(f"Rows and label rates per day ({int(frame['rows'].sum()):,} rows)")
    ax.legend(loc="upper left", fontsize=8)
    _save(plt, fig, path)


def plot_bars(frame: pl.DataFrame, label: str, value: str, title: str, xlabel: str, path: Path, top: int = 20) -> None:
    """Horizontal bars of the `top` largest values, the largest at the top, each bar labelled with its value."""
    shown = frame.sort(value, descending=True).head(top).reverse()
    plt, fig, ax = _figure(7, 0.28 * max(shown.height, 3) + 1.3)
    bars = ax.barh(shown[label].to_list(), shown[value].to_list(), color="C0")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in shown[value].to_list()], fontsize=7, padding=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)
    _save(plt, fig, path)


def plot_day_similarity(frame: pl.DataFrame, test_day: int, path: Path) -> None:
    """Mean PSI of each train day against the test day; the most similar day highlighted."""
    ordered = frame.sort("day")
    best = frame["day"][0]
    plt, fig, ax = _figure(8, 3.5)
    colors = ["C1" if d == best else "C0" for d in ordered["day"].to_list()]
    ax.bar(ordered["day"].to_list(), ordered["mean_psi"].to_list(), color=colors)
    ax.set_title(f"Distance of each train day to test day {test_day} (most similar: day {best})")
    ax.set_xlabel("train day")
    ax.set_ylabel("mean PSI over kept columns")
    _save(plt, fig, path)


def plot_missing(frame: pl.DataFrame, path: Path) -> None:
    """Missing share per column (columns with any missing value), train beside test."""
    shown = frame.filter((pl.col("train_missing") > 0) | (pl.col("test_missing") > 0))
    plt, fig, ax = _figure(7, 0.3 * max(shown.height, 3) + 1.3)
    y = list(range(shown.height))
    ax.barh([v + 0.2 for v in y], shown["train_missing"].to_list(), height=0.4, label="train")
    ax.barh([v - 0.2 for v in y], shown["test_missing"].to_list(), height=0.4, label="test")
    ax.set_yticks(y, shown["column"].to_list())
    ax.set_xlabel("share of rows missing")
    ax.set_title(f"Missing values ({shown.height} columns with any)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


SECTION_TEXT = {
    "base_values": "Numerical columns: detected base value (largest b with value / b integral for >= 99 % of a "
    "{sample:,}-row sample) beside the profile's, and the share each fits. Empty detected base: no base found.",
    "missing_values": "Share of missing values per column (columns with any missing value).",
    "missing_blocks": "Columns missing together (Jaccard of missing rows >= 0.99) and the share of train rows "
    "where the whole block is missing.",
    "per_day": "Rows and label rates per day (like = clicked or installed).",
    "day_similarity": "Train days ranked by mean PSI against the test day over the profile's kept columns.",
    "drift": "Population stability index of each column, test day against all train days (10 quantile bins "
    "for numbers, the 20 most frequent values plus 'other' for categories, missing as its own bin); "
    "> 0.1 moderate, > 0.25 large drift.",
    "novelty": "Share of test rows (and of distinct test values) never seen in train, per column.",
    "duplicates": "Exact duplicates over the feature columns; conflicting = a duplicate group whose labels differ.",
    "adversarial": "LightGBM ({rounds} rounds) separating train from test on {train_sample:,} sampled train rows "
    "and {test_sample:,} test rows; AUC on a stratified 30 % hold-out. AUC near 0.5: no shift a model can use.",
    "dependencies": "Pairs where the dependent column is a function of the determinant (one value per "
    "determinant value) on all train rows; constant columns left out.",
    "entity_groups": "Candidate entity keys: each key with the columns constant within it (profile [entities]).",
    "entity_discovery": "Entity keys discovered on {entity_sample:,} train and test rows (a sample of at most "
    "{entity_sample_max:,}), and the check of "
    "the profile's [entities]. A group is a key when its joint value repeats far more often than if its columns "
    "were independent (each shuffled on its own) and its values span several days. Ads: one categorical column "
    "and the columns that are functions of it; users: a greedy search on the excess entropy (score, nats) among "
    "the remaining columns. used = the group the feature families get.",
}


def render_markdown(result: dict[str, Any], profile: Profile, source: str) -> str:
    """The report as Markdown: a summary, then one table per section with its plot."""
    s = result["sections"]
    adv = s["adversarial"]
    notes = {
        "sample": SAMPLE_ROWS,
        "rounds": 100,
        "train_sample": int(adv["train_sample"][0]) if adv.height else 0,
        "test_sample": int(adv["test_sample"][0]) if adv.height else 0,
        "entity_sample": result["entities"].rows,
        "entity_sample_max": ENTITY_SAMPLE,
    }
    train_dup = s["duplicates"].filter(pl.col("split") == "train").row(0, named=True)
    summary = result["summary"]
    drifting = ", ".join(f"{c} ({v:.2f})" for c, v in s["drift"].head(5).iter_rows())
    novel = ", ".join(f"{c} ({v:.0%} of test rows new)" for c, v, *_ in s["novelty"].head(3).iter_rows())
    lines = [
        f"# Data analysis: {profile.name}",
        "",
        f"Source: `{source}`; {summary['train_rows']:,} train rows, {summary['test_rows']:,} test rows, "
        f"{len(profile.feature_columns)} feature columns. Written by `gbmcvr analyze` in {summary['seconds']:.1f}s.",
        "",
        "## Summary",
        "",
        f"- Test day {profile.test_day} is most similar to train day {summary['most_similar_day']} "
        f"(the profile validates on day {profile.valid_day}).",
        f"- Largest drift: {drifting}.",
        f"- Most novel columns: {novel}.",
        f"- Duplicates: {train_dup['duplicate_rows']:,} extra copies in train, {train_dup['conflicting_groups']:,} "
        "groups with conflicting labels.",
        f"- Adversarial AUC {summary['adversarial_auc']:.3f}; top columns "
        f"{', '.join(s['adversarial'].head(5)['column'].to_list())}.",
        f"- Base values: {summary['base_values_found']} of {len(profile.numerical)} numerical columns have one; "
        f"{summary['base_values_disagree']} disagree with the profile.",
        *entity_summary(result["entities"]),
        "",
    ]
    plots = {
        "per_day": "per_day.png",
        "day_similarity": "day_similarity.png",
        "drift": "drift.png",
        "missing_values": "missing.png",
        "novelty": "novelty.png",
        "adversarial": "adversarial.png",
    }
    shown = {
        "missing_values": s["missing_values"].filter((pl.col("train_missing") > 0) | (pl.col("test_missing") > 0)),
        "adversarial": adv.select("column", "gain_share"),
    }
    for name, frame in s.items():
        lines += [f"## {name.replace('_', ' ').capitalize()}", "", SECTION_TEXT[name].format(**notes), ""]
        if name == "adversarial":
            lines += [f"Hold-out AUC: **{summary['adversarial_auc']:.4f}**", ""]
        if name in plots:
            lines += [f"![{name}]({plots[name]})", ""]
        whole = name in ("base_values", "per_day", "day_similarity")  # every day, validation and test days included
        lines += [markdown_table(shown.get(name, frame), None if whole else 20), ""]
    return "\n".join(lines)


def entity_summary(report: an.DiscoveryReport) -> list[str]:
    """Summary lines on entity keys: each group to use and where it comes from, and each declared group's check."""
    used = {e.name: e for e in report.evidence if e.source == "discovered" and e.is_key}
    lines = []
    for name, group in report.groups.items():
        origin = "discovered" if name in used and used[name].columns == group else "declared"
        lines.append(f"- Entity `{name}` ({origin}): {', '.join(group)}.")
    for e in report.evidence:
        if e.source == "declared":
            verdict = "overruled" if e.name in report.overruled else "kept"
            lines.append(f"- Declared `{e.name}` ({verdict}): {e.reason}.")
    return lines


def summarize(result: dict[str, Any], train: pl.DataFrame, test: pl.DataFrame) -> dict[str, Any]:
    """Headline numbers of the report."""
    s = result["sections"]
    base = s["base_values"]
    disagree = base.filter(
        pl.col("profile_base").is_not_null()
        & ((pl.col("detected_base") - pl.col("profile_base")).abs() > 1e-6 * pl.col("profile_base"))
    )
    return {
        "train_rows": train.height,
        "test_rows": test.height,
        "most_similar_day": int(s["day_similarity"]["day"][0]) if s["day_similarity"].height else None,
        "adversarial_auc": float(s["adversarial"]["auc"][0]) if s["adversarial"].height else float("nan"),
        "base_values_found": int(base["detected_base"].is_not_null().sum()),
        "base_values_disagree": disagree.height,
        "entities": {name: list(group) for name, group in result["entities"].groups.items()},
        "entities_overruled": list(result["entities"].overruled),
    }


def write_report(
    train: pl.DataFrame,
    test: pl.DataFrame,
    profile: Profile,
    out: Path,
    source: str,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
    entities: an.DiscoveryReport | None = None,
) -> dict[str, Any]:
    """Analyze and write `out/` atomically: analyze.md, analyze.json and the PNG plots."""
    start = time.perf_counter()
    result = analyze_frames(train, test, profile, seed, progress, entities)
    s = result["sections"]
    with atomic_dir(Path(out)) as tmp:
        plot_per_day(s["per_day"], tmp / "per_day.png")
        plot_day_similarity(s["day_similarity"], profile.test_day, tmp / "day_similarity.png")
        plot_bars(
            s["drift"],
            "column",
            "psi",
            "Drift: PSI of the test day vs the train days (top 20)",
            "PSI",
            tmp / "drift.png",
        )
        plot_missing(s["missing_values"], tmp / "missing.png")
        plot_bars(
            s["novelty"],
            "column",
            "new_rows_share",
            "Novelty: share of test rows with a value unseen in train (top 20)",
            "share of test rows",
            tmp / "novelty.png",
        )
        auc = float(s["adversarial"]["auc"][0]) if s["adversarial"].height else float("nan")
        plot_bars(
            s["adversarial"],
            "column",
            "gain_share",
            f"Adversarial validation (AUC {auc:.3f}): top 20 columns by gain",
            "share of total gain",
            tmp / "adversarial.png",
        )
        result["summary"] = {**summarize(result, train, test), "seconds": round(time.perf_counter() - start, 2)}
        write_text(tmp / "analyze.md", render_markdown(result, profile, source))
        write_json(
            tmp / "analyze.json",
            {
                "profile": profile.name,
                "source": source,
                "summary": result["summary"],
                "seconds": result["seconds"],
                "samples": {
                    "base_values_and_dependencies": SAMPLE_ROWS,
                    "adversarial_per_side": ADVERSARIAL_SAMPLE,
                    "entity_discovery": ENTITY_SAMPLE,
                },
                "sections": {name: frame.to_dicts() for name, frame in s.items()},
            },
        )
    progress(f"analyze: wrote {out} in {time.perf_counter() - start:.1f}s")
    return result


def analyze_store(
    raw: Path,
    profile_spec: str,
    out: Path,
    data: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Analyze the raw store at `raw`, or `data` (a raw dataset folder ingested into a temporary store)."""
    profile = load_profile(profile_spec)
    if data is None:
        train, test = read_raw(raw)
        return write_report(
            train, test, profile, out, str(raw), seed, progress, stored_entities(raw, profile, progress)
        )
    with tempfile.TemporaryDirectory(prefix="gbmcvr-analyze-") as tmp:
        ingest(Path(data), profile, Path(tmp) / "raw", progress)
        train, test = read_raw(Path(tmp) / "raw")
        entities = stored_entities(Path(tmp) / "raw", profile, progress)
    return write_report(train, test, profile, out, str(data), seed, progress, entities)


def stored_entities(raw: Path, profile: Profile, progress: Callable[[str], None]) -> an.DiscoveryReport:
    """The raw store's entity discovery, as `gbmcvr features` stores and uses it (made and stored if missing)."""
    record = entity_groups.stored_or_discovered(raw, profile, raw_fingerprint(raw), progress)
    return entity_groups.report_of(record)
