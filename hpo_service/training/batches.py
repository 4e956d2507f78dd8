"""Token ids as tensors, tokenized once per study, and the static-shape batches trials train on.

Every training batch has exactly ``batch_size`` rows (missing rows are weight-0 copies of real
ones) and a sequence length from ``shape_buckets``, so a trial sees only a handful of shapes:
compiled graphs and CUDA graphs are reused instead of rebuilt per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Length-bucketed sampling sorts examples by length within chunks of this many batches.
SORT_CHUNK_BATCHES = 50


@dataclass(frozen=True)
class TensorSplit:
    """One split: ``input_ids`` [N, width] right-padded with the pad id, ``lengths`` [N] (real
    tokens per example), ``labels`` [N], ``token_type_ids`` [N, width] if the tokenizer has them."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor | None
    lengths: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> TensorSplit:
        """The split on ``device`` (once per trial, so batches are gathered there)."""
        types = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return TensorSplit(
            self.input_ids.to(device), types, self.lengths.to(device), self.labels.to(device)
        )


@dataclass(frozen=True)
class TensorData:
    """Both splits of a study's data; shared by every trial (Ray object store)."""

    train: TensorSplit
    eval: TensorSplit
    label_names: list[str]
    max_seq_length: int
    pad_token_id: int


@dataclass(frozen=True)
class Batch:
    """``input_ids``, ``attention_mask`` (1 real token, 0 pad), ``token_type_ids`` [B, L];
    ``labels`` [B]; ``weights`` [B] (1.0 real row, 0.0 filler row); ``real_rows``: their count,
    known on the host so that loss scaling needs no device sync."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor
    weights: torch.Tensor
    real_rows: int

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``, copied without blocking the host."""
        types = self.token_type_ids
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            token_type_ids=None if types is None else types.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            weights=self.weights.to(device, non_blocking=True),
            real_rows=self.real_rows,
        )


def shape_buckets(max_seq_length: int) -> tuple[int, ...]:
    """The sequence lengths batches are padded to: 16, 32, 48, 64, 96, 128, 192, … (each power
    of two from 32 and 1.5 times it) below ``max_seq_length``, and ``max_seq_length`` itself."""
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be at least 1, got {max_seq_length}")
    candidates = [16]
    power = 32
    while power < max_seq_length:
        candidates += [power, power * 3 // 2]
        power *= 2
    return tuple(sorted({c for c in candidates if c < max_seq_length} | {max_seq_length}))


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"a sequence of {length} tokens is longer than every bucket {buckets}")


def split_tensors(
    ids: list[list[int]],
    token_types: list[list[int]] | None,
    labels: list[int],
    max_seq_length: int,
    pad_token_id: int,
) -> TensorSplit:
    """A ``TensorSplit`` from tokenized examples (each at most ``max_seq_length`` tokens); its
    width is the bucket that holds the longest one."""
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    longest = int(lengths.max()) if len(ids) else 1
    if longest > max_seq_length:
        raise ValueError(f"an example has {longest} tokens, over max_seq_length {max_seq_length}")
    width = bucket_for(longest, shape_buckets(max_seq_length))

    def padded(rows: list[list[int]], fill: int) -> torch.Tensor:
        array = np.full((len(rows), width), fill, dtype=np.int64)
        for i, row in enumerate(rows):
            array[i, : len(row)] = row
        return torch.from_numpy(array)

    return TensorSplit(
        input_ids=padded(ids, pad_token_id),
        token_type_ids=None if token_types is None else padded(token_types, 0),
        lengths=torch.from_numpy(lengths),
        labels=torch.tensor(labels, dtype=torch.int64),
    )


def steps_per_epoch(n_examples: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps per epoch; a last, shorter accumulation group still steps (as Trainer)."""
    batches = math.ceil(n_examples / batch_size)
    return max(math.ceil(batches / accumulation), 1)


def train_batches(split: TensorSplit, batch_size: int, seed: int, epoch: int) -> list[Batch]:
    """One epoch's batches, the same for the same ``(seed, epoch)``: shuffled, examples of
    similar length grouped (sorted within chunks of ``SORT_CHUNK_BATCHES`` batches), batch order
    shuffled. Every batch has ``batch_size`` rows; built on the split's device."""
    rng = np.random.default_rng([seed, epoch])
    lengths = split.lengths.cpu().numpy()
    order = rng.permutation(len(split))
    chunk = SORT_CHUNK_BATCHES * batch_size
    groups: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return batches_of(split, [groups[i] for i in rng.permutation(len(groups))], batch_size)


def eval_batches(split: TensorSplit, batch_size: int) -> list[Batch]:
    """Batches of ``batch_size`` rows in order of length (little padding); built on the split's
    device. Filler rows have weight 0."""
    order = np.argsort(split.lengths.cpu().numpy(), kind="stable")
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches_of(split, groups, batch_size)


def batches_of(split: TensorSplit, groups: list[np.ndarray], batch_size: int) -> list[Batch]:
    """One batch of ``batch_size`` rows per group of example indices, each padded to the
    smallest bucket that holds its longest example. Rows missing from a group are weight-0
    copies of its real rows (a fully masked row could turn attention into NaN). Indices and
    weights go to the split's device in one copy."""
    if any(not 0 < len(group) <= batch_size for group in groups):
        raise ValueError(f"every group needs 1 to {batch_size} examples")
    if not groups:
        return []
    lengths = split.lengths.cpu().numpy()
    buckets = shape_buckets(int(split.input_ids.shape[1]))
    device = split.input_ids.device
    indices = torch.from_numpy(np.stack([np.resize(g, batch_size) for g in groups]))
    weights = torch.arange(batch_size)[None, :] < torch.tensor([len(g) for g in groups])[:, None]
    indices, weights = indices.to(device), weights.float().to(device)
    positions = torch.arange(buckets[-1], device=device)
    batches = []
    for i, group in enumerate(groups):
        width = bucket_for(int(lengths[group].max()), buckets)
        index = indices[i]
        types = split.token_type_ids
        batches.append(
            Batch(
                input_ids=split.input_ids[index, :width],
                attention_mask=(positions[:width] < split.lengths[index, None]).long(),
                token_type_ids=None if types is None else types[index, :width],
                labels=split.labels[index],
                weights=weights[i],
                real_rows=len(group),
            )
        )
    return batches
