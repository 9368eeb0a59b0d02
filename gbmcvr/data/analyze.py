"""Data analysis of a raw store (paper §2): one pure function per section, Polars frames in, a Polars frame out.

Sections: base values, missing values and missing blocks, per-day rates, day similarity and drift (PSI),
novelty of test values, duplicates, adversarial validation, functional dependencies, entity groups and
entity keys discovered from the data.
The report renderer (`gbmcvr/data/analyze_report.py`) reads files and draws plots; nothing here does.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from gbmcvr.data.entity_discovery import DiscoveryReport, discover_entities
from gbmcvr.data.profile import Profile

PSI_EPS = 1e-4  # share floor in PSI, so a bin empty on one side gives a large but finite term


def _sample(frame: pl.DataFrame, rows: int | None, seed: int) -> pl.DataFrame:
    """At most `rows` rows drawn without replacement (the frame itself when it is small enough)."""
    if rows is None or frame.height <= rows:
        return frame
    return frame.sample(rows, seed=seed)


def detect_base(
    values: np.ndarray, counts: np.ndarray, min_share: float = 0.99, tol: float = 1e-3
) -> tuple[float, float]:
    """Largest b with value / b within `tol` of an integer for >= `min_share` of the (weighted) values.

    Candidates are the smallest distinct non-zero magnitudes divided by 1..12; the winner is refined by least
    squares over the values it fits. Returns (nan, best share) when no candidate reaches `min_share`.
    """
    mags = np.abs(values)
    total = counts.sum()
    if total == 0:
        return float("nan"), 0.0
    smallest = np.unique(mags[mags > 0])[:8]
    if len(smallest) == 0:
        return float("nan"), 1.0
    candidates = np.unique((smallest[:, None] / np.arange(1, 13)[None, :]).ravel())[::-1]
    quotients = mags[:, None] / candidates[None, :]
    fits = np.abs(quotients - np.round(quotients)) <= tol
    shares = (fits * counts[:, None]).sum(axis=0) / total
    good = np.flatnonzero(shares >= min_share)
    if len(good) == 0:
        return float("nan"), float(shares.max())
    i = good[0]
    k = np.round(quotients[:, i])
    w = counts * fits[:, i]
    base = float((w * mags * k).sum() / (w * k * k).sum()) if (w * k * k).sum() > 0 else float(candidates[i])
    return base, float(shares[i])


def share_fitting(values: np.ndarray, counts: np.ndarray, base: float, tol: float = 1e-3) -> float:
    """Weighted share of values that are integer multiples of `base` within `tol`."""
    if not base or counts.sum() == 0:
        return float("nan")
    q = np.abs(values) / base
    return float((counts * (np.abs(q - np.round(q)) <= tol)).sum() / counts.sum())


def base_values(
    frame: pl.DataFrame,
    columns: list[str],
    profile_bases: dict[str, float],
    sample_rows: int | None = 500_000,
    seed: int = 0,
) -> pl.DataFrame:
    """Per numerical column: the detected base value and the share it fits, beside the profile's base."""
    sample = _sample(frame.select(columns), sample_rows, seed)
    rows = []
    for col in columns:
        vc = sample[col].drop_nulls().value_counts()
        values, counts = vc[col].to_numpy().astype(np.float64), vc["count"].to_numpy().astype(np.float64)
        base, share = detect_base(values, counts)
        profile_base = profile_bases.get(col)
        rows.append(
            {
                "column": col,
                "detected_base": None if np.isnan(base) else base,
                "detected_share": share,
                "profile_base": profile_base,
                "profile_share": share_fitting(values, counts, profile_base) if profile_base else None,
                "distinct_values": len(vc),
            }
        )
    schema = {
        "column": pl.String,
        "detected_base": pl.Float64,
        "detected_share": pl.Float64,
        "profile_base": pl.Float64,
        "profile_share": pl.Float64,
        "distinct_values": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def missing_values(train: pl.DataFrame, test: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Share of missing values per column in train and in test."""
    share = {
        name: frame.select(pl.col(columns).null_count() / max(frame.height, 1)).row(0)
        for name, frame in (("train", train), ("test", test))
    }
    return pl.DataFrame({"column": columns, "train_missing": share["train"], "test_missing": share["test"]})


def missing_blocks(frame: pl.DataFrame, columns: list[str], min_jaccard: float = 0.99) -> pl.DataFrame:
    """Groups of columns that are missing together (Jaccard of their missing rows >= `min_jaccard`)."""
    nulls = frame.select(pl.col(columns).null_count()).row(0)
    cols = [c for c, n in zip(columns, nulls, strict=True) if n > 0]
    schema = {"block": pl.Int64, "columns": pl.String, "n_columns": pl.Int64, "rows_missing_share": pl.Float64}
    if len(cols) < 2:
        return pl.DataFrame(schema=schema)
    pairs = [(i, j) for i in range(len(cols)) for j in range(i + 1, len(cols))]
    both = frame.select(
        [(pl.col(cols[i]).is_null() & pl.col(cols[j]).is_null()).sum().alias(f"{i}_{j}") for i, j in pairs]
    ).row(0)
    null_count = dict(zip(columns, nulls, strict=True))
    edges = [
        (i, j)
        for (i, j), n in zip(pairs, both, strict=True)
        if n / (null_count[cols[i]] + null_count[cols[j]] - n) >= min_jaccard
    ]
    if not edges:
        return pl.DataFrame(schema=schema)
    ij = np.array(edges)
    graph = coo_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(len(cols), len(cols)))
    _, labels = connected_components(graph, directed=False)
    rows = []
    for label in np.unique(labels):
        members = [cols[k] for k in np.flatnonzero(labels == label)]
        if len(members) < 2:
            continue
        together = frame.select(pl.all_horizontal(pl.col(members).is_null()).mean()).item()
        rows.append({"columns": ", ".join(members), "n_columns": len(members), "rows_missing_share": together})
    blocks = pl.DataFrame(rows, schema={k: v for k, v in schema.items() if k != "block"})
    return blocks.sort("n_columns", descending=True).with_row_index("block", offset=1).cast({"block": pl.Int64})


def per_day(train: pl.DataFrame, test: pl.DataFrame, day: str, click: str, install: str) -> pl.DataFrame:
    """Rows, click rate, install rate and like rate (clicked or installed) per day; the test day has no rates."""
    rates = train.group_by(day).agg(
        pl.len().alias("rows"),
        pl.col(click).cast(pl.Float64).mean().alias("click_rate"),
        pl.col(install).cast(pl.Float64).mean().alias("install_rate"),
        ((pl.col(click) == 1) | (pl.col(install) == 1)).cast(pl.Float64).mean().alias("like_rate"),
    )
    test_rows = test.group_by(day).agg(pl.len().alias("rows"))
    return (
        pl.concat(
            [rates.with_columns(split=pl.lit("train")), test_rows.with_columns(split=pl.lit("test"))],
            how="diagonal_relaxed",
        )
        .select(day, "split", "rows", "click_rate", "install_rate", "like_rate")
        .rename({day: "day"})
        .cast({"day": pl.Int64, "rows": pl.Int64})
        .sort("day")
    )


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two count (or share) vectors over the same bins: sum (a - e) ln(a / e)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64) / np.sum(expected), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64) / np.sum(actual), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_expressions(
    reference: pl.DataFrame, numerical: list[str], categorical: list[str], bins: int = 10, top: int = 20
) -> list[pl.Expr]:
    """Integer bin codes per column, learned on `reference`: quantile bins for numbers, the `top` most frequent
    values plus `other` for categories; missing values get their own bin (-1)."""
    exprs = []
    qs = [i / bins for i in range(1, bins)]
    if numerical:
        quant = reference.select([pl.col(c).quantile(q).alias(f"{c}|{q}") for c in numerical for q in qs]).row(0)
    for k, col in enumerate(numerical):
        edges = sorted({v for v in quant[k * len(qs) : (k + 1) * len(qs)] if v is not None})
        code = pl.lit(0, dtype=pl.Int16)
        for edge in edges:
            code = code + (pl.col(col) > edge).cast(pl.Int16)
        exprs.append(pl.when(pl.col(col).is_null()).then(pl.lit(-1, dtype=pl.Int16)).otherwise(code).alias(col))
    for col in categorical:
        values = reference[col].drop_nulls().value_counts(sort=True).head(top)[col].to_list()
        code = pl.col(col).replace_strict(values, list(range(len(values))), default=len(values), return_dtype=pl.Int16)
        exprs.append(pl.when(pl.col(col).is_null()).then(pl.lit(-1, dtype=pl.Int16)).otherwise(code).alias(col))
    return exprs


def binned_counts(frame: pl.DataFrame, day: str, bins: list[pl.Expr]) -> pl.DataFrame:
    """Row counts per (column, day, bin) of the binned columns: the input of drift and day similarity."""
    binned = frame.select(pl.col(day).cast(pl.Int64).alias("day"), *bins)
    columns = binned.columns[1:]
    parts = pl.collect_all(
        [
            binned.lazy()
            .group_by("day", col)
            .len("n")
            .select(pl.lit(col).alias("column"), "day", pl.col(col).alias("bin"), "n")
            for col in columns
        ]
    )
    return pl.concat(parts).sort("column", "day", "bin")


def _psi_of(expected: pl.DataFrame, actual: pl.DataFrame) -> float:
    joined = expected.join(actual, on="bin", how="full", coalesce=True).fill_null(0)
    return psi(joined["n"].to_numpy(), joined["n_right"].to_numpy())


def drift(counts: pl.DataFrame, test_day: int) -> pl.DataFrame:
    """PSI per column of the test day against all train days together, largest first."""
    rows = []
    for (col,), part in counts.group_by("column", maintain_order=True):
        train = part.filter(pl.col("day") != test_day).group_by("bin").agg(pl.col("n").sum())
        test = part.filter(pl.col("day") == test_day).select("bin", "n")
        rows.append({"column": col, "psi": _psi_of(train, test)})
    return pl.DataFrame(rows, schema={"column": pl.String, "psi": pl.Float64}).sort("psi", descending=True)


def day_similarity(counts: pl.DataFrame, test_day: int, columns: list[str] | None = None) -> pl.DataFrame:
    """Mean and median PSI over columns of each train day against the test day; the most similar day first."""
    if columns is not None:
        counts = counts.filter(pl.col("column").is_in(columns))
    shares = counts.with_columns((pl.col("n") / pl.col("n").sum().over("column", "day")).alias("share"))
    test = shares.filter(pl.col("day") == test_day).select("column", "bin", pl.col("share").alias("test_share"))
    train = shares.filter(pl.col("day") != test_day)
    grid = (
        train.select("column", "day")
        .unique()
        .join(pl.concat([train.select("column", "bin"), test.select("column", "bin")]).unique(), on="column")
    )
    full = (
        grid.join(train.select("column", "day", "bin", "share"), on=["column", "day", "bin"], how="left")
        .join(test, on=["column", "bin"], how="left")
        .fill_null(0.0)
        .with_columns(pl.col("share", "test_share").clip(lower_bound=PSI_EPS))
    )
    per_column = full.group_by("column", "day").agg(
        ((pl.col("test_share") - pl.col("share")) * (pl.col("test_share") / pl.col("share")).log()).sum().alias("psi")
    )
    return (
        per_column.group_by("day")
        .agg(pl.col("psi").mean().alias("mean_psi"), pl.col("psi").median().alias("median_psi"))
        .cast({"day": pl.Int64})
        .sort("mean_psi", "day")
    )


def novelty(train: pl.DataFrame, test: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Per column: share of test rows (and of distinct test values) whose value never appears in train."""
    rows = []
    for col in columns:
        seen = train[col].drop_nulls().unique()
        values = test[col].drop_nulls()
        is_new = ~values.is_in(seen.implode())
        distinct = values.unique()
        rows.append(
            {
                "column": col,
                "new_rows_share": float(is_new.sum()) / max(test.height, 1),
                "new_values_share": float((~distinct.is_in(seen.implode())).sum()) / max(len(distinct), 1),
                "test_values": len(distinct),
                "train_values": len(seen),
            }
        )
    schema = {
        "column": pl.String,
        "new_rows_share": pl.Float64,
        "new_values_share": pl.Float64,
        "test_values": pl.Int64,
        "train_values": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema).sort("new_rows_share", descending=True)


def duplicates(frame: pl.DataFrame, columns: list[str], labels: list[str], split: str) -> pl.DataFrame:
    """Exact duplicates on `columns`: extra copies, groups, and groups (rows) whose labels disagree."""
    label_key = pl.struct(labels).hash(seed=0) if labels else pl.lit(0, dtype=pl.UInt64)
    groups = (
        frame.select(pl.struct(columns).hash(seed=0).alias("key"), label_key.alias("labels"))
        .group_by("key")
        .agg(pl.len().alias("n"), pl.col("labels").n_unique().alias("label_sets"))
        .filter(pl.col("n") > 1)
    )
    conflicting = groups.filter(pl.col("label_sets") > 1)
    return pl.DataFrame(
        {
            "split": [split],
            "rows": [frame.height],
            "duplicate_groups": [groups.height],
            "duplicate_rows": [int(groups["n"].sum() - groups.height)],
            "conflicting_groups": [conflicting.height],
            "conflicting_rows": [int(conflicting["n"].sum())],
        },
        schema_overrides={"duplicate_rows": pl.Int64, "conflicting_rows": pl.Int64},
    )


def adversarial(
    train: pl.DataFrame,
    test: pl.DataFrame,
    columns: list[str],
    sample_rows: int = 100_000,
    rounds: int = 100,
    seed: int = 0,
) -> pl.DataFrame:
    """A LightGBM telling train rows from test rows on samples of each: held-out AUC and gain share per column."""
    a, b = _sample(train.select(columns), sample_rows, seed), _sample(test.select(columns), sample_rows, seed)
    x = pl.concat([a, b], how="vertical_relaxed")
    y = np.r_[np.zeros(a.height), np.ones(b.height)]
    idx_fit, idx_hold = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
    params = {
        "objective": "binary",
        "learning_rate": 0.1,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "verbosity": -1,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "is_unbalance": True,
        "num_threads": 1 if len(y) < 50_000 else 0,  # threads only pay off on larger samples
    }
    x_np = x.to_numpy().astype(np.float64)
    booster = lgb.train(params, lgb.Dataset(x_np[idx_fit], y[idx_fit], feature_name=columns), num_boost_round=rounds)
    auc = float(roc_auc_score(y[idx_hold], booster.predict(x_np[idx_hold])))
    gain = booster.feature_importance("gain")
    total = gain.sum() or 1.0
    return pl.DataFrame(
        {
            "column": columns,
            "gain_share": gain / total,
            "auc": auc,
            "train_sample": a.height,
            "test_sample": b.height,
        }
    ).sort("gain_share", "column", descending=[True, False])


def functional_dependencies(
    frame: pl.DataFrame,
    determinants: list[str],
    dependents: list[str],
    sample_rows: int | None = 300_000,
    min_rows_per_value: int = 20,
    seed: int = 0,
) -> pl.DataFrame:
    """Pairs (A, B) where B is a function of A (one B value per A value) on all rows.

    Candidates come from a sample (A needs on average `min_rows_per_value` sample rows per value, else any
    column looks like a function of it; constant B are left out), then each is checked on the whole frame.
    """
    schema = {
        "determinant": pl.String,
        "dependent": pl.String,
        "determinant_values": pl.Int64,
        "dependent_values": pl.Int64,
    }
    sample = _sample(frame.select(list(dict.fromkeys([*determinants, *dependents]))), sample_rows, seed)
    distinct = dict(zip(sample.columns, sample.select(pl.all().n_unique()).row(0), strict=True))
    candidates: dict[str, list[str]] = {}
    for det in determinants:
        if distinct[det] < 2 or distinct[det] * min_rows_per_value > sample.height:
            continue
        others = [c for c in dict.fromkeys(dependents) if c != det and distinct[c] > 1]
        if not others:
            continue
        worst = sample.group_by(det).agg(pl.col(others).n_unique()).select(pl.col(others).max()).row(0)
        found = [c for c, n in zip(others, worst, strict=True) if n == 1]
        if found:
            candidates[det] = found
    named = list(dict.fromkeys([*determinants, *dependents]))
    totals = dict(zip(named, frame.select(pl.col(named).n_unique()).row(0), strict=True))
    rows = []
    for det, deps in candidates.items():
        worst = frame.group_by(det).agg(pl.col(deps).n_unique()).select(pl.col(deps).max()).row(0)
        rows += [
            {"determinant": det, "dependent": d, "determinant_values": totals[det], "dependent_values": totals[d]}
            for d, n in zip(deps, worst, strict=True)
            if n == 1
        ]
    return pl.DataFrame(rows, schema=schema).sort("determinant", "dependent")


def entity_groups(dependencies: pl.DataFrame) -> pl.DataFrame:
    """Candidate entities: each key column with the columns constant within it, the widest group first."""
    return (
        dependencies.group_by("determinant")
        .agg(
            pl.col("determinant_values").first().alias("key_values"),
            pl.len().alias("n_columns"),
            pl.col("dependent").sort().str.join(", ").alias("columns"),
        )
        .rename({"determinant": "key"})
        .sort("n_columns", "key", descending=[True, False])
    )


def entity_discovery(
    train: pl.DataFrame, test: pl.DataFrame, profile: Profile, sample_rows: int = 200_000, seed: int = 0
) -> DiscoveryReport:
    """Entity keys discovered on a sample of train and test rows together (each split in proportion to its size)."""
    columns = [c for c in (profile.day_column, *profile.feature_columns) if c in train.columns]
    total = max(train.height + test.height, 1)
    parts = [
        _sample(
            frame.select([c for c in columns if c in frame.columns]), round(sample_rows * frame.height / total), seed
        )
        for frame in (train, test)
    ]
    return discover_entities(pl.concat(parts, how="diagonal_relaxed"), profile, sample_rows, seed)
