"""The study definition: what to fine-tune, on which data, over which search space.

Pure data: no I/O (but for finding a ``~user``'s home folder) and no Ray, database or HTTP
imports. Every model rejects unknown keys, and
every check says which value was wrong.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo_service.core.errors import DefinitionError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the databases' BIGINT columns hold
MAX_GRID_POINTS = 100_000
MAX_TRIALS = 1_000_000
SEED_MAX = 2**32 - 1  # NumPy's and Optuna's samplers take seeds up to this
RESOURCE_STEP = 0.0001  # Ray counts resources in steps of this; a request below it is none
NAME_MAX_BYTES, PATH_MAX_BYTES = 255, 4095  # Linux's limits on a file name and a whole path
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]

Metric = Literal["accuracy", "f1", "matthews_corrcoef", "eval_loss", "train_seconds"]
# Every metric a trial reports after each epoch: the one list that tables, records, the API,
# the training code and the best-config document follow. The first four are scores on the
# evaluation set; `train_seconds` is the wall time the trial has trained and evaluated so far.
METRICS: tuple[Metric, ...] = get_args(Metric)
# Metrics where lower is better: their objectives minimise unless told otherwise.
LOWER_IS_BETTER: frozenset[Metric] = frozenset({"eval_loss", "train_seconds"})
Direction = Literal["maximize", "minimize"]
Scalar = bool | int | float | str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _check_storable(cls, value: Any) -> Any:
        """Every float finite, every int a 64-bit one, and no NUL byte in any string."""
        for item in value if isinstance(value, list | tuple) else (value,):
            _check_storable_scalar(item)
        return value


def _check_storable_scalar(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, but got {value!r}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"must be between {INT64_MIN} and {INT64_MAX}, but got {value!r}")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"must not contain a NUL byte, but got {value!r}")


def _check_path(value: str | None) -> str | None:
    """A path this machine can look up: no unknown ``~user``, no name or path too long."""
    if value is None:
        return value
    try:
        path = Path(value).expanduser()
    except RuntimeError as error:  # "~nosuchuser/..."
        raise ValueError(f"{Path(value).parts[0]!r} is not a user's home folder here") from error
    if len(os.fsencode(path)) > PATH_MAX_BYTES or any(
        len(os.fsencode(part)) > NAME_MAX_BYTES for part in path.parts
    ):
        raise ValueError(
            f"is longer than file systems allow ({NAME_MAX_BYTES} bytes a name, "
            f"{PATH_MAX_BYTES} a path)"
        )
    return value


# --- Parameter distributions -------------------------------------------------------------------


class FloatRange(_Spec):
    """A float drawn from ``[low, high]``, optionally log-scaled or on a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> FloatRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def contains(self, value: Scalar) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        steps = (value - self.low) / self.step if self.step else 0.0
        return math.isclose(steps, round(steps), abs_tol=1e-8)


class IntRange(_Spec):
    """An integer drawn from ``[low, high]`` in steps of ``step``, optionally log-scaled."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> IntRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def values(self) -> range:
        """Every integer this range can produce (for grid search)."""
        return range(self.low, self.high + 1, self.step or 1)

    def contains(self, value: Scalar) -> bool:
        return type(value) is int and value in self.values()


class Categorical(_Spec):
    """One of a list of choices."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_unique(self) -> Categorical:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"`choices` must not repeat a value, but got {self.choices}")
        return self

    def contains(self, value: Scalar) -> bool:
        return any(_same_value(value, choice) for choice in self.choices)


class Fixed(_Spec):
    """One value for every trial (written as a plain scalar in a definition)."""

    type: Literal["fixed"]
    value: Scalar


