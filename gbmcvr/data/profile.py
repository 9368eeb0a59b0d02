"""Dataset profiles: column roles, labels, base values, drop list and the day split of a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys, read_toml


@dataclass(frozen=True)
class Profile:
    """Everything the toolkit knows about a dataset's layout; no other module names its columns."""

    name: str
    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    click_label: str
    install_label: str
    fit_days: tuple[int, ...]
    valid_day: int
    test_day: int
    row_id: str | None = None
    day: str | None = None
    binary: tuple[str, ...] = ()
    base_values: dict[str, float] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    separator: str = "\t"
    train_files: tuple[str, ...] = ("train/*.csv",)
    test_files: tuple[str, ...] = ("test/*.csv",)
    file_days: dict[str, int] = field(default_factory=dict)
    test_labels: str = "refuse"
    conversions: tuple[str, ...] = ()
    target_action: str | None = None
    ad_task: str | None = None
    entities: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Categorical, binary and numerical columns in profile order (the day is not a feature)."""
        return self.categorical + self.binary + self.numerical

    @property
    def labels(self) -> tuple[str, str]:
        return (self.click_label, self.install_label)

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Every label column a train file carries: click, install and any further conversion actions."""
        return self.labels + tuple(c for c in self.conversions if c not in self.labels)

    @property
    def conversion_labels(self) -> tuple[str, ...]:
        """The N conversion-action labels; the install label alone (N = 1) when none are declared."""
        return self.conversions or (self.install_label,)

    @property
    def id_column(self) -> str:
        """Row-id column in the raw store (`row_id` when the data has none and ingest numbers rows)."""
        return self.row_id or "row_id"

    @property
    def day_column(self) -> str:
        """Day column in the raw store (`day` when ingest derives it from file names)."""
        return self.day or "day"

    def kept(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        """The given columns minus the drop list."""
        return tuple(c for c in columns if c not in self.drop)

    def role(self, column: str) -> str | None:
        """The role of a column: categorical, binary, numerical, label, row_id, day, or None."""
        for role, cols in (
            ("categorical", self.categorical),
            ("binary", self.binary),
            ("numerical", self.numerical),
            ("label", self.label_columns),
        ):
            if column in cols:
                return role
        if column == self.id_column:
            return "row_id"
        if column == self.day_column:
            return "day"
        return None


_LIST_KEYS = ("categorical", "numerical", "binary", "drop", "train_files", "test_files", "conversions")


def profile_from_dict(raw: dict[str, Any], where: str) -> Profile:
    """Build and validate a Profile from a TOML-shaped dict (keys as the dataclass fields, `split` table)."""
    allowed = [f.name for f in fields(Profile) if f.name not in ("fit_days", "valid_day", "test_day")]
    check_keys(raw, [*allowed, "split"], where)
    split = raw.get("split")
    if not isinstance(split, dict):
        raise UserError(f"{where}: missing [split] table with fit_days, valid_day, test_day")
    check_keys(split, ["fit_days", "valid_day", "test_day"], f"{where} [split]")
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k != "split"}
    for key in ("name", "categorical", "numerical", "click_label", "install_label"):
        if key not in kwargs:
            raise UserError(f"{where}: missing key '{key}'")
    for key in ("fit_days", "valid_day", "test_day"):
        if key not in split:
            raise UserError(f"{where} [split]: missing key '{key}'")
    for key in _LIST_KEYS:
        if key in kwargs:
            kwargs[key] = tuple(str(c) for c in kwargs[key])
    if "entities" in kwargs:
        if not isinstance(kwargs["entities"], dict):
            raise UserError(f"{where}: [entities] must be a table of name = [columns]")
        kwargs["entities"] = {str(k): tuple(str(c) for c in v) for k, v in kwargs["entities"].items()}
    profile = Profile(
        **kwargs,
        fit_days=tuple(int(d) for d in split["fit_days"]),
        valid_day=int(split["valid_day"]),
        test_day=int(split["test_day"]),
    )
    validate_profile(profile, where)
    return profile


