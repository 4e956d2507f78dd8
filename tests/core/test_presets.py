"""The search-space presets in search_spaces/: each validates, converts to Optuna, and the paper
grids are exactly the published ones."""

from __future__ import annotations

import itertools
import re
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from hpo_service.core.definition import Categorical, Fixed, GridSampler, StudyDefinition
from hpo_service.core.presets import list_presets, presets_dir, resolve_definition
from hpo_service.driver.search_space import optuna_distributions, optuna_sampler

PRESETS = sorted(list_presets())
DATASET = {"train": "train.csv"}
# The paper each paper preset's first line must cite, and the size of its grid.
PAPER_GRIDS = {
    "bert-paper": ("Devlin et al. 2019", 18),
    "roberta-paper": ("Liu et al. 2019", 6),
    "albert-paper": ("Lan et al. 2020", 12),
}


def with_preset(name: str, **overrides: Any) -> StudyDefinition:
    return resolve_definition({"name": "study-1", "preset": name, "dataset": DATASET, **overrides})


def run_grid(study: StudyDefinition) -> list[dict[str, Any]]:
    """The parameters of the ``n_trials`` trials Optuna's grid sampler gives the definition."""
    distributions = optuna_distributions(study)
    assert all(isinstance(d, CategoricalDistribution) for d in distributions.values())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = optuna.create_study(sampler=optuna_sampler(study))
    for _ in range(study.n_trials):
        trial = runs.ask(distributions)
        runs.tell(trial, 0.0)
    return [trial.params for trial in runs.trials]


def test_the_documented_presets_exist() -> None:
    assert {"default", *PAPER_GRIDS} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates_and_converts_to_optuna(name: str) -> None:
    study = with_preset(name)
    searched = study.parameters.searched()
    assert searched, f"{name} searches nothing"
    distributions = optuna_distributions(study)
    assert set(distributions) == set(searched)
    sampler = optuna_sampler(study)
    if isinstance(study.sampler, GridSampler):
        assert isinstance(sampler, optuna.samplers.GridSampler)
        grid = study.parameters.grid()
        for param, distribution in distributions.items():
            assert list(distribution.choices) == grid[param]
        assert study.n_trials == study.grid_size()
    else:
        assert not isinstance(sampler, optuna.samplers.GridSampler)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_starts_with_a_comment_citing_its_source(name: str) -> None:
    lines = (presets_dir() / f"{name}.yaml").read_text().splitlines()
    assert lines[0].startswith("#") and lines[0].lstrip("# ").strip()
    assert list_presets()[name] == lines[0].lstrip("# ").strip()
    header = " ".join(line for line in itertools.takewhile(lambda x: x.startswith("#"), lines))
    assert re.search(r"[A-Z][a-z]+ et al\.,? (19|20)\d\d", header), f"{name} cites no paper"


@pytest.mark.parametrize(("name", "paper", "size"), [(n, *v) for n, v in PAPER_GRIDS.items()])
def test_paper_preset_runs_its_whole_grid(name: str, paper: str, size: int) -> None:
    assert paper in (presets_dir() / f"{name}.yaml").read_text().splitlines()[0]
    study = with_preset(name)
    assert study.grid_size() == size
    assert study.n_trials == size
    # n_trials trials visit every grid point once.
    assert len({tuple(sorted(t.items())) for t in run_grid(study)}) == size


def test_bert_paper_grid_is_devlin_et_al() -> None:
    study = with_preset("bert-paper")
    assert study.parameters.grid() == {
        "learning_rate": [5e-5, 3e-5, 2e-5],
        "batch_size": [16, 32],
        "num_train_epochs": [2, 3, 4],
    }
    assert study.parameters.fixed_values()["dropout"] == 0.1
    expected = {
        (("batch_size", b), ("learning_rate", lr), ("num_train_epochs", e))
        for lr, b, e in itertools.product([5e-5, 3e-5, 2e-5], [16, 32], [2, 3, 4])
    }
    assert {tuple(sorted(t.items())) for t in run_grid(study)} == expected


def test_default_preset_uses_tpe() -> None:
    study = with_preset("default")
    assert isinstance(optuna_sampler(study), optuna.samplers.TPESampler)
    assert study.n_trials == 10


def test_inline_fixed_value_replaces_the_presets_choices() -> None:
    study = with_preset("bert-paper", parameters={"learning_rate": 1e-5})
    assert study.parameters.learning_rate == Fixed(type="fixed", value=1e-5)
    assert "learning_rate" not in optuna_distributions(study)
    # The rest of the preset stays.
    assert isinstance(study.parameters.batch_size, Categorical)
    assert study.parameters.fixed_values()["weight_decay"] == 0.01
    assert study.grid_size() == 6


def test_inline_choices_replace_the_presets_choices() -> None:
    study = with_preset(
        "roberta-paper", parameters={"batch_size": {"type": "categorical", "choices": [8]}}
    )
    assert study.parameters.grid()["batch_size"] == [8]
    assert study.grid_size() == 3


def test_inline_sampler_replaces_the_presets_sampler_whole() -> None:
    # default.yaml's sampler has n_startup_trials, which a grid sampler does not take.
    study = with_preset(
        "default",
        sampler={"type": "grid"},
        parameters={
            "learning_rate": {"type": "categorical", "choices": [1e-5, 3e-5]},
            "dropout": 0.1,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
        },
    )
    assert isinstance(study.sampler, GridSampler)
    assert isinstance(optuna_sampler(study), optuna.samplers.GridSampler)
    assert study.grid_size() == 2 * 4  # learning rates x default.yaml's batch sizes


def test_inline_random_sampler_on_a_grid_preset() -> None:
    study = with_preset("bert-paper", sampler={"type": "random", "seed": 7})
    assert study.sampler.type == "random"
    assert isinstance(optuna_sampler(study), optuna.samplers.RandomSampler)
    assert study.n_trials == 10