def _same_value(a: Scalar, b: Scalar) -> bool:
    """Equal, and both numbers (not booleans), both booleans or both text: 1 is 1.0 but not True."""

    def kind(value: Scalar) -> type:
        return bool if isinstance(value, bool) else str if isinstance(value, str) else float

    return kind(a) is kind(b) and a == b


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ValueError(f"`low < high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ValueError(f"`log` needs `low > 0`, but got low={low}")
    if log and step is not None:
        raise ValueError(f"`log` and `step` exclude each other, but got (log={log}, step={step})")


def _scalar_as_fixed(value: Any) -> Any:
    return value if isinstance(value, dict) else {"type": "fixed", "value": value}


Distribution = Annotated[
    FloatRange | IntRange | Categorical | Fixed,
    Field(discriminator="type"),
    BeforeValidator(_scalar_as_fixed),
]


# --- The knobs a study can search ---------------------------------------------------------------


class Knob(BaseModel):
    """What values one parameter accepts, and its value when a study leaves it out."""

    kind: Literal["float", "int", "str"]
    default: Scalar | None
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Scalar) -> None:
        ok_type = {
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "str": isinstance(value, str),
        }[self.kind]
        if not ok_type:
            raise ValueError(f"`{name}` takes {self.kind} values, but got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"`{name}` must be one of {list(self.choices)}, but got {value!r}")
        if self.low is not None and (
            value < self.low or (not self.low_inclusive and value == self.low)
        ):
            sign = ">=" if self.low_inclusive else ">"
            raise ValueError(f"`{name}` must be {sign} {self.low}, but got {value!r}")
        if self.high is not None and (
            value > self.high or (not self.high_inclusive and value == self.high)
        ):
            sign = "<=" if self.high_inclusive else "<"
            raise ValueError(f"`{name}` must be {sign} {self.high}, but got {value!r}")


LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)

KNOBS: dict[str, Knob] = {
    "learning_rate": Knob(kind="float", default=5e-5, low=0.0, high=1.0),
    "batch_size": Knob(kind="int", default=16, low=1),
    # None: keep the dropout the model was pretrained with.
    "dropout": Knob(kind="float", default=None, low=0.0, high=1.0, high_inclusive=False),
    "weight_decay": Knob(kind="float", default=0.0, low=0.0),
    "warmup_ratio": Knob(kind="float", default=0.0, low=0.0, high=1.0, high_inclusive=False),
    "num_train_epochs": Knob(kind="int", default=3, low=1),
    "gradient_accumulation_steps": Knob(kind="int", default=1, low=1),
    "lr_scheduler": Knob(kind="str", default="linear", choices=LR_SCHEDULERS),
    "seed": Knob(kind="int", default=42, low=0, high=SEED_MAX),
    "max_grad_norm": Knob(kind="float", default=1.0, low=0.0),
    # 0 divides by zero wherever a gradient is 0 (an unused embedding row, say): NaN weights.
    "adam_epsilon": Knob(kind="float", default=1e-8, low=0.0, low_inclusive=False),
    "label_smoothing": Knob(kind="float", default=0.0, low=0.0, high=1.0, high_inclusive=False),
}


