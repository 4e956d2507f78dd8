"""Runs a study: checks its data, then Ray Tune + Optuna trials, recorded in SQL. The one home of
Ray in hpo-service."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.stopper import CombinedStopper

from hpo_service.data import dataset_fingerprint, load_labelled_data
from hpo_service.db.optuna_storage import fail_running_optuna_trials, optuna_storage
from hpo_service.db.store import RunEnvironment, Store, StudyRecord
from hpo_service.db.tables import StudyStatus, TrialState
from hpo_service.definition import Asha, StudyDefinition
from hpo_service.errors import AlreadyExistsError, HpoError, RayUnavailableError
from hpo_service.modeling import model_type, tokenize
from hpo_service.recorder import CancelWatch, FailedTrialLimit, TrialRecorder
from hpo_service.search_space import optuna_distributions, optuna_sampler
from hpo_service.searcher import StudySearcher
from hpo_service.settings import Settings, unreachable
from hpo_service.trainable import TrialSetup, train_trial

LOCAL_OBJECT_STORE_BYTES = 1 << 30
INTERRUPTED = "interrupted: the study's driver stopped before this trial finished"
_RUNNABLE = {StudyStatus.QUEUED, StudyStatus.RUNNING}
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Our own tables and Optuna's hold the results; skip Ray's CSV/JSON/TensorBoard files.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
}


@contextmanager
def ray_runtime(settings: Settings) -> Iterator[None]:
    """Ray for the study: the cluster at ``settings.ray_address``, else a fresh local one.

    A Ray already initialised in this process is used as is and left running.
    """
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Ray's result files are off (see _RAY_ENV); its warnings that they are missing are noise.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        _check_reachable(settings.ray_address)
        try:
            ray.init(
                address=settings.ray_address, log_to_driver=False, logging_level=logging.WARNING
            )
        except ConnectionError as error:
            raise RayUnavailableError(
                f"cannot connect to the Ray cluster at HPO_RAY_ADDRESS={settings.ray_address}: "
                f"{error} ({error.__cause__}). A cluster started by `ray start` wants token "
                "authentication: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or the token file ~/.ray/auth_token)"
            ) from error
    else:
        ray.init(
            address="local",
            num_cpus=settings.ray_num_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster address nobody answers at (Ray itself retries for minutes)."""
    reason = unreachable(address, timeout=10)
    if reason is not None:
        raise RayUnavailableError(
            f"cannot connect to the Ray cluster at HPO_RAY_ADDRESS={address}: {reason}"
        )


def run_study(
    document: dict[str, Any],
    definition: StudyDefinition,
    settings: Settings,
    callbacks: Sequence[tune.Callback] = (),
) -> StudyRecord:
    """Check the data, store the study, run every trial, and return the finished study.

    Raises ``DefinitionError`` (bad data, before anything is stored),
    ``AlreadyExistsError`` (the name is taken) and ``RayUnavailableError``.
    """
    store = Store.open(settings.database_url)
    if definition.name in store.study_names():
        raise AlreadyExistsError(f"study {definition.name!r} already exists")
    setup = prepare_trials(definition)
    with ray_runtime(settings):  # before the study is stored: no cluster, no study
        store.create_study(document, definition)
        return _run(store, definition, settings, setup, callbacks)


def resume_study(
    name: str, settings: Settings, callbacks: Sequence[tune.Callback] = ()
) -> StudyRecord:
    """Run a stored study to its end: a queued one from the start, an interrupted one onwards.

    Trials that a dead driver left running are recorded as failed (in Optuna too) and count
    towards the study's trials; the rest of its trials run, so it ends with exactly
    ``limits.trials`` finished trials.
    """
    store = Store.open(settings.database_url)
    record = store.get_study(name)
    definition = StudyDefinition.model_validate(record.resolved_definition)
    try:
        setup = prepare_trials(definition)
    except HpoError as error:
        store.set_status(name, StudyStatus.FAILED, str(error))
        raise
    with ray_runtime(settings):
        return _run(store, definition, settings, setup, callbacks)


def prepare_trials(definition: StudyDefinition) -> TrialSetup:
    """Read, check and tokenize the study's data once, for every trial."""
    data = load_labelled_data(definition.dataset)
    tokenized = tokenize(definition.model, data, definition.dataset.max_seq_length)
    return TrialSetup(model=definition.model, metric=definition.objective.metric, data=tokenized)


def run_environment(definition: StudyDefinition) -> RunEnvironment:
    """The model's type, the data's fingerprint and the library versions trials run with."""
    return RunEnvironment(
        model_type=model_type(definition.model),
        dataset_fingerprint=dataset_fingerprint(definition.dataset),
        **{f"{name}_version": version(name) for name in ("torch", "transformers", "optuna", "ray")},
    )


def _run(
    store: Store,
    definition: StudyDefinition,
    settings: Settings,
    setup: TrialSetup,
    callbacks: Sequence[tune.Callback],
) -> StudyRecord:
    name = definition.name
    if not store.set_status(name, StudyStatus.RUNNING, only_from=_RUNNABLE):
        return store.get_study(name)  # cancelled before it started
    failed_before = store.get_study(name).trial_counts[TrialState.FAILED]
    failures = FailedTrialLimit(definition.limits.max_failed_trials, failed_before)
    try:
        store.record_run_environment(name, run_environment(definition))
        if store.fail_running_trials(name, INTERRUPTED):
            fail_running_optuna_trials(settings.database_url, name)
        remaining = definition.n_trials - store.finished_trial_count(name)
        if remaining > 0:
            _fit(definition, remaining, settings, setup, store, [failures, *callbacks])
    except KeyboardInterrupt:
        store.set_status(name, StudyStatus.CANCELLED, "interrupted", only_from=_RUNNABLE)
        raise
    except BaseException as error:
        store.set_status(name, StudyStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    if failures.reached:
        message = f"stopped after {failures.failed} failed trials (limits.max_failed_trials)"
        store.set_status(name, StudyStatus.FAILED, message, only_from=_RUNNABLE)
    else:
        store.set_status(name, StudyStatus.COMPLETED, only_from=_RUNNABLE)
    return store.get_study(name)


def _fit(
    definition: StudyDefinition,
    n_trials: int,
    settings: Settings,
    setup: TrialSetup,
    store: Store,
    callbacks: Sequence[tune.Callback],
) -> None:
    mode = "max" if definition.objective.mode == "maximize" else "min"
    searcher = StudySearcher(
        space=optuna_distributions(definition),
        metric="objective",
        mode=mode,
        sampler=optuna_sampler(definition),
        study_name=definition.name,
        storage=optuna_storage(settings.database_url),
    )
    stoppers = [c for c in callbacks if isinstance(c, tune.Stopper)]
    resources = definition.resources_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup),
        {"cpu": resources.cpus, "gpu": resources.gpus},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=definition.parameters.fixed_values(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(definition, mode),
            num_samples=n_trials,
            max_concurrent_trials=definition.limits.concurrent_trials,
            time_budget_s=definition.limits.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=definition.name,
            storage_path=str(settings.work_dir / "ray_results"),
            callbacks=[TrialRecorder(store, definition.name, searcher), *callbacks],
            stop=CombinedStopper(CancelWatch(store, definition.name), *stoppers),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    tuner.fit()


def _scheduler(definition: StudyDefinition, mode: str) -> TrialScheduler:
    early_stopping = definition.early_stopping
    if not isinstance(early_stopping, Asha):
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric="objective",
        mode=mode,
        max_t=definition.parameters.max_epochs(),
        grace_period=early_stopping.grace_period,
        reduction_factor=early_stopping.reduction_factor,
    )
