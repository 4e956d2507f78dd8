"""Prometheus metrics at /metrics: HTTP metrics from prometheus-fastapi-instrumentator, and the
state of the studies, read from the database at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from hpo_service.core.records import StudyStatus
from hpo_service.db.store import Store

DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, float("inf"))


class StudyCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counts = self.store.study_counts()
        studies = GaugeMetricFamily("hpo_studies", "Studies by status.", labels=["status"])
        for status, count in counts.items():
            studies.add_metric([status.value], count)
        yield studies
        queue = GaugeMetricFamily("hpo_queue_length", "Studies waiting to start.")
        queue.add_metric([], counts[StudyStatus.QUEUED])
        yield queue
        trials = GaugeMetricFamily("hpo_trials", "Trials by state.", labels=["state"])
        for state, count in self.store.trial_state_counts().items():
            trials.add_metric([state.value], count)
        yield trials
        yield self._durations()

    def _durations(self) -> Metric:
        durations = self.store.finished_trial_durations()
        histogram = HistogramMetricFamily(
            "hpo_trial_duration_seconds", "Wall time of finished trials.", labels=[]
        )
        buckets = [
            ("+Inf" if bound == float("inf") else str(bound), sum(d <= bound for d in durations))
            for bound in DURATION_BUCKETS
        ]
        histogram.add_metric([], buckets, sum(durations))
        return histogram


def add_metrics(app: FastAPI, store: Store) -> None:
    registry = CollectorRegistry()
    registry.register(StudyCollector(store))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False
    )