class Parameters(_Spec):
    """The search space. A knob left out keeps its default (``KNOBS``) in every trial."""

    learning_rate: Distribution | None = None
    batch_size: Distribution | None = None
    dropout: Distribution | None = None
    weight_decay: Distribution | None = None
    warmup_ratio: Distribution | None = None
    num_train_epochs: Distribution | None = None
    gradient_accumulation_steps: Distribution | None = None
    lr_scheduler: Distribution | None = None
    seed: Distribution | None = None
    max_grad_norm: Distribution | None = None
    adam_epsilon: Distribution | None = None
    label_smoothing: Distribution | None = None

    @field_validator(*KNOBS)
    @classmethod
    def _check_domain(cls, spec: Any, info: ValidationInfo) -> Any:
        name, knob = info.field_name, KNOBS[info.field_name or ""]
        if isinstance(spec, Fixed):
            knob.check(name, spec.value)
        elif isinstance(spec, Categorical):
            for choice in spec.choices:
                knob.check(name, choice)
        elif isinstance(spec, FloatRange) and knob.kind != "float":
            raise ValueError(f"`{name}` takes {knob.kind} values, but got a float range")
        elif isinstance(spec, IntRange) and knob.kind == "str":
            raise ValueError(f"`{name}` takes one of {list(knob.choices)}, not a range")
        elif spec is not None:
            knob.check(name, spec.low)
            knob.check(name, spec.high)
        return spec

    def given(self) -> dict[str, FloatRange | IntRange | Categorical | Fixed]:
        """The knobs this definition sets, fixed or searched."""
        return {name: spec for name in KNOBS if (spec := getattr(self, name)) is not None}

    def searched(self) -> dict[str, FloatRange | IntRange | Categorical]:
        """The knobs that vary between trials."""
        return {n: s for n, s in self.given().items() if not isinstance(s, Fixed)}

    def holds(self, point: dict[str, Any]) -> bool:
        """Whether ``point`` gives every searched knob a value in that knob's space."""
        return all(k in point and s.contains(point[k]) for k, s in self.searched().items())

    def fixed_values(self) -> dict[str, Scalar | None]:
        """Every knob that does not vary, with its value (default or given)."""
        values: dict[str, Scalar | None] = {n: k.default for n, k in KNOBS.items()}
        for name, spec in self.given().items():
            values[name] = spec.value if isinstance(spec, Fixed) else None
        return {n: v for n, v in values.items() if n not in self.searched()}

    def max_epochs(self) -> int:
        """The largest number of epochs any trial can run (the early-stopping budget)."""
        return self.largest("num_train_epochs")

    def largest(self, knob: str) -> int:
        """The largest value an integer knob takes in any trial."""
        spec = getattr(self, knob)
        if isinstance(spec, IntRange):
            return spec.values()[-1]
        if isinstance(spec, Categorical):
            return max(int(c) for c in spec.choices)
        if isinstance(spec, Fixed):
            return int(spec.value)
        return int(KNOBS[knob].default or 1)

    def grid(self) -> dict[str, list[Scalar]]:
        """The grid of every searched knob; raises ``ValueError`` for a continuous one."""
        grid: dict[str, list[Scalar]] = {}
        self._check_grid_size()
        for name, spec in self.searched().items():
            if isinstance(spec, Categorical):
                grid[name] = list(spec.choices)
            elif isinstance(spec, IntRange) and not spec.log:
                grid[name] = list(spec.values())
            elif isinstance(spec, FloatRange) and spec.step is not None and not spec.log:
                count = _float_grid_count(spec)
                grid[name] = [round(spec.low + i * spec.step, 12) for i in range(count)]
            else:
                raise DefinitionError(
                    f"parameters.{name}",
                    f"grid search needs a finite set of values, but `{name}` is continuous "
                    f"({spec.model_dump(exclude_none=True)}); give it `choices` or a `step`",
                )
        return grid

    def _check_grid_size(self) -> None:
        size = 1
        for name, spec in self.searched().items():
            if isinstance(spec, Categorical):
                size *= len(spec.choices)
            elif isinstance(spec, IntRange) and not spec.log:
                size *= (spec.high - spec.low) // (spec.step or 1) + 1  # len() overflows
            elif isinstance(spec, FloatRange) and spec.step is not None and not spec.log:
                size *= _float_grid_count(spec)
            if size > MAX_GRID_POINTS:
                raise DefinitionError(
                    f"parameters.{name}",
                    f"grid search allows at most {MAX_GRID_POINTS} points, but the grid is "
                    f"larger once `{name}` ({spec.model_dump(exclude_none=True)}) is added",
                )


def _float_grid_count(spec: FloatRange) -> int:
    """The points of a stepped float range; MAX_GRID_POINTS + 1 stands for any more."""
    steps = (spec.high - spec.low) / (spec.step or 1.0)
    return math.floor(steps + 1e-9) + 1 if steps < MAX_GRID_POINTS else MAX_GRID_POINTS + 1


# --- The other sections --------------------------------------------------------------------------


