"""Prometheus metrics of the endpoint: requests, latency, tokens, the adapter in use, swaps.

The endpoint runs one worker, which holds every value, so its metrics live in a registry of their own and
`exposition(content)` appends that registry's text to BentoML's /metrics output. BentoML's multiprocess
collection is not trusted with them: BentoML 1.4.40 keeps PROMETHEUS_MULTIPROC_DIR at
$BENTOML_HOME/prometheus_multiproc_dir, shared by every BentoML server of the user, and wipes it whenever a
server starts, so a second server on the machine erases the first one's files and its values show up in the
first one's /metrics. Any `lema_endpoint_*` lines BentoML collected from that folder are dropped from its output;
the values of this process (still held in memory) are the ones reported.
"""

from __future__ import annotations

_PREFIX = "lema_endpoint_"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


FLEET_STATES = ("in_sync", "behind", "refused", "unavailable")


class EndpointMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lema_endpoint_requests", "Inference requests by route, served model and HTTP status",
            ["route", "model", "status"], registry=r,
        )
        self.latency = Histogram(
            "lema_endpoint_request_seconds", "Inference request latency", ["route"], buckets=_BUCKETS, registry=r
        )
        self.tokens = Counter(
            "lema_endpoint_tokens", "Tokens processed, by served model and kind (prompt|completion)",
            ["model", "kind"], registry=r,
        )
        # The correction API, per API key (its name: never the key).
        self.api_requests = Counter(
            "lema_endpoint_api_requests", "Correction API requests by API key name, route and HTTP status",
            ["key", "route", "status"], registry=r,
        )
        self.api_corrections = Counter(
            "lema_endpoint_api_corrections", "Corrections billed to each API key (cached answers are not)", ["key"],
            registry=r,
        )
        self.api_rate_limited = Counter(
            "lema_endpoint_api_rate_limited", "Requests refused with 429, by API key name and limit",
            ["key", "limit"], registry=r,
        )
        self.in_flight = Gauge(
            "lema_endpoint_in_flight", "Requests generating now, by served model", ["model"],
            multiprocess_mode="livesum", registry=r,
        )
        self.promoted = Gauge(
            "lema_endpoint_promoted", "1 for the model serving requests that name none (the promoted adapter)",
            ["model"], multiprocess_mode="livemostrecent", registry=r,
        )
        self.adapters_loaded = Gauge(
            "lema_endpoint_adapters_loaded", "LoRA adapters loaded and serving", multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.swaps = Counter(
            "lema_endpoint_swaps", "Adapter operations (load, unload, promote, rollback) by outcome",
            ["action", "outcome"], registry=r,
        )
        self.swap_latency = Histogram(
            "lema_endpoint_swap_seconds", "Duration of adapter operations", ["action"], buckets=_BUCKETS, registry=r
        )
        self.engine = Gauge(
            "lema_endpoint_engine_info", "The engine serving (value 1)", ["engine", "model"],
            multiprocess_mode="livemostrecent", registry=r,
        )
        self.fleet_generation = Gauge(
            "lema_endpoint_promotion_generation", "The fleet promotion record's generation this replica serves",
            multiprocess_mode="livemostrecent", registry=r,
        )
        self.fleet_state = Gauge(
            "lema_endpoint_promotion_state", "1 for this replica's state against the promotion record",
            ["state"], multiprocess_mode="livemostrecent", registry=r,
        )
        self.queue = Gauge(
            "lema_endpoint_queue_sequences", "Sequences (prompts x n) waiting to join the running batch",
            multiprocess_mode="livemostrecent", registry=r,
        )
        self.batch_rows = Histogram(
            "lema_endpoint_batch_rows", "Rows (sequences) in the running batch, per decoding step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.ttft = Histogram(
            "lema_endpoint_time_to_first_token_seconds", "From a request's arrival at the engine to its first token",
            buckets=_BUCKETS, registry=r,
        )
        self._promoted: str | None = None

    def watch_engine(self, engine) -> None:
        """Feed the scheduler's steps into the queue, batch-size and TTFT series (engines with a scheduler)."""
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is not None:
            scheduler.observer = self

    def on_step(self, rows: int, waiting: int) -> None:
        self.batch_rows.observe(rows)
        self.queue.set(waiting)

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def set_fleet(self, generation: int, state: str) -> None:
        self.fleet_generation.set(generation)
        for name in FLEET_STATES:
            self.fleet_state.labels(name).set(1 if name == state else 0)

    def set_promoted(self, served_name: str) -> None:
        if self._promoted is not None and self._promoted != served_name:
            self.promoted.labels(self._promoted).set(0)
        self.promoted.labels(served_name).set(1)
        self._promoted = served_name

    def observe_request(self, route: str, model: str, status: int, seconds: float,
                        prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, "completion").inc(completion_tokens)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def exposition(self, content: str) -> str:
        """BentoML's /metrics text (without any lema_endpoint_* series it collected from files) plus ours."""
        kept = [
            line for line in content.splitlines()
            if not line.startswith(_PREFIX) and not line.startswith(("# HELP " + _PREFIX, "# TYPE " + _PREFIX))
        ]
        return "\n".join(kept).rstrip("\n") + "\n" + self.text()
