"""Reading and checking a study's labelled text: local CSV/TSV/JSONL/Parquet files or a hub name.

Every problem is a ``DefinitionError`` naming the ``dataset.*`` field at fault, raised before
any trial runs.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from hpo_service.core.definition import DatasetSpec
from hpo_service.core.errors import DefinitionError

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
SPLIT_SEED = 0
# A label column whose values are mostly distinct (over more than MANY_LABELS labels) is text.
MAX_DISTINCT_SHARE, MANY_LABELS = 0.5, 20
_INTEGER = re.compile(r"-?[0-9]+")  # labels read as whole numbers (ASCII digits only)


@dataclass(frozen=True)
class LabelledData:
    """Train and eval rows with columns ``text`` (``text_pair``) and ``label`` (an id)."""

    train: pd.DataFrame
    eval: pd.DataFrame
    label_names: list[str]

    @property
    def is_pair(self) -> bool:
        return "text_pair" in self.train.columns


def load_labelled_data(spec: DatasetSpec) -> LabelledData:
    """Read, check, split and cap the study's data; labels become ids 0..n-1."""
    if spec.hub is not None:
        train, evaluation = _read_hub(spec)
    else:
        assert spec.train is not None  # the definition guarantees train or hub
        train = _read_file(spec, "train", spec.train)
        evaluation = _read_file(spec, "eval", spec.eval) if spec.eval else None
    train = _select_columns(spec, "train", train)
    label_names = _label_names(train)
    if evaluation is None:
        train, evaluation = _hold_out(spec, train)  # train keeps an example of every label
    else:
        evaluation = _select_columns(spec, "eval", evaluation)
    unseen = sorted(set(evaluation["label"]) - set(label_names))
    if unseen:
        raise DefinitionError(
            "dataset.label_field",
            f"eval has labels that train lacks: {unseen[:5]} (train labels: {_some(label_names)})",
        )
    ids = {name: i for i, name in enumerate(label_names)}
    train = _cap(train, spec.max_train_samples)
    kept = set(train["label"])
    if len(kept) < len(label_names):
        raise DefinitionError(
            "dataset.max_train_samples",
            f"the {len(train)} train row(s) it keeps hold labels {_some(sorted(kept), 5)} only, of "
            f"{_some(label_names)}: no trial could learn the others; raise it",
        )
    train = train.assign(label=lambda d: d["label"].map(ids))
    evaluation = _cap(evaluation, spec.max_eval_samples).assign(label=lambda d: d["label"].map(ids))
    return LabelledData(train=train, eval=evaluation, label_names=label_names)


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """SHA-256 of the data files' names and bytes (of the name and splits, for a hub dataset)."""
    digest = hashlib.sha256()
    if spec.hub is not None:
        digest.update(f"hub:{spec.hub}:{spec.hub_config}:{spec.train_split}".encode())
        digest.update(f":{spec.eval_split}:{spec.eval_fraction}".encode())
    for location in (spec.train, spec.eval):
        if location is None:
            continue
        path = Path(location).expanduser()
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _read_file(spec: DatasetSpec, field: str, location: str) -> pd.DataFrame:
    path = Path(location).expanduser()
    if not path.is_file():
        raise DefinitionError(f"dataset.{field}", f"no such file: {location}")
    kind = spec.format if spec.format != "auto" else _SUFFIX_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DefinitionError(
            "dataset.format",
            f"cannot tell the format of {path.name}; set `format` to one of csv, tsv, jsonl, "
            "parquet",
        )
    try:
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(
                path,
                sep="\t" if kind == "tsv" else ",",
                header=None if spec.column_names else 0,
                dtype=str,
                keep_default_na=False,
                # GLUE's TSVs hold unbalanced quotes inside sentences.
                quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL,
            )
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        message = f"cannot read {path.name} as {kind}: {error}"
        raise DefinitionError(f"dataset.{field}", message) from error
    if spec.column_names is not None and kind in ("csv", "tsv"):
        # Named here rather than by pandas, which takes surplus leading columns as the index.
        if len(spec.column_names) != frame.shape[1]:
            raise DefinitionError(
                "dataset.column_names",
                f"{path.name} has {frame.shape[1]} columns, but column_names names "
                f"{len(spec.column_names)}: {spec.column_names}",
            )
        frame.columns = spec.column_names
    header = [str(c) for c in frame.columns]
    frame.columns = [c.strip() for c in header]
    used = {spec.label_field, *spec.text_fields}
    clashes = sorted({c for c in frame.columns if c in used and list(frame.columns).count(c) > 1})
    if clashes:
        raise DefinitionError(
            f"dataset.{field}",
            f"{path.name} has duplicate columns {clashes} once spaces around names are trimmed "
            f"(header: {[c for c in header if c.strip() in clashes]}); rename or drop one",
        )
    if frame.empty:
        raise DefinitionError(f"dataset.{field}", f"{location} holds no rows")
    return frame