class ModelSpec(_Spec):
    """The pretrained model to fine-tune for sequence classification."""

    name: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="A hub id such as `bert-base-uncased`, or a local directory. "
        f"`{DEFAULT_MODEL}` resolves to the offline copy that ships with hpo-service.",
    )
    revision: str | None = Field(default=None, description="Hub branch, tag or commit.")

    _check_name = field_validator("name")(_check_path)


class DatasetSpec(_Spec):
    """Where the labelled text comes from and how to read it."""

    train: str | None = Field(default=None, description="Training file: CSV, TSV, JSONL, Parquet.")
    eval: str | None = Field(default=None, description="Evaluation file, same format.")
    eval_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Hold out this share of `train` when no `eval`."
    )
    hub: str | None = Field(default=None, description="A `datasets` hub name instead of files.")
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    column_names: list[str] | None = Field(
        default=None, min_length=1, description="Column names of a header-less CSV/TSV."
    )
    text_fields: list[str] = Field(
        default=["sentence"], min_length=1, max_length=2, description="One text or a pair."
    )
    label_field: str = "label"
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)
    max_seq_length: int = Field(default=128, ge=8, le=8192)

    _check_files = field_validator("train", "eval")(_check_path)

    @model_validator(mode="after")
    def _check_source(self) -> DatasetSpec:
        if (self.train is None) == (self.hub is None):
            raise DefinitionError(
                "train",
                f"give exactly one of `train` (files) or `hub` (a datasets name), "
                f"but got train={self.train!r}, hub={self.hub!r}",
            )
        if self.eval is not None and self.eval_fraction is not None:
            raise DefinitionError(
                "eval_fraction",
                f"give `eval` or `eval_fraction`, not both "
                f"(eval={self.eval!r}, eval_fraction={self.eval_fraction})",
            )
        if self.hub is not None and (self.eval is not None):
            raise DefinitionError(
                "eval", "`eval` is a file; with `hub` name the split in `eval_split`"
            )
        if self.column_names is not None and self.format in ("jsonl", "parquet"):
            raise DefinitionError(
                "column_names", f"`column_names` is for header-less CSV/TSV, not {self.format}"
            )
        return self


class Objective(_Spec):
    """The metric the study optimizes, measured after each epoch."""

    metric: Metric = "accuracy"
    direction: Direction | None = Field(
        default=None,
        description="Defaults to minimize for eval_loss and train_seconds, maximize otherwise.",
    )

    @property
    def mode(self) -> Direction:
        if self.direction is not None:
            return self.direction
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    def resolved(self) -> Objective:
        """The same objective with its direction spelled out."""
        return Objective(metric=self.metric, direction=self.mode)


class Pick(_Spec):
    """How a study with several objectives picks its best configuration from its Pareto front
    (the complete trials no other complete trial beats on every objective)."""

    rule: Literal["lexicographic", "within"] = Field(
        default="lexicographic",
        description="`lexicographic`: the best on the first objective, ties broken by the next. "
        "`within`: of the front's trials whose first objective is within `tolerance` of the "
        "front's best, the best on the second objective (ties by the next, then the first).",
    )
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="For `within`: how far from the best first objective, in its units "
        "(accuracy 0.005 is half a point).",
    )

    @model_validator(mode="after")
    def _check_tolerance(self) -> Pick:
        if self.rule == "within" and self.tolerance is None:
            raise DefinitionError("tolerance", "the `within` rule needs a `tolerance`")
        if self.rule == "lexicographic" and self.tolerance is not None:
            raise DefinitionError(
                "tolerance",
                f"`tolerance` is for the `within` rule, not `lexicographic` "
                f"(got tolerance={self.tolerance})",
            )
        return self


class TpeSampler(_Spec):
    """Optuna's Tree-structured Parzen Estimator ("Bayesian")."""

    type: Literal["tpe"]
    seed: Seed | None = None
    n_startup_trials: int = Field(default=10, ge=0)
    multivariate: bool = False
    # Trials still running count as the worst result so far, so trials proposed while others
    # run spread out instead of all taking TPE's current favourite.
    constant_liar: bool = True


