"""One trial: fine-tune a ``transformers`` classifier and report each epoch to Ray Tune.

Runs inside a Ray worker. Knows nothing of the database: the driver records what it reports.
"""

from __future__ import annotations

import gc
import inspect
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import tune
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from hpo_service.definition import Metric, ModelSpec
from hpo_service.modeling import TokenizedData, load_model, load_tokenizer
from hpo_service.training_args import training_arguments, trial_values

METRICS: tuple[Metric, ...] = ("accuracy", "f1", "matthews_corrcoef", "eval_loss")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares; Ray puts it in the object store once."""

    model: ModelSpec
    metric: Metric
    data: TokenizedData


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (binary for two labels, macro otherwise) and Matthews correlation."""
    predictions = np.argmax(logits, axis=-1)
    binary = logits.shape[-1] == 2
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(
            f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0)
        ),
        "matthews_corrcoef": float(matthews_corrcoef(labels, predictions)),
    }


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: fine-tune with ``config``'s knob values."""
    values = trial_values(config)
    use_cuda = torch.cuda.is_available()
    set_seed(int(values["seed"]))  # before the classification head is initialised
    model = load_model(setup.model, setup.data.label_names, values["dropout"])
    tokenizer = load_tokenizer(setup.model)
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-trial-") as output_dir:
            args = TrainingArguments(
                output_dir=output_dir,
                use_cpu=not use_cuda,
                bf16=use_cuda and torch.cuda.is_bf16_supported(),
                disable_tqdm=True,
                dataloader_pin_memory=use_cuda,
                **training_arguments(config),
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=setup.data.train,
                eval_dataset=setup.data.eval,
                data_collator=_collator(model, tokenizer, use_cuda),
                compute_metrics=lambda p: classification_metrics(p.predictions, p.label_ids),
                callbacks=[ReportEpochs(setup.metric)],
            )
            trainer.train()
    finally:
        # Free the model (and GPU memory) before a reused worker starts the next trial.
        model = trainer = None
        gc.collect()
        if use_cuda:
            torch.cuda.empty_cache()


def _collator(model: Any, tokenizer: Any, use_cuda: bool) -> Any:
    """Pads each batch to its longest example, passing only inputs the model takes (DistilBERT
    has no ``token_type_ids``)."""
    accepted = set(inspect.signature(model.forward).parameters)
    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if use_cuda else None)
    return lambda batch: pad([{k: v for k, v in x.items() if k in accepted} for x in batch])


class ReportEpochs(TrainerCallback):
    """Reports each epoch's evaluation to Ray Tune: the objective and every metric."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.train_loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.train_loss = float(logs["loss"])

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        scores = {m: float(metrics[m if m == "eval_loss" else f"eval_{m}"]) for m in METRICS}
        tune.report(
            {
                "objective": scores[self.metric],
                **scores,
                "epoch": round(state.epoch or 0),
                "epochs_planned": int(args.num_train_epochs),
                "train_loss": self.train_loss,
            }
        )
