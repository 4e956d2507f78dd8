"""The study definition: bad documents are refused with a line naming the field and the value;
good ones get the documented defaults."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from hpo_service.core.definition import (
    KNOBS,
    Categorical,
    FloatRange,
    GridSampler,
    StudyDefinition,
    TpeSampler,
    describe_errors,
    error_items,
)
from hpo_service.core.errors import NotFoundError
from hpo_service.core.presets import list_presets, merge, resolve_definition

# The least a valid definition needs: a name, data, and one searched parameter.
MINIMAL: dict[str, Any] = {
    "name": "study-1",
    "dataset": {"train": "train.csv"},
    "parameters": {"learning_rate": {"type": "categorical", "choices": [2e-5, 3e-5]}},
}


def definition(**overrides: Any) -> StudyDefinition:
    return StudyDefinition.model_validate(merge(MINIMAL, overrides))


def error_lines(**overrides: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        definition(**overrides)
    return describe_errors(caught.value)


# Each case: the overrides on MINIMAL, then the texts one line of the errors must all show (the
# field and the value that was wrong).
BAD_DEFINITIONS = [
    pytest.param(
        {"parameters": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-5}}},
        ("parameters.learning_rate", "low=0.001", "high=1e-05"),
        id="low-above-high",
    ),
    pytest.param(
        {"parameters": {"batch_size": {"type": "int", "low": 32, "high": 32}}},
        ("parameters.batch_size", "low=32", "high=32"),
        id="low-equals-high",
    ),
    pytest.param(
        {"parameters": {"learning_rate": {"type": "float", "low": 0.0, "high": 1e-4, "log": True}}},
        ("parameters.learning_rate", "low=0.0"),
        id="log-with-zero-low",
    ),
    pytest.param(
        {"parameters": {"weight_decay": {"type": "float", "low": -0.1, "high": 0.3, "log": True}}},
        ("parameters.weight_decay", "low=-0.1"),
        id="log-with-negative-low",
    ),
    pytest.param(
        {
            "parameters": {
                "learning_rate": {
                    "type": "float",
                    "low": 1e-5,
                    "high": 1e-3,
                    "log": True,
                    "step": 1e-5,
                }
            }
        },
        ("parameters.learning_rate", "step=1e-05"),
        id="log-with-step",
    ),
    pytest.param(
        {
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "sampler": {"type": "grid"},
        },
        ("learning_rate", "1e-05", "0.001"),
        id="grid-over-continuous-float",
    ),
    pytest.param(
        {"sampler": {"type": "grid"}, "limits": {"trials": 5}},
        ("limits.trials", "got 5"),
        id="grid-with-more-trials-than-points",
    ),
    pytest.param(
        {"objective": {"metric": "auc"}},
        ("objective.metric", "'auc'"),
        id="unknown-metric",
    ),
    pytest.param(
        {"objective": {"direction": "up"}},
        ("objective.direction", "'up'"),
        id="unknown-direction",
    ),
    pytest.param(
        {"sampler": {"type": "cmaes"}},
        ("sampler", "'cmaes'"),
        id="unknown-sampler",
    ),
    pytest.param(
        {"learnin_rate": 3e-5},
        ("learnin_rate", "3e-05"),
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"parameters": {"learnin_rate": 3e-5}},
        ("parameters.learnin_rate", "3e-05"),
        id="unknown-parameter",
    ),
    pytest.param(
        {"dataset": {"lable_field": "target"}},
        ("dataset.lable_field", "'target'"),
        id="unknown-dataset-key",
    ),
    pytest.param(
        {"limits": {"trials": 0}},
        ("limits.trials", "got 0"),
        id="zero-trials",
    ),
    pytest.param(
        {"resources_per_trial": {"gpus": 1.5}},
        ("resources_per_trial", "gpus", "1.5"),
        id="gpus-fraction-above-one",
    ),
    pytest.param(
        {"parameters": {"batch_size": 16.5}},
        ("parameters", "batch_size", "16.5"),
        id="fixed-int-knob-given-float",
    ),
    pytest.param(
        {"parameters": {"batch_size": {"type": "categorical", "choices": [16, 16.5]}}},
        ("parameters", "batch_size", "16.5"),
        id="int-knob-choice-given-float",
    ),
    pytest.param(
        {"parameters": {"lr_scheduler": "bogus"}},
        ("parameters", "lr_scheduler", "'bogus'"),
        id="unknown-lr-scheduler",
    ),
    pytest.param(
        {"parameters": {"dropout": 1.0}},
        ("parameters", "dropout", "1.0"),
        id="dropout-of-one",
    ),
    pytest.param(  # AdamW would divide by zero where a gradient is 0: NaN weights
        {"parameters": {"adam_epsilon": 0.0}},
        ("adam_epsilon", "must be > 0.0", "0.0"),
        id="adam-epsilon-of-zero",
    ),
    pytest.param(
        {"parameters": {"learning_rate": 3e-5}},
        ("parameters", "searches nothing"),
        id="nothing-searched",
    ),
    pytest.param(
        {"early_stopping": {"type": "median", "grace_period": 5}},
        ("grace_period", "(5)", "epoch budget (3)"),
        id="median-grace-past-budget",
    ),
    pytest.param(
        {"early_stopping": {"type": "hyperband", "brackets": 0}},
        ("early_stopping.brackets", "0"),
        id="hyperband-without-brackets",
    ),
    pytest.param(
        {"early_stopping": {"type": "bohb"}},
        ("early_stopping", "'bohb'", "asha", "hyperband", "median", "pbt"),
        id="unknown-early-stopping",
    ),
    pytest.param(
        {"early_stopping": {"type": "pbt", "mutate": ["weight_decay"]}},
        ("`early_stopping.mutate` names weight_decay", "must be searched"),
        id="pbt-mutating-a-fixed-knob",
    ),
    pytest.param(
        {"early_stopping": {"type": "pbt", "mutate": ["dropout"]}},
        ("early_stopping.mutate.0", "dropout"),
        id="pbt-mutating-dropout",
    ),
    pytest.param(
        {"early_stopping": {"type": "pbt"}},
        ("pbt", "`limits.concurrent_trials` of 2 or more"),
        id="pbt-one-at-a-time",
    ),
    pytest.param(
        {
            "early_stopping": {"type": "pbt"},
            "limits": {"concurrent_trials": 4},
            "execution": {"checkpoints": False},
        },
        ("pbt", "`execution.checkpoints: true`"),
        id="pbt-without-checkpoints",
    ),
    pytest.param(
        {
            "early_stopping": {"type": "pbt"},
            "limits": {"concurrent_trials": 4},
            "execution": {"fuse_trials": 4},
        },
        ("pbt", "`execution.fuse_trials` 1 or auto"),
        id="pbt-fused",
    ),
    pytest.param(
        {"early_stopping": {"type": "pbt"}, "limits": {"concurrent_trials": 4}, "confirm": {}},
        ("pbt", "no `confirm` stage"),
        id="pbt-confirmed",
    ),
    pytest.param(
        {"confirm": {"top_k": 2, "seeds": 1}},
        ("confirm.seeds", "greater than or equal to 2", "1"),
        id="confirm-with-one-seed",
    ),
    pytest.param({"confirm": {"top_k": 0}}, ("confirm.top_k", "0"), id="confirm-nothing"),
    pytest.param({"name": "../x"}, ("name", "'../x'"), id="name-with-parent-dir"),
    pytest.param({"name": "a/b"}, ("name", "'a/b'"), id="name-with-slash"),
    pytest.param({"name": ""}, ("name", "''"), id="empty-name"),
    # Values no database column or JSON document can hold, and text no path can.
    pytest.param(
        {
            "parameters": {
                "learning_rate": float("nan"),
                "seed": {"type": "int", "low": 1, "high": 2},
            }
        },
        ("parameters.learning_rate", "finite", "nan"),
        id="nan-fixed-value",
    ),
    pytest.param(
        {"parameters": {"weight_decay": {"type": "float", "low": 0.0, "high": float("inf")}}},
        ("parameters.weight_decay.high", "finite", "inf"),
        id="infinite-range-bound",
    ),
    pytest.param(
        {
            "parameters": {
                "learning_rate": {"type": "categorical", "choices": [1e-5, float("-inf")]}
            }
        },
        ("parameters.learning_rate.choices", "finite", "-inf"),
        id="infinite-choice",
    ),
    pytest.param(
        {"limits": {"time_budget_s": float("inf")}},
        ("limits.time_budget_s", "finite", "inf"),
        id="infinite-time-budget",
    ),
    pytest.param(
        {"limits": {"trials": 2**63}},
        ("limits.trials", "1000000", str(2**63)),
        id="trials-past-int64",
    ),
    pytest.param(
        {"limits": {"trials": 1_000_001}},
        ("limits.trials", "1000000", "1000001"),
        id="trials-past-the-most",
    ),
    pytest.param(
        {"sampler": {"type": "tpe", "seed": 2**32}},
        ("sampler.seed", "4294967295", str(2**32)),
        id="sampler-seed-past-uint32",
    ),
    pytest.param(
        {"parameters": {"seed": {"type": "int", "low": 0, "high": 2**32}}},
        ("parameters.seed", "4294967295", str(2**32)),
        id="searched-seed-past-uint32",
    ),
    pytest.param(
        {"resources_per_trial": {"cpus": 0.00001}},
        ("resources_per_trial.cpus", "0.0001"),
        id="cpus-below-what-ray-counts",
    ),
    pytest.param(
        {"early_stopping": {"type": "hyperband", "reduction_factor": 1.0001}},
        ("early_stopping.reduction_factor", "1.1"),
        id="reduction-factor-near-1",
    ),
    pytest.param(
        {"objectives": {"metric": "accuracy"}},
        ("objectives", "list"),
        id="objectives-as-a-mapping",
    ),
    pytest.param(
        {"dataset": {"train": "~no-such-user-here/train.csv"}},
        ("dataset.train", "~no-such-user-here", "home folder"),
        id="path-of-an-unknown-user",
    ),
    pytest.param(
        {"model": {"name": "/models/" + "m" * 256}},
        ("model.name", "255 bytes a name"),
        id="path-name-too-long",
    ),
    pytest.param(
        {"sampler": {"type": "random", "seed": -(2**63) - 1}},
        ("sampler.seed", str(-(2**63) - 1)),
        id="seed-below-int64",
    ),
    pytest.param(
        {"parameters": {"batch_size": {"type": "categorical", "choices": [8, 2**64]}}},
        ("parameters.batch_size.choices", str(2**64)),
        id="choice-past-int64",
    ),
    pytest.param(
        {"dataset": {"train": "train\x00.csv"}},
        ("dataset.train", "NUL", "'train\\x00.csv'"),
        id="nul-in-path",
    ),
    pytest.param(
        {"dataset": {"text_fields": ["a", "b\x00"]}},
        ("dataset.text_fields", "NUL"),
        id="nul-in-list-of-text",
    ),
    pytest.param({"model": {"name": "bert\x00"}}, ("model.name", "NUL"), id="nul-in-model"),
    pytest.param(
        {
            "sampler": {"type": "grid"},
            "parameters": {"batch_size": {"type": "int", "low": 1, "high": 2**62}},
        },
        ("grid search allows at most", "batch_size"),
        id="grid-too-large",
    ),
    pytest.param(
        {
            "sampler": {"type": "grid"},
            "parameters": {
                "weight_decay": {"type": "float", "low": 0.0, "high": 1e300, "step": 1e-300}
            },
        },
        ("grid search allows at most", "weight_decay"),
        id="grid-step-overflows",
    ),
    pytest.param(
        {"sampler": {"type": "grid"}, "enqueue": [{"learning_rate": 3e-5}]},
        ("enqueue", "grid", "runs each of its points once"),
        id="enqueue-with-a-grid",
    ),
    pytest.param(
        {"objectives": [{"metric": "accuracy"}]},
        ("objectives", "2 or more", "objective"),
        id="one-of-several-objectives",
    ),
    pytest.param(
        {"objectives": [{"metric": "f1"}, {"metric": "f1", "direction": "minimize"}]},
        ("objectives", "names a metric twice", "['f1', 'f1']"),
        id="objective-twice",
    ),
    pytest.param(
        {"objectives": [{"metric": "f1"}, {"metric": "perplexity"}]},
        ("objectives.1.metric", "perplexity"),
        id="unknown-objective-metric",
    ),
    pytest.param(
        {
            "objective": {"metric": "accuracy"},
            "objectives": [{"metric": "f1"}, {"metric": "train_seconds"}],
        },
        ("`objective` is the first of `objectives`", "f1 (maximize)"),
        id="primary-objective-disagrees",
    ),
    pytest.param(
        {"pick": {"rule": "lexicographic"}},
        ("`pick` chooses among several `objectives`",),
        id="pick-without-objectives",
    ),
    pytest.param(
        {
            "objectives": [{"metric": "accuracy"}, {"metric": "train_seconds"}],
            "pick": {"rule": "within"},
        },
        ("pick", "`within` rule needs a `tolerance`"),
        id="within-without-tolerance",
    ),
    pytest.param(
        {
            "objectives": [{"metric": "accuracy"}, {"metric": "train_seconds"}],
            "pick": {"rule": "within", "tolerance": -0.1},
        },
        ("pick.tolerance", "-0.1"),
        id="negative-tolerance",
    ),
    pytest.param(
        {
            "objectives": [{"metric": "accuracy"}, {"metric": "train_seconds"}],
            "confirm": {"top_k": 2},
        },
        ("`confirm` ranks configurations by one objective",),
        id="confirm-with-several-objectives",
    ),
]


@pytest.mark.parametrize(("overrides", "shown"), BAD_DEFINITIONS)
def test_bad_definition_names_field_and_value(
    overrides: dict[str, Any], shown: tuple[str, ...]
) -> None:
    lines = error_lines(**overrides)
    assert any(all(text in line for text in shown) for line in lines), (
        f"no line shows all of {shown}: {lines}"
    )


def test_a_date_that_yaml_read_is_shown_as_written() -> None:
    [line] = error_lines(name=datetime.date(2024, 1, 31))
    assert line.startswith("name: ") and "(got 2024-01-31, which YAML reads as a date" in line


def test_a_value_that_no_type_of_a_union_takes_is_one_problem() -> None:
    """Not one line per type the value could have had (pydantic's one error per member)."""
    assert error_lines(parameters={"batch_size": {"type": "categorical", "choices": [None]}}) == [
        "parameters.batch_size.choices.0: Input should be a valid boolean, integer, number or "
        "string (got None)"
    ]


TWO_OBJECTIVES = {"objectives": [{"metric": "accuracy"}, {"metric": "train_seconds"}]}
PBT = {"early_stopping": {"type": "pbt"}, "limits": {"concurrent_trials": 4}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"parameters": {"learning_rate": 3e-5}}, "parameters"),
        (
            {
                "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
                "sampler": {"type": "grid"},
            },
            "parameters.learning_rate",
        ),
        ({"sampler": {"type": "grid"}, "limits": {"trials": 5}}, "limits.trials"),
        ({"sampler": {"type": "grid"}, "enqueue": [{"learning_rate": 3e-5}]}, "enqueue"),
        ({"enqueue": [{"learning_rate": 1.0}]}, "enqueue.0.learning_rate"),
        ({"enqueue": [{}, {"warmup_ratio": 0.1}]}, "enqueue.1.warmup_ratio"),
        ({"early_stopping": {"type": "asha", "grace_period": 5}}, "early_stopping.grace_period"),
        ({"objectives": [{"metric": "accuracy"}]}, "objectives"),
        ({"pick": {"rule": "lexicographic"}}, "pick"),
        ({**TWO_OBJECTIVES, "pick": {"rule": "within"}}, "pick.tolerance"),
        ({**TWO_OBJECTIVES, "confirm": {"top_k": 2}}, "confirm"),
        ({"early_stopping": {"type": "pbt"}}, "limits.concurrent_trials"),
        ({**PBT, "execution": {"checkpoints": False}}, "execution.checkpoints"),
        ({**PBT, "confirm": {"top_k": 2}}, "confirm"),
        ({"dataset": {"hub": "glue"}}, "dataset.train"),
        ({"dataset": {"eval": "dev.csv", "eval_fraction": 0.1}}, "dataset.eval_fraction"),
        ({"dataset": {"format": "jsonl", "column_names": ["a"]}}, "dataset.column_names"),
    ],
)
def test_a_check_across_fields_puts_its_error_on_the_field_at_fault(
    overrides: dict[str, Any], field: str
) -> None:
    """What the API's 422 shows in `loc`, and the CLI before the message."""
    with pytest.raises(ValidationError) as caught:
        definition(**overrides)
    assert [loc for loc, _ in error_items(caught.value)] == [field]


