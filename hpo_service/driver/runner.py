"""Runs a study: checks its data, then Ray Tune + Optuna trials, recorded in SQL. The one home of
Ray in hpo-service."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import optuna
import ray
from optuna.trial import TrialState as OptunaTrialState
from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    AsyncHyperBandScheduler,
    FIFOScheduler,
    MedianStoppingRule,
    TrialScheduler,
)
from ray.tune.stopper import CombinedStopper

from hpo_service.core.confirmation import candidates, confirmation_seeds, rank
from hpo_service.core.definition import (
    Asha,
    Hyperband,
    MedianStopping,
    Objective,
    PopulationBased,
    StudyDefinition,
)
from hpo_service.core.errors import DefinitionError, HpoError, RayUnavailableError
from hpo_service.core.packing import DeviceFacts, plan_packing
from hpo_service.core.pareto import describe
from hpo_service.core.records import (
    ACTIVE_STATUSES,
    RunEnvironment,
    StudyRecord,
    StudyStatus,
    TrialState,
    check_warm_start,
)
from hpo_service.core.settings import LOCAL_OBJECT_STORE_BYTES, Settings, unreachable
from hpo_service.data import dataset_fingerprint, load_labelled_data
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.db.reconcile import CONFIRMS_ATTR, SEED_ATTR, fail_cut_off_trials, reconcile
from hpo_service.db.store import Store
from hpo_service.driver.fusion import MEMBER_CPUS, fused_member_trial, start_workers
from hpo_service.driver.population import (
    PopulationSearch,
    is_population_based,
    pbt_scheduler,
)
from hpo_service.driver.recorder import BudgetWatch, CancelWatch, FailedTrialLimit, TrialRecorder
from hpo_service.driver.search_space import optuna_distributions, optuna_sampler
from hpo_service.driver.searcher import StudySearcher, warm_start_trials
from hpo_service.training.engine import TrialSetup
from hpo_service.training.footprint import gpu_memory_bytes, trial_footprint
from hpo_service.training.modeling import model_type, tokenize
from hpo_service.training.trainable import train_trial

GPU_PROBE_TIMEOUT_S = 300
# Optuna's study user attribute with the confirmed best configuration, for the dashboard.
CONFIRMED_BEST_ATTR = "hpo:confirmed_best"
# ... and with several objectives, the point of the Pareto front that the `pick` rule picks.
PICKED_BEST_ATTR = "hpo:picked_best"
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
    # `ray.init` sets a SIGTERM handler of its own (exit at once): a Python handler the caller
    # had set (`hpo run`'s: stop as Ctrl-C does) is put back.
    handler = signal.getsignal(signal.SIGTERM)
    _init_ray(settings)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        ray.shutdown()


def _init_ray(settings: Settings) -> None:
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
    store.check_name_free(definition.name)  # before the costly tokenizing and Ray
    check_warm_start(definition, store.find_study)
    setup = prepare_trials(definition)
    with ray_runtime(settings):  # before the study is stored: no cluster, no study
        check_trials_fit(definition, settings)
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
        try:
            check_trials_fit(definition, settings)
        except HpoError as error:
            store.set_status(name, StudyStatus.FAILED, str(error))
            raise
        return _run(store, definition, settings, setup, callbacks)


def check_trials_fit(definition: StudyDefinition, settings: Settings) -> None:
    """Refuse a study whose trial asks for more CPUs or GPUs than any node of a Ray cluster
    that never gains nodes (``settings.ray_fixed_size``) has: Ray would wait for one forever.

    Raises ``DefinitionError`` naming ``resources_per_trial``'s field at fault.
    """
    fixed = settings.ray_fixed_size
    if not (fixed if fixed is not None else not settings.ray_address):
        return
    asked = definition.resources_per_trial
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    if any(
        asked.cpus <= node.get("CPU", 0.0) + 1e-9 and asked.gpus <= node.get("GPU", 0.0) + 1e-9
        for node in nodes
    ):
        return
    field = "gpus" if asked.gpus > gpus + 1e-9 else "cpus"
    raise DefinitionError(
        f"resources_per_trial.{field}",
        f"a trial asks for {asked.cpus:g} CPUs and {asked.gpus:g} GPUs, but no node of this Ray "
        f"cluster has them (at most {cpus:g} CPUs and {gpus:g} GPUs a node), and it gains no "
        "nodes (HPO_RAY_FIXED_SIZE)",
    )


def prepare_trials(definition: StudyDefinition) -> TrialSetup:
    """Read, check and tokenize the study's data once, for every trial."""
    data = load_labelled_data(definition.dataset)
    tokenized = tokenize(definition.model, data, definition.dataset.max_seq_length)
    return TrialSetup(
        model=definition.model,
        metric=definition.objective.metric,
        data=tokenized,
        checkpoints=definition.execution.checkpoints,
    )


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
    if not store.set_status(name, StudyStatus.RUNNING, only_from=ACTIVE_STATUSES):
        return store.get_study(name)  # cancelled before it started
    failed_before = store.get_study(name).trial_counts[TrialState.FAILED]
    failures = FailedTrialLimit(definition.limits.max_failed_trials, failed_before)
    budget = BudgetWatch(store, definition)
    stoppers = [failures, budget, *callbacks]
    try:
        store.record_run_environment(name, run_environment(definition))
        reconcile(store, optuna_storage(settings.database_url), name)
        remaining = definition.n_trials - store.finished_trial_count(name)
        search_ended = None
        if remaining > 0 and not budget.used_up():
            search_ended = _fit(definition, remaining, settings, setup, store, stoppers)
        if definition.confirm and not failures.reached and not budget.used_up():
            _confirm(definition, settings, setup, store, stoppers)
        if len(definition.goals) > 1:
            _show_pick(definition, settings, store)
    except KeyboardInterrupt:
        reconcile(store, optuna_storage(settings.database_url), name)
        store.set_status(name, StudyStatus.CANCELLED, "interrupted", only_from=ACTIVE_STATUSES)
        raise
    except BaseException as error:
        store.set_status(name, StudyStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    if failures.reached:
        message = f"stopped after {failures.failed} failed trials (limits.max_failed_trials)"
        store.set_status(name, StudyStatus.FAILED, message, only_from=ACTIVE_STATUSES)
    elif budget.reason is not None:  # it did what it was allowed to: a result, not a failure
        store.set_status(name, StudyStatus.COMPLETED, budget.reason, only_from=ACTIVE_STATUSES)
    else:
        store.set_status(name, StudyStatus.COMPLETED, search_ended, only_from=ACTIVE_STATUSES)
    # The study ended on its own: no trial of it will run again, so its checkpoints can go.
    for checkpoint in (settings.work_dir / "ray_results" / name).glob("*/checkpoint_*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    return store.get_study(name)


def _show_pick(definition: StudyDefinition, settings: Settings, store: Store) -> None:
    """Put the Pareto front's picked point, and the rule, into Optuna's study for the
    dashboard (which draws the front itself)."""
    picked = store.best_trial(definition.name)
    if picked is None:
        return
    study = optuna.load_study(
        study_name=definition.name, storage=optuna_storage(settings.database_url)
    )
    rule = describe(definition.goals, definition.picking)
    study.set_user_attr(PICKED_BEST_ATTR, {"trial": picked.number, "rule": rule})


def _confirm(
    definition: StudyDefinition,
    settings: Settings,
    setup: TrialSetup,
    store: Store,
    callbacks: Sequence[tune.Callback],
) -> None:
    """The confirmation stage: each of the search's best configurations once per fresh seed,
    enqueued in Optuna (a run a crash cut off is enqueued again by ``reconcile``), all run to
    their full budget; then the winner by mean goes into Optuna's study for the dashboard."""
    assert definition.confirm is not None
    name = definition.name
    if store.get_study(name).status.is_finished:  # cancelled during the search
        return
    mode = definition.objective.mode
    study = optuna.load_study(study_name=name, storage=optuna_storage(settings.database_url))
    trials = study.get_trials(deepcopy=False)
    queued = {
        (t.user_attrs[CONFIRMS_ATTR], t.user_attrs[SEED_ATTR])
        for t in trials
        if CONFIRMS_ATTR in t.user_attrs
    }
    for number in candidates(store.trials(name), definition.confirm, mode):
        for seed in confirmation_seeds(definition.confirm):
            if (number, seed) in queued:
                continue
            params = dict(trials[number].params)
            if "seed" in params:  # the seed is searched: this run's is fresh
                params["seed"] = seed
            attrs = {CONFIRMS_ATTR: number, SEED_ATTR: seed}
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    waiting = study.get_trials(deepcopy=False, states=(OptunaTrialState.WAITING,))
    runs = sum(CONFIRMS_ATTR in t.user_attrs for t in waiting)
    if runs:
        _fit(definition, runs, settings, setup, store, callbacks, confirming=True)
    ranked = rank(store.trials(name), mode)
    if ranked:
        study.set_user_attr(CONFIRMED_BEST_ATTR, ranked[0].as_dict())


def _fit(
    definition: StudyDefinition,
    n_trials: int,
    settings: Settings,
    setup: TrialSetup,
    store: Store,
    callbacks: Sequence[tune.Callback],
    confirming: bool = False,
) -> str | None:
    """Run ``n_trials`` trials: the search's (sampled, stopped early as the definition says,
    within its time budget) or, ``confirming``, the enqueued confirmation runs (whole budget).
    Returns why the search ended short of them when every configuration had been tried."""
    mode = _ray_mode(definition.objective)
    goals = definition.goals
    storage = optuna_storage(settings.database_url)
    population = is_population_based(definition) and not confirming
    searcher = StudySearcher(
        repeats=population,
        draw_seed=definition.sampler.seed,
        space=optuna_distributions(definition),
        # Several objectives: Optuna is told each one; else the primary, as "objective".
        metric=[goal.metric for goal in goals] if len(goals) > 1 else "objective",
        mode=[_ray_mode(goal) for goal in goals] if len(goals) > 1 else mode,
        sampler=optuna_sampler(definition),
        study_name=definition.name,
        storage=storage,
    )
    if not searcher.seeded:  # run again after a crash: it was seeded the first time
        source = definition.warm_start.study if definition.warm_start else None
        searcher.seed(source, warm_start_trials(definition, storage), definition.enqueue)
    stoppers = [CancelWatch(store, definition.name)]
    stoppers += [c for c in callbacks if isinstance(c, tune.Stopper)]
    packing = plan_packing(definition, device_facts(definition, setup))
    workers = []
    if packing.fuse_trials > 1:
        workers = start_workers(
            ray.put(setup),
            count=packing.workers,
            capacity=packing.fuse_trials,
            cpus=packing.cpus_per_worker,
            gpus=packing.gpus_per_worker,
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                fused_member_trial, workers=workers, checkpoints=setup.checkpoints
            ),
            {"cpu": MEMBER_CPUS},
        )
    else:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, setup=setup),
            {"cpu": packing.cpus_per_worker, "gpu": packing.gpus_per_worker},
        )
    recorders: list[tune.Callback] = [TrialRecorder(store, definition.name, searcher)]
    search: Any = searcher
    concurrent: int | None = packing.concurrent_trials
    scheduler = FIFOScheduler() if confirming else _scheduler(definition, mode)
    param_space: dict[str, Any] = definition.parameters.fixed_values()
    if population:
        # Ray's PBT takes no search algorithm: the population is asked of Optuna up front.
        members = PopulationSearch(searcher, store, definition.name, definition)
        search = members.search(n_trials, packing.concurrent_trials)
        recorders.insert(0, members)
        stoppers.append(members)
        concurrent = None  # the generator limits it
        param_space = {**param_space, **members.keys()}
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=n_trials,
            max_concurrent_trials=concurrent,
            time_budget_s=None if confirming else definition.limits.time_budget_s,
            # Actors are reused only where a stopped trial's thread waits at its last report and
            # ends at once: a PBT member moved, or a fused member's stand-in (waiting on its
            # worker for an epoch), may not end within Ray's reset wait (RESET_WAIT_SECONDS).
            reuse_actors=not population and packing.fuse_trials <= 1,
        ),
        run_config=tune.RunConfig(
            name=definition.name,
            storage_path=str(settings.work_dir / "ray_results"),
            callbacks=[*recorders, *callbacks],
            stop=CombinedStopper(*stoppers),
            failure_config=tune.FailureConfig(max_failures=0),
            # PBT restores a trial from a checkpoint another trial may have gone past already:
            # it keeps them all until the study ends (and they are deleted).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if concurrent is None else 1),
            verbose=0,
        ),
    )
    started = time.monotonic()
    try:
        tuner.fit()
    finally:
        for worker in workers:
            ray.kill(worker)
    if not store.running_trial_numbers(definition.name):
        return searcher.ended
    reasons = [getattr(s, "reason", None) or type(s).__name__ for s in stoppers if s.stop_all()]
    budget_s = None if confirming else definition.limits.time_budget_s
    if budget_s is not None and time.monotonic() - started >= budget_s:
        reasons.append("limits.time_budget_s reached")
    if not reasons:  # Ray Tune ends quietly on Ctrl-C (SIGINT), with trials cut off: say so
        raise KeyboardInterrupt
    # The study stopped them (cancelled, out of budget or time, too many failures): they failed.
    fail_cut_off_trials(store, storage, definition.name, "; ".join(reasons))
    return searcher.ended


