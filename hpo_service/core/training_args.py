"""One trial's knob values as ``transformers.TrainingArguments`` keyword arguments.

Pure: no torch or transformers import, so the API can hand the same arguments to CI.
"""

from __future__ import annotations

from typing import Any

from hpo_service.core.definition import KNOBS

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


def trial_values(params: dict[str, Any]) -> dict[str, Any]:
    """Every knob's value for a trial: its sampled or fixed value, else the default."""
    return {name: params.get(name, knob.default) for name, knob in KNOBS.items()}


def training_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` that reproduce one trial's training.

    The caller adds where to write (``output_dir``) and device choices (``use_cpu``, ``bf16``).
    """
    values = trial_values(params)
    return {
        "learning_rate": float(values["learning_rate"]),
        "per_device_train_batch_size": int(values["batch_size"]),
        "per_device_eval_batch_size": max(int(values["batch_size"]), 64),
        "weight_decay": float(values["weight_decay"]),
        # transformers 5: a float below 1 is a share of the training steps.
        "warmup_steps": float(values["warmup_ratio"]),
        "num_train_epochs": int(values["num_train_epochs"]),
        "gradient_accumulation_steps": int(values["gradient_accumulation_steps"]),
        "lr_scheduler_type": str(values["lr_scheduler"]),
        "seed": int(values["seed"]),
        "max_grad_norm": float(values["max_grad_norm"]),
        "adam_epsilon": float(values["adam_epsilon"]),
        "label_smoothing_factor": float(values["label_smoothing"]),
        "optim": "adamw_torch",
        "eval_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_strategy": "no",
        "report_to": "none",
    }


def dropout_fields(model_type: str) -> tuple[str, ...]:
    """The config fields the ``dropout`` knob sets for a model family (BERT's for the unlisted)."""
    return DROPOUT_FIELDS.get(model_type, DROPOUT_FIELDS["bert"])