@pytest.mark.parametrize("gpus", [0.25, 1, 2])
def test_gpu_fractions_and_whole_gpus_are_accepted(gpus: float) -> None:
    assert definition(resources_per_trial={"gpus": gpus}).resources_per_trial.gpus == gpus


@pytest.mark.parametrize("name", ["sst2-bert", "run_1.v2", "A"])
def test_plain_names_are_accepted(name: str) -> None:
    assert definition(name=name).name == name


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("accuracy", "maximize"),
        ("f1", "maximize"),
        ("matthews_corrcoef", "maximize"),
        ("eval_loss", "minimize"),
        ("train_seconds", "minimize"),
    ],
)
def test_objective_direction_follows_metric(metric: str, mode: str) -> None:
    assert definition(objective={"metric": metric}).objective.mode == mode


def test_explicit_direction_wins() -> None:
    chosen = definition(objective={"metric": "eval_loss", "direction": "maximize"})
    assert chosen.objective.mode == "maximize"


def test_several_objectives_make_the_first_the_primary_one() -> None:
    study = definition(
        objectives=[{"metric": "f1"}, {"metric": "train_seconds"}, {"metric": "eval_loss"}]
    )
    assert study.objective.metric == "f1" and study.objective.mode == "maximize"
    assert [(g.metric, g.mode) for g in study.goals] == [
        ("f1", "maximize"),
        ("train_seconds", "minimize"),
        ("eval_loss", "minimize"),
    ]
    assert study.picking.rule == "lexicographic"
    # What is stored (the resolved definition) reads back the same.
    again = StudyDefinition.model_validate(study.model_dump(mode="json"))
    assert again.goals == study.goals
    assert definition().goals == [definition().objective.resolved()]


