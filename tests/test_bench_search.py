"""The search-efficiency benchmark, tiny: a 2-layer BERT, two trials per method, one seed.

Random and TPE differ from the grid only in the service's sampler, so the grid, TPE + ASHA,
population-based training and hyperparameter_search stand for all the methods here (to keep the
test short).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "search_efficiency.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.usefixtures("ray_runtime")
def test_every_method_gets_the_same_budget_and_is_read_back(
    shared_data: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    bench = load_bench()
    methods = ["grid", "tpe-asha", "pbt", "hf-optuna"]
    argv = ["--tasks", "SST-2", "--methods", ",".join(methods), "--trials", "2", "--seeds", "0"]
    argv += ["--startup", "1"]
    argv += ["--train-samples", "16", "--eval-samples", "16", "--max-seq-length", "16"]
    argv += [
        "--model",
        str(tiny_models["bert"]),
        "--data",
        str(shared_data),
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0

    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    runs = result["runs"]
    assert sorted(r["method"] for r in runs) == sorted(methods)
    for run in runs:
        assert len(run["trials"]) == 2, run  # the same budget for every method
        for trial in run["trials"]:
            planned = int(trial["params"]["num_train_epochs"])
            assert 1 <= trial["epochs"] <= planned, (run["method"], trial)
            assert trial["epochs"] == planned or trial["stopped_early"], (run["method"], trial)
            assert trial["seconds"] > 0 and 0 <= trial["score"] <= 100
            # Its score after each epoch it trained, ending with the one it is ranked by.
            assert len(trial["curve"]) == trial["epochs"], (run["method"], trial)
            assert trial["curve"][-1] == pytest.approx(trial["score"]), (run["method"], trial)
    grid = next(r for r in runs if r["method"] == "grid")["trials"]
    assert grid[0]["params"] != grid[1]["params"]  # a subset of the grid, no point twice
    for method in ("grid", "tpe-asha"):  # the service trains no configuration twice
        assert result["summary"]["SST-2"]["methods"][method]["repeated_trials"] == 0

    sst2 = result["summary"]["SST-2"]
    best = max(t["score"] for r in runs for t in r["trials"])
    assert math.isclose(sst2["best"], best) and math.isclose(sst2["target"], best - 0.5)
    # The method that found the best score reached the target, within its own compute.
    winner = next(r for r in runs if any(t["score"] == best for t in r["trials"]))
    entry = sst2["methods"][winner["method"]]
    assert entry["epochs_to_target"] is not None
    assert entry["epochs_to_target"] <= sum(t["epochs"] for t in winner["trials"])
    assert set(result["targets"]["SST-2"]) >= {"epochs_vs_grid", "seconds_vs_hf_optuna"}
    assert (tmp_path / "search-sst-2-epochs.png").stat().st_size > 0
    assert (tmp_path / "search-sst-2-seconds.png").stat().st_size > 0


def test_a_configuration_run_again_in_a_study_counts_as_a_repeat() -> None:
    bench = load_bench()

    def trial(learning_rate: float, epochs: int) -> object:
        params = {"learning_rate": learning_rate, "num_train_epochs": epochs}
        return bench.Trial(
            score=60.0, epochs=epochs, seconds=10.0, params=params, stopped_early=False
        )

    first, other, again = trial(5e-5, 4), trial(3e-5, 2), trial(5e-5, 4)
    run = bench.SearchRun("SST-2", "tpe", 0, [first, other, again], wall_s=30.0)
    assert bench.repeats(run) == [again]
    tpe = bench.summarize([run])["SST-2"]["methods"]["tpe"]
    assert (tpe["repeated_trials"], tpe["repeated_epochs"]) == (1, 4)


def test_runs_of_several_commands_merge_into_one_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One seed a session: --replot merges their JSON files, and refuses a run given twice."""
    bench = load_bench()

    def result(seed: int, score: float) -> dict:
        trial = bench.Trial(
            score=score, epochs=2, seconds=5.0, params={"num_train_epochs": 2}, stopped_early=False
        )
        run = bench.SearchRun("CoLA", "grid", seed, [trial], wall_s=5.0)
        return {
            "machine": {"cpus": 2},
            "started": f"seed {seed}",
            "finished": f"seed {seed}",
            "argv": ["--seeds", str(seed)],
            "target_gap_points": 0.5,
            "runs": [dataclasses.asdict(run)],
        }

    files = []
    for seed, score in ((0, 8.0), (1, 12.0)):
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(result(seed, score)))
    out = tmp_path / "merged"  # made by the command
    assert bench.main(["--replot", *map(str, files), "--out", str(out)]) == 0
    merged = json.loads((out / "search_efficiency.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1]
    assert [m["argv"] for m in merged["merged_from"]] == [["--seeds", "0"], ["--seeds", "1"]]
    grid = merged["summary"]["CoLA"]["methods"]["grid"]
    assert merged["summary"]["CoLA"]["best"] == 12.0 and grid["reached"] == "1/2"
    capsys.readouterr()
    with pytest.raises(SystemExit, match="method grid, seed 0 twice"):
        bench.main(["--replot", str(files[0]), str(files[0]), "--out", str(out)])