class GridSampler(_Spec):
    """Every point of the grid of the searched parameters, each once."""

    type: Literal["grid"]
    seed: Seed | None = None


class RandomSampler(_Spec):
    """Independent uniform (or log-uniform) draws."""

    type: Literal["random"]
    seed: Seed | None = None


Sampler = Annotated[TpeSampler | GridSampler | RandomSampler, Field(discriminator="type")]


class NoEarlyStopping(_Spec):
    type: Literal["none"]


# Successive halving keeps 1/reduction_factor of the trials at each rung, and Ray builds
# ln(epochs)/ln(reduction_factor) rungs: a factor nearer 1 asks for billions.
MIN_REDUCTION_FACTOR = 1.1


class Asha(_Spec):
    """Asynchronous successive halving; the budget is counted in epochs."""

    type: Literal["asha"]
    grace_period: int = Field(default=1, ge=1, description="Epochs every trial runs at least.")
    reduction_factor: float = Field(default=2.0, ge=MIN_REDUCTION_FACTOR)


class Hyperband(_Spec):
    """Asynchronous Hyperband: ASHA over several brackets of different grace periods, so a slow
    starter is not always stopped at the first rung; the budget is counted in epochs."""

    type: Literal["hyperband"]
    grace_period: int = Field(default=1, ge=1, description="Epochs of the most eager bracket.")
    reduction_factor: float = Field(default=3.0, ge=MIN_REDUCTION_FACTOR)
    brackets: int = Field(default=3, ge=1, le=10)


class MedianStopping(_Spec):
    """Stops a trial whose best score so far is worse than the median of other trials' running
    averages at the same epoch."""

    type: Literal["median"]
    grace_period: int = Field(default=1, ge=1, description="Epochs every trial runs at least.")
    min_samples_required: int = Field(
        default=3, ge=1, description="Trials that must have reached an epoch to compare with."
    )


MUTABLE_KNOBS = ("learning_rate", "weight_decay")


class PopulationBased(_Spec):
    """Population-based training (Jaderberg et al. 2017): the study's trials train at once; at
    every `perturbation_interval` epochs a trial in the bottom `quantile_fraction` goes on from
    a top trial's state with that trial's `mutate` values perturbed (x0.8 or x1.2, kept in the
    searched range) or, with `resample_probability`, drawn again from the search space."""

    type: Literal["pbt"]
    perturbation_interval: int = Field(default=1, ge=1, description="Epochs between exploits.")
    mutate: list[Literal["learning_rate", "weight_decay"]] = Field(
        default=["learning_rate"],
        min_length=1,
        description="Searched knobs whose values change during training; the optimizer and the "
        "schedule take them on from the state they restore.",
    )
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    synch: bool = Field(
        default=False,
        description="Wait for every member at each perturbation, so all are compared at the "
        "same epoch (slower: the fastest members wait).",
    )

    @property
    def grace_period(self) -> int:
        """Epochs every trial runs before its first exploit (as early stopping's)."""
        return self.perturbation_interval


EarlyStopping = Annotated[
    NoEarlyStopping | Asha | Hyperband | MedianStopping | PopulationBased,
    Field(discriminator="type"),
]


class Limits(_Spec):
    trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="Trials to run; a grid defaults to its size, else 10.",
    )
    concurrent_trials: int = Field(default=1, ge=1)
    max_failed_trials: int | None = Field(
        default=None, ge=1, description="Stop the study after this many failed trials."
    )
    time_budget_s: float | None = Field(default=None, gt=0)
    cpu_hours: float | None = Field(
        default=None,
        gt=0,
        description="Stop the study once its trials used this many CPU-hours (each trial's "
        "`resources_per_trial.cpus` times its run time).",
    )
    gpu_hours: float | None = Field(
        default=None, gt=0, description="The same in GPU-hours (`resources_per_trial.gpus`)."
    )