def validate_profile(profile: Profile, where: str) -> None:
    """Refuse a column named twice, base values or drops of unknown columns, and an incoherent split."""
    named = [profile.id_column, profile.day_column, *profile.feature_columns, *profile.label_columns]
    seen: set[str] = set()
    for col in named:
        if col in seen:
            raise UserError(f"{where}: column '{col}' is named twice")
        seen.add(col)
    for col in profile.base_values:
        if col not in profile.numerical:
            raise UserError(f"{where}: base value for '{col}', which is not a numerical column")
    for col in profile.drop:
        if col not in profile.feature_columns:
            raise UserError(f"{where}: drop list names '{col}', which is not a feature column")
    _validate_conversions(profile, where)
    for name, group in profile.entities.items():
        if not group:
            raise UserError(f"{where}: entity '{name}' names no columns")
        for col in group:
            if col not in profile.feature_columns:
                raise UserError(f"{where}: entity '{name}' names '{col}', which is not a feature column")
    if profile.test_labels not in ("refuse", "truth"):
        raise UserError(f"{where}: test_labels must be 'refuse' or 'truth', not '{profile.test_labels}'")
    if not profile.fit_days:
        raise UserError(f"{where}: fit_days is empty")
    days = {*profile.fit_days}
    if profile.valid_day in days or profile.test_day in days or profile.valid_day == profile.test_day:
        raise UserError(f"{where}: fit days, valid day and test day must not overlap")
    if profile.day is None and not profile.file_days:
        raise UserError(f"{where}: without a day column, file_days must map file names to days")


def _validate_conversions(profile: Profile, where: str) -> None:
    """Several conversion actions need a target-action and an advertising-task column among the features."""
    if not profile.conversions:
        if profile.target_action or profile.ad_task:
            raise UserError(f"{where}: target_action and ad_task need a conversions list")
        return
    for key in ("target_action", "ad_task"):
        col = getattr(profile, key)
        if col is None:
            raise UserError(f"{where}: conversions needs '{key}' (a column naming it per row)")
        if col not in profile.feature_columns:
            raise UserError(f"{where}: {key} '{col}' must be a categorical or numerical column")
    clash = set(profile.conversions) & {profile.id_column, profile.day_column, *profile.feature_columns}
    if clash or len(set(profile.conversions)) != len(profile.conversions):
        raise UserError(f"{where}: conversion label '{(sorted(clash) or profile.conversions)[0]}' named twice")


def _sharechat() -> Profile:
    """The RecSys Challenge 2023 ShareChat layout (facts from DATA.md and the paper's Tables 1-2)."""
    cols = [f"f_{i}" for i in range(80)]
    base: dict[str, float] = {}
    for ids, value in (
        ([42, *range(52, 58), 74, 75, 76], 0.03856407),
        ([*range(44, 51), 71, 72, 73], 0.57112147),
        ([60], 8.07946039),
        ([61], 0.147850899),
        ([62], 0.129299709),
        ([63], 0.355221093),
        ([77, 78, 79], 37.38457512),
    ):
        base.update({f"f_{i}": value for i in ids})
    profile = Profile(
        name="sharechat2023",
        row_id="f_0",
        day="f_1",
        categorical=tuple(cols[2:33]),
        binary=tuple(cols[33:42]),
        numerical=tuple(cols[42:80]),
        click_label="is_clicked",
        install_label="is_installed",
        base_values=base,
        drop=("f_7", "f_9", "f_23", "f_24", "f_47", "f_49"),
        fit_days=tuple(range(45, 66)),
        valid_day=66,
        test_day=67,
        # groups that jointly identify a user and an ad (3rd place, public code; DATA.md)
        entities={"user": tuple(cols[43:55]), "item": tuple(cols[64:71])},
    )
    validate_profile(profile, "sharechat2023")
    return profile


SHARECHAT = _sharechat()


def builtin_names() -> list[str]:
    """Names of the built-in profiles."""
    extra = [p.name.removesuffix(".toml") for p in resources.files("gbmcvr.defaults").iterdir()]
    return ["sharechat2023", *sorted(n.removeprefix("profile_") for n in extra if n.startswith("profile_"))]


def load_profile(spec: str | Path) -> Profile:
    """A built-in profile by name, or a custom one from a TOML file path."""
    spec = str(spec)
    if spec == "sharechat2023":
        return SHARECHAT
    packaged = resources.files("gbmcvr.defaults") / f"profile_{spec}.toml"
    if packaged.is_file():
        return profile_from_dict(read_toml(Path(str(packaged))), f"profile {spec}")
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return profile_from_dict(read_toml(path), str(path))
    raise UserError(f"unknown profile '{spec}' (built in: {', '.join(builtin_names())}; or a TOML file path)")
