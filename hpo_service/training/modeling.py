"""Models and tokenizers from ``transformers``: where they load from, dropout, tokenization."""

from __future__ import annotations

from typing import Any

from hpo_service.core.definition import ModelSpec
from hpo_service.core.errors import DefinitionError
from hpo_service.core.model_source import model_location
from hpo_service.core.training_args import dropout_fields
from hpo_service.data import LabelledData
from hpo_service.training.batches import TensorData, TensorSplit, split_tensors


def dropout_overrides(config: Any, dropout: float | None) -> dict[str, float]:
    """The config fields to set for one ``dropout`` value; raises if the model has none."""
    if dropout is None:
        return {}
    fields = dropout_fields(config.model_type)
    if not all(hasattr(config, f) for f in fields):
        raise DefinitionError(
            "parameters.dropout",
            f"model type {config.model_type!r} has no dropout fields {list(fields)}; "
            "leave `dropout` out of the parameters for this model",
        )
    return dict.fromkeys(fields, dropout)


def model_type(spec: ModelSpec) -> str:
    """The model's family as its config names it (``bert``, ``roberta``, ``albert``, …)."""
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(model_location(spec), revision=spec.revision).model_type)


def load_config(spec: ModelSpec, label_names: list[str], dropout: float | None = None) -> Any:
    """The model's config for ``len(label_names)`` labels with dropout set."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_location(spec), revision=spec.revision)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    for field, value in dropout_overrides(config, dropout).items():
        setattr(config, field, value)
    return config


def load_model(spec: ModelSpec, label_names: list[str], dropout: float | None) -> Any:
    """A sequence-classification model with a freshly initialised head."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(spec, label_names, dropout)
    return AutoModelForSequenceClassification.from_pretrained(
        model_location(spec),
        revision=spec.revision,
        config=config,
        ignore_mismatched_sizes=True,  # a classifier checkpoint with another number of labels
        # transformers 5.25 swaps layers for hub kernels by default: they are fetched at run time
        # (we run offline) and replace the layers that fused trials vmap over.
        use_kernels=False,
    )


def tokenize(spec: ModelSpec, data: LabelledData, max_seq_length: int) -> TensorData:
    """Tokenize both splits once, truncated to ``max_seq_length``, into padded id tensors."""
    tokenizer = load_tokenizer(spec)
    pad_token_id = int(tokenizer.pad_token_id or 0)

    def encode(frame: Any) -> TensorSplit:
        pair = list(frame["text_pair"]) if data.is_pair else None
        encoded = tokenizer(list(frame["text"]), pair, truncation=True, max_length=max_seq_length)
        return split_tensors(
            ids=encoded["input_ids"],
            token_types=encoded.get("token_type_ids"),
            labels=[int(label) for label in frame["label"]],
            max_seq_length=max_seq_length,
            pad_token_id=pad_token_id,
        )

    return TensorData(
        train=encode(data.train),
        eval=encode(data.eval),
        label_names=data.label_names,
        max_seq_length=max_seq_length,
        pad_token_id=pad_token_id,
    )


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer; a name that neither is a directory nor loads is a field error."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        # The config first: its error names a model type transformers does not know, where the
        # tokenizer's would only say that it cannot build one.
        AutoConfig.from_pretrained(model_location(spec), revision=spec.revision)
        return AutoTokenizer.from_pretrained(model_location(spec), revision=spec.revision)
    # A missing file is an OSError; a model_type transformers does not know, a ValueError; a
    # config.json of the wrong shape, a TypeError or KeyError.
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DefinitionError("model.name", f"cannot load {spec.name!r}: {error}") from error