class Resources(_Spec):
    cpus: float = Field(default=1.0, ge=RESOURCE_STEP, description="Ray counts in 0.0001 steps.")
    gpus: float = Field(default=0.0, ge=0, description="Fractions below 1 share a GPU.")

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, gpus: float) -> float:
        if gpus > 1 and not float(gpus).is_integer():
            raise ValueError(f"`gpus` above 1 must be a whole number, but got gpus={gpus}")
        if 0 < gpus < RESOURCE_STEP:
            raise ValueError(f"Ray counts GPUs in steps of {RESOURCE_STEP}, but got gpus={gpus}")
        return gpus


class Execution(_Spec):
    """How a study's trials share a worker's device."""

    fuse_trials: StrictInt | Literal["auto"] = Field(
        default="auto",
        description="Trials that may train together as one stacked model in one worker "
        "(same batch size and gradient accumulation). `auto`: chosen from the GPU's memory; "
        "1 (no fusion) on CPU workers.",
    )
    trials_per_gpu: StrictInt | Literal["auto"] = Field(
        default="auto",
        description="When trials do not fuse and a trial asks for one GPU: how many share it. "
        "`auto`: as many as fit in its memory (at most 8).",
    )

    checkpoints: bool = Field(
        default=True,
        description="Save each trial's state after every epoch, so a trial cut off by a crash "
        "runs again from its last finished epoch (fused trials run again from the start).",
    )

    @field_validator("fuse_trials", "trials_per_gpu")
    @classmethod
    def _check_count(cls, value: int | str, info: ValidationInfo) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_FUSED_TRIALS:
            raise ValueError(
                f"`{info.field_name}` must be `auto` or from 1 to {MAX_FUSED_TRIALS}, "
                f"but got {value}"
            )
        return value


class WarmStart(_Spec):
    """Seed the sampler with another study's finished trials, so it does not start cold."""

    study: str = Field(
        pattern=NAME_PATTERN,
        description="A study with the same objective whose complete trials, where their "
        "parameters lie in this study's space, the sampler learns from before the first trial.",
    )


class Confirm(_Spec):
    """After the search, run the best configurations again with fresh seeds and pick the best by
    its mean over those seeds, not by one lucky run."""

    top_k: int = Field(
        default=3, ge=1, le=20, description="Configurations to confirm: the search's best k."
    )
    seeds: int = Field(
        default=3, ge=2, le=10, description="Runs of each, with seeds none of the search used."
    )


MAX_FUSED_TRIALS = 64
MAX_ENQUEUED = 100
MAX_OBJECTIVES = 4
DEFAULT_TRIALS = 10