def test_defaults() -> None:
    study = definition()
    assert study.objective.metric == "accuracy"
    assert study.objective.mode == "maximize"
    assert isinstance(study.sampler, TpeSampler)
    assert study.n_trials == 10
    assert study.limits.concurrent_trials == 1
    assert study.resources_per_trial.gpus == 0
    assert study.early_stopping.type == "none"


def test_n_trials_given_explicitly() -> None:
    assert definition(limits={"trials": 3}).n_trials == 3


def test_grid_over_int_range_and_float_with_step() -> None:
    study = definition(
        parameters={
            "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        },
        sampler={"type": "grid"},
    )
    grid = study.parameters.grid()
    assert grid["batch_size"] == [8, 16, 24, 32]
    assert grid["warmup_ratio"] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert grid["learning_rate"] == [2e-5, 3e-5]
    assert isinstance(study.sampler, GridSampler)
    assert study.grid_size() == 4 * 5 * 2
    assert study.n_trials == 40  # a grid runs every point unless limits.trials says fewer


def test_grid_float_step_that_does_not_divide_the_range_stays_inside_it() -> None:
    study = definition(
        parameters={"weight_decay": {"type": "float", "low": 0.0, "high": 0.25, "step": 0.1}},
        sampler={"type": "grid"},
    )
    assert study.parameters.grid()["weight_decay"] == pytest.approx([0.0, 0.1, 0.2])


def test_grid_may_run_fewer_trials_than_points() -> None:
    assert definition(sampler={"type": "grid"}, limits={"trials": 1}).n_trials == 1


def test_searched_and_fixed_values() -> None:
    parameters = definition(
        parameters={
            "batch_size": 32,
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "lr_scheduler": "cosine",
        }
    ).parameters
    assert set(parameters.searched()) == {"learning_rate", "dropout"}
    assert isinstance(parameters.searched()["dropout"], FloatRange)
    assert isinstance(parameters.searched()["learning_rate"], Categorical)

    fixed = parameters.fixed_values()
    assert set(fixed) == set(KNOBS) - {"learning_rate", "dropout"}
    assert fixed["batch_size"] == 32
    assert fixed["lr_scheduler"] == "cosine"
    # Knobs left out keep their documented default.
    assert fixed["num_train_epochs"] == 3
    assert fixed["weight_decay"] == 0.0
    assert fixed["seed"] == 42


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        (None, 3),
        (5, 5),
        ({"type": "categorical", "choices": [2, 4, 3]}, 4),
        ({"type": "int", "low": 1, "high": 6}, 6),
        # A step that skips `high` can never reach it.
        ({"type": "int", "low": 2, "high": 7, "step": 2}, 6),
    ],
)
def test_max_epochs(epochs: Any, expected: int) -> None:
    parameters = {} if epochs is None else {"num_train_epochs": epochs}
    assert definition(parameters=parameters).parameters.max_epochs() == expected


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(NotFoundError) as caught:
        resolve_definition({**MINIMAL, "preset": "bert-papr"})
    message = str(caught.value)
    assert "bert-papr" in message
    known = list_presets()
    assert known, "search_spaces/ holds no presets"
    for name in known:
        assert name in message


def test_the_largest_seed_and_trial_count_are_accepted() -> None:
    seeded = definition(
        sampler={"type": "tpe", "seed": 2**32 - 1},
        limits={"trials": 1_000_000},
        parameters={"seed": {"type": "int", "low": 0, "high": 2**32 - 1}},
    )
    assert seeded.sampler.seed == 2**32 - 1 and seeded.n_trials == 1_000_000


def test_a_huge_int_range_is_fine_outside_a_grid() -> None:
    spec = definition(parameters={"batch_size": {"type": "int", "low": 1, "high": 2**62}})
    assert spec.parameters.searched()["batch_size"].high == 2**62
