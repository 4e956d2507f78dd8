"""Reading labelled text: the real GLUE files, other formats, splits and caps, and every problem
reported as a DefinitionError on the field at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hpo_service.core.definition import DatasetSpec
from hpo_service.core.errors import DefinitionError
from hpo_service.data import LabelledData, load_labelled_data

COLA_COLUMNS = ["source", "label", "mark", "sentence"]


def rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    return sorted(frame.itertuples(index=False, name=None))


# --- The GLUE files ------------------------------------------------------------------------------


def test_sst2(shared_data: Path) -> None:
    data = load_labelled_data(
        DatasetSpec(
            train=str(shared_data / "SST-2/train.tsv"), eval=str(shared_data / "SST-2/dev.tsv")
        )
    )
    assert (len(data.train), len(data.eval)) == (67349, 872)
    assert data.label_names == ["0", "1"]
    assert not data.is_pair
    assert data.train["text"].iloc[0].strip() == "hide new secretions from the parental units"
    assert data.train["label"].iloc[0] == 0
    assert int(data.train["label"].sum()) == 37569  # the positive ('1') sentences
    assert set(data.eval["label"]) == {0, 1}


def test_header_with_trailing_space_in_a_column_name(tmp_path: Path) -> None:
    # SST-2-style TSV whose header is "sentence \tlabel " (GLUE's files pad with spaces).
    path = tmp_path / "train.tsv"
    path.write_text("sentence \tlabel \n" + "".join(f"text {i} \t{i % 2}\n" for i in range(20)))
    data = load_labelled_data(DatasetSpec(train=str(path), eval_fraction=0.25))
    assert data.label_names == ["0", "1"]
    assert len(data.train) + len(data.eval) == 20


def test_cola_without_header(shared_data: Path) -> None:
    data = load_labelled_data(
        DatasetSpec(
            train=str(shared_data / "CoLA/train.tsv"),
            eval=str(shared_data / "CoLA/dev.tsv"),
            column_names=COLA_COLUMNS,
        )
    )
    assert (len(data.train), len(data.eval)) == (8551, 1043)  # no row lost as a header
    assert data.label_names == ["0", "1"]
    assert data.train["text"].iloc[0] == (
        "Our friends won't buy this analysis, let alone the next one we propose."
    )
    assert data.train["label"].iloc[0] == 1
    assert int(data.train["label"].sum()) == 6023  # the acceptable ('1') sentences


def test_rte_sentence_pairs_with_string_labels(shared_data: Path) -> None:
    data = load_labelled_data(
        DatasetSpec(
            train=str(shared_data / "RTE/train.tsv"),
            eval=str(shared_data / "RTE/dev.tsv"),
            text_fields=["sentence1", "sentence2"],
        )
    )
    assert (len(data.train), len(data.eval)) == (2490, 277)
    assert data.is_pair
    assert data.label_names == ["entailment", "not_entailment"]
    first = data.train.iloc[0]
    assert first["text"] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert first["text_pair"] == "Weapons of Mass Destruction Found in Iraq."
    assert first["label"] == 1  # not_entailment
    assert set(data.train["label"]) == set(data.eval["label"]) == {0, 1}


def test_max_samples_cap_both_splits(shared_data: Path) -> None:
    spec = DatasetSpec(
        train=str(shared_data / "SST-2/train.tsv"),
        eval=str(shared_data / "SST-2/dev.tsv"),
        max_train_samples=100,
        max_eval_samples=50,
    )
    data = load_labelled_data(spec)
    assert (len(data.train), len(data.eval)) == (100, 50)
    assert data.label_names == ["0", "1"]
    pd.testing.assert_frame_equal(data.train, load_labelled_data(spec).train)


def test_cap_above_the_row_count_keeps_every_row(shared_data: Path) -> None:
    data = load_labelled_data(
        DatasetSpec(
            train=str(shared_data / "RTE/train.tsv"),
            eval=str(shared_data / "RTE/dev.tsv"),
            text_fields=["sentence1", "sentence2"],
            max_eval_samples=10_000,
        )
    )
    assert len(data.eval) == 277


def test_eval_fraction_splits_train_deterministically(shared_data: Path) -> None:
    whole = load_labelled_data(
        DatasetSpec(
            train=str(shared_data / "RTE/train.tsv"),
            eval=str(shared_data / "RTE/dev.tsv"),
            text_fields=["sentence1", "sentence2"],
        )
    )
    spec = DatasetSpec(
        train=str(shared_data / "RTE/train.tsv"),
        eval_fraction=0.2,
        text_fields=["sentence1", "sentence2"],
    )
    split = load_labelled_data(spec)
    assert (len(split.train), len(split.eval)) == (1992, 498)
    # Every training row lands in exactly one of the two splits.
    assert rows(pd.concat([split.train, split.eval])) == rows(whole.train)
    again = load_labelled_data(spec)
    pd.testing.assert_frame_equal(split.train, again.train)
    pd.testing.assert_frame_equal(split.eval, again.eval)
    # Stratified: both labels in the held-out share about as often as in train.
    share = split.eval["label"].mean()
    assert abs(share - whole.train["label"].mean()) < 0.01


def _labelled_csv(path: Path, labels: list[str]) -> str:
    path.write_text("sentence,label\n" + "".join(f"text {i},{x}\n" for i, x in enumerate(labels)))
    return str(path)


def test_held_out_split_keeps_a_label_with_one_example_in_train(tmp_path: Path) -> None:
    # A label with a single example cannot be stratified; wherever it sits in the file, it stays
    # in train (the only place a classifier can learn it) and eval keeps the rest of its share.
    for n in (12, 20):
        for position in range(n + 1):
            labels = [["a", "b"][i % 2] for i in range(n)]
            labels.insert(position, "c")
            train = _labelled_csv(tmp_path / "train.csv", labels)
            data = load_labelled_data(DatasetSpec(train=train, eval_fraction=0.25))
            assert data.label_names == ["a", "b", "c"]
            assert set(data.train["label"]) == {0, 1, 2}, (n, position)
            share = round((n + 1) * 0.25)  # less the 'c' row where the split drew it
            assert 2 not in set(data.eval["label"]), (n, position)
            assert share - 1 <= len(data.eval) <= share, (n, position)
            assert len(data.train) + len(data.eval) == n + 1


def test_held_out_split_with_fewer_eval_rows_than_labels(tmp_path: Path) -> None:
    # 2 eval rows cannot cover 4 labels, so the split is not stratified; train still has them all.
    train = _labelled_csv(tmp_path / "train.csv", [["a", "b", "c", "d"][i % 4] for i in range(12)])
    data = load_labelled_data(DatasetSpec(train=train, eval_fraction=0.2))
    assert (len(data.train), len(data.eval)) == (10, 2)
    assert set(data.train["label"]) == {0, 1, 2, 3}


def test_held_out_split_at_one_train_row_per_label(tmp_path: Path) -> None:
    train = _labelled_csv(tmp_path / "train.csv", ["a", "a", "b", "b"])
    data = load_labelled_data(DatasetSpec(train=train, eval_fraction=0.5))
    assert sorted(data.train["label"]) == sorted(data.eval["label"]) == [0, 1]


# --- Other formats -------------------------------------------------------------------------------


def _reviews() -> pd.DataFrame:
    return pd.DataFrame(
        {"review": [f"review number {i}" for i in range(30)], "stars": [i % 3 for i in range(30)]}
    )


def _check_reviews(data: LabelledData) -> None:
    assert data.label_names == ["0", "1", "2"]
    assert (len(data.train), len(data.eval)) == (24, 6)
    assert set(data.eval["label"]) == {0, 1, 2}
    texts = set(data.train["text"]) | set(data.eval["text"])
    assert texts == {f"review number {i}" for i in range(30)}


def test_whole_numbers_written_as_decimals_are_class_names(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        "sentence,label\n" + "".join(f"text {i},{i % 2}.0\n" for i in range(20))
    )
    data = load_labelled_data(DatasetSpec(train=str(tmp_path / "train.csv")))
    assert data.label_names == ["0.0", "1.0"]


def test_negative_whole_number_labels_sort_as_numbers(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        "sentence,label\n" + "".join(f"text {i},{[10, -1, 2][i % 3]}\n" for i in range(30))
    )
    data = load_labelled_data(DatasetSpec(train=str(tmp_path / "train.csv")))
    assert data.label_names == ["-1", "2", "10"]


@pytest.mark.parametrize("odd", ["--1", "\u00b2", "+1", "\u0661"])  # ², Arabic-Indic one
def test_labels_that_only_look_like_integers_are_class_names(tmp_path: Path, odd: str) -> None:
    (tmp_path / "train.csv").write_text(
        "sentence,label\n" + "".join(f"text {i},{['1', odd][i % 2]}\n" for i in range(20)),
        encoding="utf-8",
    )
    data = load_labelled_data(DatasetSpec(train=str(tmp_path / "train.csv")))
    assert data.label_names == sorted(["1", odd])
    names = [data.label_names[i] for i in pd.concat([data.train, data.eval])["label"]]
    assert sorted(names) == sorted(["1", odd] * 10)


def test_duplicate_columns_the_study_does_not_use_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        "sentence,label,note, note\n" + "".join(f"text {i},{i % 2},x,y\n" for i in range(20))
    )
    data = load_labelled_data(DatasetSpec(train=str(tmp_path / "train.csv")))
    assert data.label_names == ["0", "1"]
    assert len(data.train) + len(data.eval) == 20


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    _reviews().to_json(path, orient="records", lines=True)
    spec = DatasetSpec(
        train=str(path), text_fields=["review"], label_field="stars", eval_fraction=0.2
    )
    _check_reviews(load_labelled_data(spec))


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    _reviews().to_parquet(path)
    spec = DatasetSpec(
        train=str(path), text_fields=["review"], label_field="stars", eval_fraction=0.2
    )
    _check_reviews(load_labelled_data(spec))


def test_explicit_format_for_an_unusual_suffix(tmp_path: Path) -> None:
    path = tmp_path / "reviews.txt"
    _reviews().to_json(path, orient="records", lines=True)
    spec = DatasetSpec(
        train=str(path),
        format="jsonl",
        text_fields=["review"],
        label_field="stars",
        eval_fraction=0.2,
    )
    _check_reviews(load_labelled_data(spec))


# --- Problems ------------------------------------------------------------------------------------

TRAIN_CSV = "sentence,label\n" + "".join(f"text {i},{['neg', 'pos'][i % 2]}\n" for i in range(20))
EVAL_CSV = "sentence,label\ngood,pos\nbad,neg\nso-so,neutral\n"
ONE_LABEL_CSV = "sentence,label\n" + "".join(f"text {i},pos\n" for i in range(20))

# Each case: files to write, the DatasetSpec (file names are under tmp_path), the field at fault,
# and texts its message must show.
BAD_DATA = [
    pytest.param(
        {},
        {"train": "missing.csv"},
        "dataset.train",
        ["missing.csv"],
        id="train-file-missing",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV},
        {"train": "train.csv", "eval": "dev.csv"},
        "dataset.eval",
        ["dev.csv"],
        id="eval-file-missing",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV},
        {"train": "train.csv", "label_field": "target"},
        "dataset.label_field",
        ["'target'", "'sentence'", "'label'"],
        id="label-field-missing",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV},
        {"train": "train.csv", "text_fields": ["text"]},
        "dataset.text_fields.0",
        ["'text'", "'sentence'", "'label'"],
        id="text-field-missing",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV},
        {"train": "train.csv", "text_fields": ["sentence", "hypothesis"]},
        "dataset.text_fields.1",
        ["'hypothesis'"],
        id="second-text-field-missing",
    ),
    pytest.param(
        {"train.csv": "sentence,label\n"},
        {"train": "train.csv"},
        "dataset.train",
        ["train.csv"],
        id="header-only-csv",
    ),
    pytest.param(
        {"train.csv": ONE_LABEL_CSV, "dev.csv": "sentence,label\nfine,pos\n"},
        {"train": "train.csv", "eval": "dev.csv"},
        "dataset.label_field",
        ["'pos'"],
        id="single-label",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV, "dev.csv": EVAL_CSV},
        {"train": "train.csv", "eval": "dev.csv"},
        "dataset.label_field",
        ["'neutral'"],
        id="eval-label-not-in-train",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV.replace("text 3,pos", "text 3,")},
        {"train": "train.csv"},
        "dataset.label_field",
        ["train"],
        id="row-without-label",
    ),
    pytest.param(  # "text 3" is the 4th data row
        {"train.csv": TRAIN_CSV.replace("text 3,pos", "   ,pos")},
        {"train": "train.csv"},
        "dataset.text_fields.0",
        ["1 train row(s) lack text in 'sentence'", "data row 4"],
        id="row-with-blank-text",
    ),
    pytest.param(
        {
            "train.csv": "premise,hypothesis,label\n"
            + "".join(f"p {i},{'' if i == 5 else f'h {i}'},{i % 2}\n" for i in range(20))
        },
        {"train": "train.csv", "text_fields": ["premise", "hypothesis"]},
        "dataset.text_fields.1",
        ["lack text in 'hypothesis'", "data row 6"],
        id="pair-with-empty-second-text",
    ),
    pytest.param(  # an STS-B-like similarity score: 20 "classes" of one example each
        {"train.csv": "sentence,label\n" + "".join(f"text {i},{i / 4:.2f}\n" for i in range(20))},
        {"train": "train.csv"},
        "dataset.label_field",
        ["regression", "numbers with fractions", "distinct"],
        id="continuous-labels",
    ),
    pytest.param(
        {"train.csv": "sentence,label, label\n" + "".join(f"t {i},{i % 2},x\n" for i in range(20))},
        {"train": "train.csv"},
        "dataset.train",
        ["train.csv", "duplicate columns ['label']", "' label'"],
        id="columns-equal-once-trimmed",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV, "dev.csv": "sentence ,sentence,label\ngood,fine,pos\n"},
        {"train": "train.csv", "eval": "dev.csv"},
        "dataset.eval",
        ["dev.csv", "duplicate columns ['sentence']", "'sentence '"],
        id="eval-columns-equal-once-trimmed",
    ),
    pytest.param(
        {"train.csv": "sentence,label\nw,a\nx,a\ny,b\nz,b\n"},
        {"train": "train.csv", "eval_fraction": 0.7},
        "dataset.eval_fraction",
        ["0.7 of 4 rows", "1 train row(s)", "2 labels"],
        id="held-out-share-leaves-train-too-few-rows-for-the-labels",
    ),
    pytest.param(
        {"train.csv": "sentence,label\n" + "".join(f"t {i},{i}\n" for i in range(6))},
        {"train": "train.csv"},
        "dataset.eval_fraction",
        ["0.1 of 6 rows", "5 train row(s)", "6 labels"],
        id="default-held-out-share-with-one-example-per-label",
    ),
    pytest.param(  # 2 random eval rows (too few to stratify 4 labels) take both 'c' examples
        {"train.csv": "sentence,label\n" + "".join(f"t {i},{'abcd'[i % 4]}\n" for i in range(8))},
        {"train": "train.csv", "eval_fraction": 0.2},
        "dataset.eval_fraction",
        ["leaves eval empty", "['c']", "eval file"],
        id="held-out-rows-all-needed-by-train",
    ),
    pytest.param(  # pandas would take the surplus leading column as the index
        {"train.tsv": "".join(f"{i}\ttext {i}\t{i % 2}\n" for i in range(20))},
        {"train": "train.tsv", "column_names": ["sentence", "label"]},
        "dataset.column_names",
        ["train.tsv has 3 columns", "names 2"],
        id="fewer-column-names-than-columns",
    ),
    pytest.param(
        {"train.tsv": "".join(f"text {i}\t{i % 2}\n" for i in range(20))},
        {"train": "train.tsv", "column_names": ["sentence", "label", "source"]},
        "dataset.column_names",
        ["train.tsv has 2 columns", "names 3"],
        id="more-column-names-than-columns",
    ),
    pytest.param(
        {"train.csv": TRAIN_CSV, "dev.csv": EVAL_CSV.replace("so-so,neutral\n", "")},
        {"train": "train.csv", "eval": "dev.csv", "max_train_samples": 1},
        "dataset.max_train_samples",
        ["1 train row(s) it keeps", "only", "['neg', 'pos']"],
        id="train-cap-below-the-labels",
    ),
    pytest.param(  # every sentence a class of its own
        {"train.csv": "sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(30))},
        {"train": "train.csv", "label_field": "sentence", "text_fields": ["label"]},
        "dataset.label_field",
        ["30 distinct labels over 30 train rows", "'text 0'", "is it the text column?"],
        id="label-field-names-the-text",
    ),
    pytest.param(
        {"train.txt": TRAIN_CSV},
        {"train": "train.txt"},
        "dataset.format",
        ["train.txt"],
        id="unknown-suffix",
    ),
]


@pytest.mark.parametrize(("files", "spec", "field", "shown"), BAD_DATA)
def test_bad_data_names_field_and_value(
    tmp_path: Path,
    files: dict[str, str],
    spec: dict[str, Any],
    field: str,
    shown: list[str],
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for key in ("train", "eval"):
        if key in spec:
            spec = {**spec, key: str(tmp_path / spec[key])}
    with pytest.raises(DefinitionError) as caught:
        load_labelled_data(DatasetSpec(**spec))
    assert caught.value.field == field
    for text in shown:
        assert text in str(caught.value)