class StudyDefinition(_Spec):
    """A whole study, as submitted in YAML or JSON (after its preset is merged in)."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique; letters, digits, `.`, `_`, `-`.")
    description: str | None = None
    preset: str | None = Field(default=None, description="A file in search_spaces/, no suffix.")
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec
    objective: Objective = Objective()
    objectives: list[Objective] = Field(
        default_factory=list,
        max_length=MAX_OBJECTIVES,
        description="Several objectives at once (2 to 4, e.g. accuracy up and train_seconds "
        "down): the sampler searches for their Pareto front and `pick` chooses one point of "
        "it. The first is the primary objective: early stopping and `objective` follow it.",
    )
    pick: Pick | None = Field(
        default=None,
        description="With `objectives`: how the best configuration is picked from the Pareto "
        "front (default: lexicographic).",
    )
    parameters: Parameters = Parameters()
    sampler: Sampler = TpeSampler(type="tpe")
    early_stopping: EarlyStopping = NoEarlyStopping(type="none")
    limits: Limits = Limits()
    resources_per_trial: Resources = Resources()
    execution: Execution = Execution()
    enqueue: list[dict[str, Scalar]] = Field(
        default_factory=list,
        max_length=MAX_ENQUEUED,
        description="Configurations to run first, in this order (e.g. a paper's defaults); a "
        "searched parameter one leaves out is sampled. Each counts towards `limits.trials`.",
    )
    warm_start: WarmStart | None = None
    confirm: Confirm | None = Field(
        default=None,
        description="A confirmation stage after the search; its runs come on top of "
        "`limits.trials`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _primary_objective(cls, data: Any) -> Any:
        """With ``objectives``, ``objective`` is their first one unless given (then it must be
        the same)."""
        objectives = data.get("objectives") if isinstance(data, dict) else None
        if isinstance(objectives, list) and objectives and "objective" not in data:
            first = objectives[0]
            return {**data, "objective": first} if isinstance(first, dict | Objective) else data
        return data

    @model_validator(mode="after")
    def _check_objectives(self) -> StudyDefinition:
        if not self.objectives:
            if self.pick is not None:
                raise DefinitionError(
                    "pick", "`pick` chooses among several `objectives`; give `objectives`"
                )
            return self
        if len(self.objectives) < 2:
            raise DefinitionError(
                "objectives",
                "`objectives` takes 2 or more; give a single one in `objective` instead",
            )
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise DefinitionError("objectives", f"`objectives` names a metric twice: {metrics}")
        if self.objective.resolved() != self.objectives[0].resolved():
            raise DefinitionError(
                "objective",
                "`objective` is the first of `objectives` (the primary one); leave it out or "
                f"make it {self.objectives[0].metric} ({self.objectives[0].mode})",
            )
        if self.confirm is not None:
            raise DefinitionError(
                "confirm",
                "`confirm` ranks configurations by one objective; a study with several "
                "`objectives` cannot have a confirmation stage yet",
            )
        return self

    @property
    def goals(self) -> list[Objective]:
        """Every objective the study optimises, directions spelled out: the primary first."""
        return [o.resolved() for o in self.objectives or [self.objective]]

    @property
    def picking(self) -> Pick:
        """The rule that picks the best of several objectives' Pareto front."""
        return self.pick or Pick()

    @model_validator(mode="after")
    def _check_search(self) -> StudyDefinition:
        if not self.parameters.searched():
            raise DefinitionError(
                "parameters",
                "`parameters` searches nothing: give at least one parameter a range or "
                "`choices` (a one-choice `categorical` runs a single fixed configuration)",
            )
        if isinstance(self.sampler, GridSampler):
            size = self.grid_size()  # raises for a continuous parameter
            if self.limits.trials is not None and self.limits.trials > size:
                raise DefinitionError(
                    "limits.trials",
                    f"the grid has {size} points, so `limits.trials` must be <= {size}, "
                    f"but got {self.limits.trials}",
                )
        self._check_enqueued()
        if isinstance(self.early_stopping, PopulationBased):
            self._check_population()
        if not isinstance(self.early_stopping, NoEarlyStopping):
            budget = self.parameters.max_epochs()
            if self.early_stopping.grace_period > budget:
                raise DefinitionError(
                    "early_stopping.grace_period",
                    f"`early_stopping.grace_period` ({self.early_stopping.grace_period}) must "
                    f"not exceed the epoch budget ({budget})",
                )
        return self

    def _check_population(self) -> None:
        """What population-based training needs: trials training at once, each with its own
        checkpoints, mutated knobs that are searched, and one configuration per trial."""
        assert isinstance(self.early_stopping, PopulationBased)
        searched = self.parameters.searched()
        for knob in self.early_stopping.mutate:
            spec = searched.get(knob)
            if not isinstance(spec, FloatRange | Categorical):
                raise DefinitionError(
                    "early_stopping.mutate",
                    f"`early_stopping.mutate` names {knob}, which must be searched (a float "
                    f"range or `choices`) for PBT to perturb it",
                )
        needs = [
            (
                self.limits.concurrent_trials < 2,
                "limits.concurrent_trials",
                "`limits.concurrent_trials` of 2 or more (the population trains at once)",
            ),
            (
                not self.execution.checkpoints,
                "execution.checkpoints",
                "`execution.checkpoints: true`",
            ),
            (
                self.execution.fuse_trials not in ("auto", 1),
                "execution.fuse_trials",
                "`execution.fuse_trials` 1 or auto (PBT restarts each member from another's state "
                "as a trial of its own)",
            ),
            (
                self.confirm is not None,
                "confirm",
                "no `confirm` stage (a PBT result is a schedule of "
                "values, not one configuration to run again)",
            ),
        ]
        for missing, field, what in needs:
            if missing:
                raise DefinitionError(
                    field, f"population-based training (`early_stopping.type: pbt`) needs {what}"
                )

    def _check_enqueued(self) -> None:
        if self.enqueue and isinstance(self.sampler, GridSampler):
            raise DefinitionError(
                "enqueue",
                "`enqueue` does not go with a `grid` sampler: a grid runs each of its points once, "
                "in its own order, and would run an enqueued point a second time",
            )
        searched = self.parameters.searched()
        for i, point in enumerate(self.enqueue):
            for knob, value in point.items():
                try:
                    _check_storable_scalar(value)
                except ValueError as error:
                    raise DefinitionError(
                        f"enqueue.{i}.{knob}", f"`enqueue[{i}].{knob}` {error}"
                    ) from error
                spec = searched.get(knob)
                if spec is None:
                    raise DefinitionError(
                        f"enqueue.{i}.{knob}",
                        f"`enqueue[{i}].{knob}` is not a searched parameter; searched: "
                        f"{', '.join(searched)}",
                    )
                if not spec.contains(value):
                    shown = spec.model_dump(exclude={"type"}, exclude_none=True)
                    raise DefinitionError(
                        f"enqueue.{i}.{knob}",
                        f"`enqueue[{i}].{knob}` must lie in the parameter's {spec.type} space "
                        f"{shown}, but got {value!r}",
                    )

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.parameters.grid().values())

    @property
    def planned_trials(self) -> int:
        """The search's trials and, with a confirmation stage, its runs (at most: fewer when
        the search has fewer distinct complete configurations than ``confirm.top_k``)."""
        runs = self.confirm.top_k * self.confirm.seeds if self.confirm else 0
        return self.n_trials + runs

    @property
    def n_trials(self) -> int:
        if self.limits.trials is not None:
            return self.limits.trials
        return self.grid_size() if isinstance(self.sampler, GridSampler) else DEFAULT_TRIALS


