"""Prometheus metrics of one server (prometheus-client, on a registry of its own so that several
servers in one process, as in tests, do not collide)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engines.base import DecodeStats, Observed
from gpustack_cli.runtime.scheduler import Scheduler
from gpustack_cli.upstream.pool import RemoteEngine


class DecodeCollector(Collector):
    """Per model, what the engines that batch requests report of their decode loops: slots,
    tokens read and generated, prompt tokens reused from a slot's cache, time to first token and
    between tokens. Read from the engines as the metrics are rendered (they count in C-speed
    loops that must not call into Prometheus per token)."""

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None

    def collect(self) -> Iterator[Metric]:
        stats: list[tuple[str, DecodeStats]] = []
        for name, engine in self.scheduler.engines() if self.scheduler else []:
            found = engine.decode_stats() if hasattr(engine, "decode_stats") else None
            if found is not None:
                stats.append((name, found))
        slots = GaugeMetricFamily("gpustack_model_slots", "Request slots of a model that batches", labels=["model"])
        busy = GaugeMetricFamily("gpustack_model_slots_busy", "Slots decoding a request", labels=["model"])
        counters = {
            "prompt_tokens": CounterMetricFamily("gpustack_prompt_tokens", "Prompt tokens evaluated", labels=["model"]),
            "generated_tokens": CounterMetricFamily("gpustack_generated_tokens", "Tokens generated", labels=["model"]),
            "reused_tokens": CounterMetricFamily(
                "gpustack_prefix_cache_tokens", "Prompt tokens reused from a slot's cache", labels=["model"]
            ),
            "media_encoded": CounterMetricFamily(
                "gpustack_media_encoded", "Images and audio clips encoded by a model's projector", labels=["model"]
            ),
            "drafted_tokens": CounterMetricFamily(
                "gpustack_draft_tokens", "Tokens proposed by speculative drafting", labels=["model"]
            ),
            "accepted_tokens": CounterMetricFamily(
                "gpustack_draft_accepted_tokens", "Drafted tokens the model's own draw confirmed", labels=["model"]
            ),
        }
        first = HistogramMetricFamily(
            "gpustack_time_to_first_token_seconds", "From a request's arrival to its first token", labels=["model"]
        )
        between = HistogramMetricFamily(
            "gpustack_inter_token_latency_seconds", "Between a request's consecutive tokens", labels=["model"]
        )
        for name, s in stats:
            slots.add_metric([name], s.slots)
            busy.add_metric([name], s.busy)
            for key, family in counters.items():
                family.add_metric([name], getattr(s, key))
            first.add_metric([name], *_buckets(s.time_to_first_token))
            between.add_metric([name], *_buckets(s.inter_token))
        yield from (slots, busy, *counters.values(), first, between)


def _buckets(observed: Observed) -> tuple[list[tuple[str, float]], float]:
    cumulative, running = [], 0
    for bound, count in zip([*map(str, observed.bounds), "+Inf"], observed.counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return cumulative, observed.total


# Methods counted by name; any other is counted as "other", so clients cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpustack_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpustack_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "gpustack_internal_errors",
            "Exceptions no route turned into an API error: each one is a bug (logged with its traceback)",
            registry=self.registry,
        )
        self.in_flight = Gauge("gpustack_http_requests_in_flight", "Requests being answered", registry=self.registry)
        self.loaded = Gauge("gpustack_models_loaded", "Models loaded in memory", registry=self.registry)
        self.model_active = Gauge(
            "gpustack_model_requests_active", "Requests running on a model", ["model"], registry=self.registry
        )
        self.image_steps = Counter(
            "gpustack_image_steps", "Diffusion steps run, by model", ["model"], registry=self.registry
        )
        self.model_waiting = Gauge(
            "gpustack_model_requests_waiting", "Requests queued for a model", ["model"], registry=self.registry
        )
        self.upstream_up = Gauge(
            "gpustack_upstream_up",
            "Whether a loaded remote model's upstream is in the rotation (1) or left out after a failure (0)",
            ["model", "url"],
            registry=self.registry,
        )
        self.decoding = DecodeCollector()
        self.registry.register(self.decoding)
        # Labelled children by label values: looking them up is most of what counting costs.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counter = self._counted.get(key)
        if counter is None:
            known = method if method in METHODS else "other"
            counter = self._counted[key] = self.requests.labels(known, route, str(status))
        counter.inc()
        histogram = self._timed.get(route)
        if histogram is None:
            histogram = self._timed[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def render(self, scheduler: Scheduler) -> bytes:
        self.decoding.scheduler = scheduler
        loaded = scheduler.loaded()
        self.loaded.set(len(loaded))
        self.model_active.clear()
        self.model_waiting.clear()
        self.upstream_up.clear()
        for model in loaded:
            self.model_active.labels(model.name).set(model.active)
            self.model_waiting.labels(model.name).set(model.waiting)
        for name, engine in scheduler.engines():
            if isinstance(engine, RemoteEngine):
                for upstream in engine.upstreams:
                    self.upstream_up.labels(name, upstream.url).set(int(upstream.up))
        return generate_latest(self.registry)