def device_facts(definition: StudyDefinition, setup: TrialSetup) -> DeviceFacts:
    """The GPU memory a trial would get and its estimated footprint; nothing on CPU trials."""
    resources = definition.resources_per_trial
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    if resources.gpus == 0 or cluster_gpus == 0:
        return DeviceFacts()
    probe = ray.remote(num_gpus=min(resources.gpus, 1.0))(gpu_memory_bytes)
    trial_bytes, member_bytes = trial_footprint(
        definition.model,
        setup.data.label_names,
        definition.parameters.largest("batch_size"),
        definition.dataset.max_seq_length,
    )
    return DeviceFacts(
        gpu_memory_bytes=ray.get(probe.remote(), timeout=GPU_PROBE_TIMEOUT_S),
        cluster_gpus=cluster_gpus,
        trial_bytes=trial_bytes,
        member_bytes=member_bytes,
    )


def _ray_mode(objective: Objective) -> str:
    return "max" if objective.mode == "maximize" else "min"


def _scheduler(definition: StudyDefinition, mode: str) -> TrialScheduler:
    """Ray Tune's scheduler for the study's early stopping. Time is counted in epochs, not in
    Ray's iterations: a trial resumed after a crash starts past its first epoch."""
    rule = definition.early_stopping
    common: dict[str, Any] = {"time_attr": "epoch", "metric": "objective", "mode": mode}
    if isinstance(rule, Asha):
        return ASHAScheduler(
            **common,
            max_t=definition.parameters.max_epochs(),
            grace_period=rule.grace_period,
            reduction_factor=rule.reduction_factor,
        )
    if isinstance(rule, Hyperband):
        return AsyncHyperBandScheduler(
            **common,
            max_t=definition.parameters.max_epochs(),
            grace_period=rule.grace_period,
            reduction_factor=rule.reduction_factor,
            brackets=rule.brackets,
        )
    if isinstance(rule, PopulationBased):
        return pbt_scheduler(definition, mode)
    if isinstance(rule, MedianStopping):
        return MedianStoppingRule(
            **common,
            grace_period=rule.grace_period,
            min_samples_required=rule.min_samples_required,
        )
    return FIFOScheduler()