def error_items(error: ValidationError) -> list[tuple[str, str]]:
    """Each problem as (dotted field, what is wrong with the value given). A value that no
    type of a union of scalars takes is one problem naming them all, not one per type."""
    items: list[tuple[str, str]] = []
    kinds: list[str] = []  # the types the last item's value is none of
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not _is_union_tag(p))
        message = item["msg"].removeprefix("Value error, ")
        raised = (item.get("ctx") or {}).get("error")
        if isinstance(raised, DefinitionError):  # a check across fields names the one at fault
            loc = ".".join(filter(None, [loc, raised.field]))
            message = raised.message
        given = item.get("input")
        shown = "" if isinstance(given, dict) or "but got" in message else f" (got {_shown(given)})"
        loc = loc or "definition"
        kind = _NOT_OF_TYPE.fullmatch(message)
        if kind and kinds and items[-1][0] == loc:
            kinds.append(kind[1])
            shown_kinds = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
            items[-1] = (loc, f"Input should be a valid {shown_kinds}{shown}")
            continue
        kinds = [kind[1]] if kind else []
        items.append((loc, f"{message}{shown}"))
    return items


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem: the dotted field, what is wrong, and the value given."""
    return [f"{loc}: {message}" for loc, message in error_items(error)]


def _shown(given: Any) -> str:
    """A value as the user wrote it: YAML reads 2024-01-31 as a date, not as text."""
    if isinstance(given, datetime.date):
        return f"{given.isoformat()}, which YAML reads as a date: quote it"
    return repr(given)


_NOT_OF_TYPE = re.compile(r"Input should be a valid (\w+)")


def _is_union_tag(part: str | int) -> bool:
    tags = ("float", "int", "bool", "str", "categorical", "fixed", "tpe", "grid", "random")
    tags += ("none", "asha")
    tags += ("hyperband", "median", "pbt")
    return part in tags or str(part).startswith("literal[")
