"""Batches: static shapes, every example once per epoch, a seeded order, no real token cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpo_service.core.definition import DatasetSpec, ModelSpec
from hpo_service.data import load_labelled_data
from hpo_service.training.batches import (
    Batch,
    TensorData,
    TensorSplit,
    eval_batches,
    shape_buckets,
    split_tensors,
    steps_per_epoch,
    train_batches,
)
from hpo_service.training.modeling import tokenize

PAD = 0


def synthetic_split(n: int, max_len: int, seed: int = 0, with_types: bool = True) -> TensorSplit:
    """``n`` examples of random lengths 1..max_len whose tokens all equal ``100 + index``, so a
    row tells which example it is and how many of its tokens survived."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    ids = [[100 + i] * int(length) for i, length in enumerate(lengths)]
    types = [[1] * int(length) for length in lengths] if with_types else None
    return split_tensors(ids, types, [i % 3 for i in range(n)], max_len, PAD)


def real_examples(batch: Batch) -> list[int]:
    rows = batch.weights > 0
    return [int(x) - 100 for x in batch.input_ids[rows, 0]]


def test_shape_buckets_are_few_and_end_at_the_maximum() -> None:
    assert shape_buckets(128) == (16, 32, 48, 64, 96, 128)
    assert shape_buckets(100) == (16, 32, 48, 64, 96, 100)
    assert shape_buckets(8) == (8,)
    assert len(shape_buckets(512)) <= 10


@pytest.mark.parametrize(("n", "batch_size"), [(203, 16), (16, 16), (5, 8)])
def test_every_train_batch_has_batch_size_rows_and_a_bucket_length(n: int, batch_size: int) -> None:
    split = synthetic_split(n, 100)
    buckets = shape_buckets(100)
    batches = train_batches(split, batch_size, seed=1, epoch=0)
    assert len(batches) == -(-n // batch_size)
    for batch in batches:
        rows, length = batch.input_ids.shape
        assert rows == batch_size and length in buckets
        assert batch.attention_mask.shape == batch.token_type_ids.shape == (rows, length)
        assert batch.labels.shape == batch.weights.shape == (batch_size,)
        assert batch.real_rows == int(batch.weights.sum())


def test_every_example_appears_exactly_once_per_epoch() -> None:
    split = synthetic_split(203, 100)
    for epoch in range(3):
        seen = [i for b in train_batches(split, 16, seed=7, epoch=epoch) for i in real_examples(b)]
        assert sorted(seen) == list(range(203))


def test_order_is_fixed_by_seed_and_epoch() -> None:
    split = synthetic_split(203, 100)

    def order(seed: int, epoch: int) -> list[int]:
        return [i for b in train_batches(split, 16, seed, epoch) for i in real_examples(b)]

    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(4, 0)
    assert order(3, 0) != order(3, 1)


def test_filler_rows_weigh_nothing_and_copy_real_rows() -> None:
    split = synthetic_split(21, 40)
    last = [b for b in train_batches(split, 8, seed=0, epoch=0) if b.real_rows < 8]
    assert len(last) == 1 and last[0].real_rows == 5
    batch = last[0]
    assert batch.weights.tolist() == [1.0] * 5 + [0.0] * 3
    real = set(batch.input_ids[:5, 0].tolist())
    assert set(batch.input_ids[5:, 0].tolist()) <= real  # no fully masked row
    assert bool((batch.attention_mask.sum(dim=1) > 0).all())


def test_no_real_token_is_cut_and_masks_cover_exactly_the_tokens() -> None:
    split = synthetic_split(150, 100)
    for batch in [*train_batches(split, 16, 0, 0), *eval_batches(split, 64)]:
        for row in range(batch.input_ids.shape[0]):
            example = int(batch.input_ids[row, 0]) - 100
            length = int(split.lengths[example])
            assert batch.attention_mask[row].tolist() == [1] * length + [0] * (
                batch.input_ids.shape[1] - length
            )
            assert batch.input_ids[row, :length].tolist() == [100 + example] * length
            assert int(batch.labels[row]) == example % 3


def test_length_grouping_pads_less_than_random_batches() -> None:
    split = synthetic_split(800, 128)
    padded = sum(b.input_ids.numel() for b in train_batches(split, 16, 0, 0))
    assert padded < 0.75 * 800 * 128


def test_eval_batches_cover_every_example_once_sorted_by_length() -> None:
    split = synthetic_split(130, 60, with_types=False)
    batches = eval_batches(split, 64)
    assert [b.real_rows for b in batches] == [64, 64, 2]
    assert all(b.input_ids.shape[0] == 64 and b.token_type_ids is None for b in batches)
    seen = [i for b in batches for i in real_examples(b)]
    assert sorted(seen) == list(range(130))
    lengths = split.lengths[seen].tolist()
    assert lengths == sorted(lengths)


@pytest.mark.parametrize(
    ("n", "batch_size", "accumulation", "steps"),
    [(100, 16, 1, 7), (100, 16, 2, 4), (96, 16, 3, 2), (5, 16, 4, 1)],
)
def test_steps_per_epoch(n: int, batch_size: int, accumulation: int, steps: int) -> None:
    assert steps_per_epoch(n, batch_size, accumulation) == steps


def test_tokenize_makes_padded_tensors_truncated_to_the_maximum(
    tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]
) -> None:
    train, dev = sentiment_files
    data = load_labelled_data(DatasetSpec(train=str(train), eval=str(dev)))
    tensors = tokenize(ModelSpec(name=str(tiny_models["bert"])), data, max_seq_length=8)
    assert isinstance(tensors, TensorData)
    assert tensors.max_seq_length == 8 and tensors.label_names == data.label_names
    for split, frame in ((tensors.train, data.train), (tensors.eval, data.eval)):
        assert len(split) == len(frame)
        assert split.input_ids.dtype == torch.int64 and split.input_ids.shape[1] == 8
        assert int(split.lengths.max()) == 8  # the sentences are longer: truncated
        assert split.labels.tolist() == [int(x) for x in frame["label"]]
        short = int(split.lengths.argmin())
        assert int(split.input_ids[short, -1]) == tensors.pad_token_id