def _read_hub(spec: DatasetSpec) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    try:
        import datasets
    except ImportError as error:
        raise DefinitionError(
            "dataset.hub",
            "hub datasets need the `datasets` package: pip install 'hpo-service[hub]'",
        ) from error
    try:
        loaded = datasets.load_dataset(spec.hub, spec.hub_config)
    except Exception as error:  # datasets raises many kinds; all mean "cannot load this name"
        raise DefinitionError("dataset.hub", f"cannot load {spec.hub!r}: {error}") from error
    if spec.train_split not in loaded:
        raise DefinitionError(
            "dataset.train_split", f"{spec.train_split!r} not in {sorted(loaded)} of {spec.hub}"
        )
    train = loaded[spec.train_split].to_pandas()
    if spec.eval_fraction is not None:
        return train, None
    if spec.eval_split not in loaded:
        raise DefinitionError(
            "dataset.eval_split", f"{spec.eval_split!r} not in {sorted(loaded)} of {spec.hub}"
        )
    return train, loaded[spec.eval_split].to_pandas()


def _select_columns(spec: DatasetSpec, split: str, frame: pd.DataFrame) -> pd.DataFrame:
    columns = list(frame.columns)
    wanted = {"label": ("dataset.label_field", spec.label_field)}
    for i, name in enumerate(spec.text_fields):
        wanted["text" if i == 0 else "text_pair"] = (f"dataset.text_fields.{i}", name)
    for field, column in wanted.values():
        if column not in columns:
            raise DefinitionError(
                field, f"column {column!r} is not in the {split} data (columns: {columns})"
            )
    selected = frame[[column for _, column in wanted.values()]].copy()
    selected.columns = list(wanted)
    for key, (field, column) in wanted.items():  # a missing cell, or one of blanks only
        values = selected[key]
        blank = values.isna() | (values.astype(str).str.strip() == "")
        if blank.any():
            rows = selected.index[blank]
            what = "a label" if key == "label" else f"text in {column!r}"
            raise DefinitionError(
                field, f"{len(rows)} {split} row(s) lack {what} (first: data row {rows[0] + 1})"
            )
    selected["label"] = selected["label"].astype(str).str.strip()
    for column in ("text", "text_pair"):
        if column in selected:
            selected[column] = selected[column].astype(str)
    return selected.reset_index(drop=True)


def _hold_out(spec: DatasetSpec, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``eval_fraction`` (default 0.1) of train off as eval, stratified by label.

    The split is random instead when a label has a single example or eval has fewer rows than
    there are labels. Held-out rows whose label then has no example left in train go back to
    train (so eval may come out a little smaller), as train must show every label.
    """
    fraction = spec.eval_fraction or 0.1
    counts = train["label"].value_counts()
    n_eval = round(len(train) * fraction)
    n_train = len(train) - n_eval
    if n_eval < 1 or n_train < 1:
        raise DefinitionError(
            "dataset.eval_fraction",
            f"holding out {fraction} of {len(train)} rows leaves a split empty",
        )
    if n_train < len(counts):
        raise DefinitionError(
            "dataset.eval_fraction",
            f"holding out {fraction} of {len(train)} rows leaves {n_train} train row(s), too few "
            f"for one example of each of the {len(counts)} labels; lower eval_fraction or give "
            "an eval file",
        )
    stratify = train["label"] if counts.min() >= 2 and n_eval >= len(counts) else None
    kept, held = train_test_split(
        train, test_size=n_eval, random_state=SPLIT_SEED, stratify=stratify
    )
    orphaned = ~held["label"].isin(set(kept["label"]))
    if orphaned.all():
        raise DefinitionError(
            "dataset.eval_fraction",
            f"holding out {fraction} of {len(train)} rows leaves eval empty: its {len(held)} "
            f"row(s) hold every example of label(s) {sorted(set(held['label']))[:5]}, which "
            "train needs; give an eval file, or enough rows to stratify the split (an eval row "
            f"for each of the {len(counts)} labels, and 2 or more examples of each)",
        )
    kept = pd.concat([kept, held[orphaned]])
    return kept.reset_index(drop=True), held[~orphaned].reset_index(drop=True)


def _label_names(train: pd.DataFrame) -> list[str]:
    names = list(train["label"].unique())
    if len(names) < 2:
        raise DefinitionError(
            "dataset.label_field", f"classification needs 2 or more labels, but got {names}"
        )
    fractions = [n for n in names if _is_number(n) and not float(n).is_integer()]
    if fractions and all(_is_number(n) for n in names):
        smallest = ", ".join(sorted(fractions, key=float)[:3])
        raise DefinitionError(
            "dataset.label_field",
            f"labels are numbers with fractions ({smallest}, ...; "
            f"{len(names)} distinct), a regression target: hpo-service fine-tunes classifiers, "
            "whose labels are whole numbers or names",
        )
    if len(names) > MAX_DISTINCT_SHARE * len(train) and len(names) > MANY_LABELS:
        raise DefinitionError(
            "dataset.label_field",
            f"{len(names)} distinct labels over {len(train)} train rows (first: "
            f"{_some(sorted(names), 3)}): a label column holds a few classes, each many times; "
            "is it the text column?",
        )
    if all(_INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _some(labels: list[str], shown: int = 10) -> str:
    """The first few labels, and how many there are when that is not all of them."""
    more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
    return f"{labels[:shown]}{more}"


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _cap(frame: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=SPLIT_SEED).reset_index(drop=True)
