"""All of lema's configuration in one typed place, from one mechanism with one precedence rule (lowest first):

1. the defaults declared here;
2. the YAML file (`--config`, or $LEMA_CONFIG; `deploy/lema.yaml` is the reference);
3. the environment: `LEMA_<SECTION>__<FIELD>` (e.g. `LEMA_ENDPOINT__PORT=4000`, `LEMA_CLIENT__VERIFIER=host:port`;
   lists and objects as JSON), read by pydantic-settings;
4. the flags a command was given (single fields, applied by the command).

Unknown keys are errors at every layer, so a typo never silently falls back to a default. Secrets are never
values here: a field names the environment variable that holds one (`auth_token_env`, `api_key_env`, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = {"verifier": 50061, "reasoner": 50062, "corrector": 50063, "trainer": 50064, "collector": 50065,
                 "endpoint": 3000, "review": 3100}


# A TCP port; every service section declares its own default port with this type, so the bound holds in all of them.
Port = Annotated[int, Field(ge=0, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrpcServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 0
    grace_s: float = Field(default=10.0, ge=0, description="time in-flight calls get to finish on SIGTERM")
    drain_delay_s: float = Field(default=1.0, ge=0, le=60, description="on SIGTERM, how long the server reports "
                                 "NOT_SERVING before it stops accepting calls (clients move to other replicas)")
    metrics_port: Port | None = Field(default=None, description="Prometheus /metrics port")
    max_message_mb: int = Field(default=64, ge=1)
    # Security (lema.core.security): a token when its variable is set; TLS when a certificate is given.
    auth_token_env: str = Field(default="LEMA_API_TOKEN",
                                description="env var holding the bearer token every call must carry (when set)")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve TLS only")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(default=None, description="PEM CA: require client certificates (mutual TLS)")
    insecure: bool = Field(default=False, description="serve a non-loopback host without a token")


class ClientConfig(_Section):
    """How every lema client reaches lema's gRPC services (lema.core.security.open_channel)."""

    verifier: str = Field(default="local", min_length=1, max_length=1000,
                          description="the verifier every consumer uses (the reasoner, the corrector, the collector, "
                                      "training evaluation): 'local' (worker processes in the consumer, with the "
                                      "verifier section's workers and item_timeout_s) or the verifier service's "
                                      "gRPC target (host:port, dns:///name:port)")

    auth_token_env: str = Field(default="LEMA_API_TOKEN", description="env var whose token every call carries (when set)")
    tls: bool = Field(default=False, description="connect with TLS")
    tls_ca: Path | None = Field(default=None, description="PEM CA to trust (default: the system roots)")
    tls_cert: Path | None = Field(default=None, description="PEM client certificate chain (mutual TLS)")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    tls_server_name: str | None = Field(default=None, description="the name to expect in the server's certificate")
    # A Kubernetes Service puts several replicas behind one name: with gRPC's default pick_first every call goes to
    # one of them. round_robin over a `dns:///name:port` target (a headless Service) spreads calls over all.
    load_balancing: Literal["round_robin", "pick_first"] = Field(
        default="round_robin", description="gRPC load-balancing policy over the addresses a target resolves to")
    retry_attempts: int = Field(default=3, ge=1, le=5,
                                description="attempts per call on UNAVAILABLE (gRPC retry policy; 1 = no retry)")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class VerifierConfig(GrpcServerConfig):
    port: Port = DEFAULT_PORTS["verifier"]
    workers: int = Field(default_factory=_default_workers, ge=1, le=64)
    item_timeout_s: float = Field(default=5.0, gt=0, le=600, description="hard limit per verified item")
    max_candidate_chars: int = Field(default=200_000, ge=1)
    max_gold_chars: int = Field(default=10_000, ge=1)
    max_batch_items: int = Field(default=10_000, ge=1)


class ReasonerConfig(GrpcServerConfig):
    port: Port = DEFAULT_PORTS["reasoner"]
    model: str = Field(default="lema-tiny", description="lema-tiny, smollm2, a local folder or a Hugging Face id")
    engine: Literal["vllm", "transformers", "openai"] = "transformers"
    base_url: str | None = Field(default=None, description="OpenAI-compatible server (engine=openai)")
    api_key_env: str = "OPENAI_API_KEY"
    max_samples: int = Field(default=64, ge=1, description="upper limit on n per problem")
    max_problems: int = Field(default=512, ge=1)
    max_question_chars: int = Field(default=8_000, ge=1)
    max_tokens_limit: int = Field(default=2_048, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=32, ge=1, description="problems per engine call (and per streamed chunk)")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for local engines (default 1 on CPU)")
    # LoadAdapter: the endpoint's confinement and validation (lema/core/adapter_registry.py), the same defaults.
    registry_dir: str = Field(default=".lema/adapters", description="LoadAdapter paths are confined to this folder")
    max_lora_rank: int = Field(default=64, ge=1, le=512)
    max_adapter_mb: int = Field(default=1024, ge=1, description="upper limit on an adapter's safetensors size")


class CorrectorConfig(GrpcServerConfig):
    port: Port = DEFAULT_PORTS["corrector"]
    upstream: Literal["reference", "openai"] = "reference"
    base_url: str | None = Field(default=None, description="OpenAI-compatible upstream (upstream=openai)")
    model: str = Field(default="gpt-4", description="the upstream's model name")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the API key")
    request_timeout_s: float = Field(default=60.0, gt=0, description="deadline of one upstream call")
    max_retries: int = Field(default=3, ge=0, description="retries on 429, 5xx and timeouts")
    max_concurrency: int = Field(default=8, ge=1, description="calls in flight toward the upstream")
    max_candidates: int = Field(default=3, ge=1, le=16, description="samples drawn until one verifies (with a gold answer)")
    temperature: float = Field(default=0.7, ge=0, description="sampling temperature of the 2nd..k-th candidates")
    max_tokens: int = Field(default=768, ge=1)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    cache_entries: int = Field(default=10_000, ge=0, description="accepted/unverified corrections kept (0: no cache)")
    cache_ttl_s: float = Field(default=86_400.0, gt=0, description="how long a cached correction is served")
    usd_per_million_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_million_completion_tokens: float = Field(default=0.0, ge=0)
    max_question_chars: int = Field(default=8_000, ge=1)
    max_solution_chars: int = Field(default=16_000, ge=1)
    max_batch_items: int = Field(default=1_000, ge=1)


DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class EndpointConfig(_Section):
    """The BentoML inference endpoint (services/endpoint): OpenAI-compatible API, /solve, LoRA hot-swap."""

    host: str = "127.0.0.1"
    port: Port = DEFAULT_PORTS["endpoint"]
    model: str = Field(default="lema-tiny", description="lema-tiny, smollm2, a local folder or a Hugging Face id")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        default="auto", description="auto = vLLM when importable and it starts, else transformers"
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads for the transformers engine (default 1)")
    registry_dir: str = Field(
        default=".lema/adapters",
        description="the adapter registry (the trainer's adapters_root): every adapter path is confined to it",
    )
    admin_token_env: str = Field(default="LEMA_ADMIN_TOKEN", description="env var holding the admin bearer token")
    preload: list[str] = Field(
        default_factory=list, description="adapters loaded at start: PATH or NAME=PATH, relative to registry_dir"
    )
    promote: str | None = Field(default=None, description="adapter (a preloaded NAME) promoted at start")
    max_lora_rank: int = Field(default=64, ge=1, le=512)
    allowed_target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    max_loaded_adapters: int = Field(default=8, ge=1, le=256)
    max_adapter_mb: int = Field(default=1024, ge=1, description="upper limit on an adapter's safetensors size")
    smoke_prompt: str = "Question: What is 2 + 3?\nAnswer:"
    smoke_max_tokens: int = Field(default=4, ge=1, le=64)
    drain_timeout_s: float = Field(default=60.0, gt=0, description="how long an unload waits for in-flight requests")
    stall_after_s: float = Field(default=600.0, gt=0, description="not ready while the engine has had work but made "
                                                                  "no progress for this long (a wedged engine)")
    default_max_tokens: int = Field(default=256, ge=1)
    max_tokens_limit: int = Field(default=2_048, ge=1)
    max_batch_rows: int = Field(default=32, ge=1, le=4096, description="transformers engine: sequences generating at "
                                                                      "once (continuous batching)")
    max_sequences_per_request: int = Field(
        default=128, ge=1, le=4096,
        description="prompts x n one request may ask for (400 past it): one client's request cannot hold the engine")
    max_waiting_sequences: int = Field(
        default=1024, ge=1, description="sequences queued for the engine; past it requests answer 503 with Retry-After")
    shutdown_grace_s: float = Field(
        default=20.0, ge=0, le=3600,
        description="on SIGTERM, how long requests in flight may finish before they are cancelled (below "
                    "Kubernetes' default 30 s termination grace period)")
    vllm_kv_cache_gib: int | None = Field(default=None, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="vLLM engine: GPUs one replica shards "
                                                                        "the model over (needs that many GPUs)")
    promotion_record: str | None = Field(
        default=None, description="fleet-wide promotion: a file name in registry_dir naming the adapter every replica "
                                  "serves; this replica follows it (None: the admin API alone decides)")
    promotion_poll_s: float = Field(default=2.0, gt=0, le=3600, description="how often the promotion record is read")
    # Correction-as-a-service (/v1/corrections, /v1/verifications: services/endpoint/corrections.py).
    corrector: str = Field(default="local", min_length=1, max_length=1000,
                           description="who corrects for /v1/corrections: 'local' (the corrector proxy in this process, "
                                       "configured by the corrector section: reference or an OpenAI-compatible "
                                       "upstream) or the corrector service's gRPC target (host:port)")
    api_keys_file: str = Field(default=".lema/api-keys.json",
                               description="API keys (hashed) with their limits, written by `lema keys create`")
    api_keys_env: str = Field(default="LEMA_API_KEYS",
                              description="env var holding more key entries as JSON (e.g. a mounted secret)")
    corrections_open_on_loopback: bool = Field(
        default=False, description="development only: without a key, serve /v1/corrections and /v1/verifications "
                                   "to loopback clients when the endpoint listens on loopback (never otherwise)")
    max_correction_items: int = Field(default=64, ge=1, le=10_000, description="items one request may hold")
    correction_timeout_s: float = Field(default=300.0, gt=0, le=3600,
                                        description="deadline of one correction (the upstream's retries included)")


class TrainerConfig(GrpcServerConfig):
    port: Port = DEFAULT_PORTS["trainer"]
    runs_root: Path = Field(default=Path(".lema/runs"), description="one folder per training run")
    adapters_root: Path = Field(default=Path(".lema/adapters"), description="the adapter registry")
    exports_root: Path = Field(default=Path("."),
                               description="StartRun's export_path must be a file under this folder (default: the "
                                           "trainer's working directory)")
    endpoint_url: str = Field(default=f"http://127.0.0.1:{DEFAULT_PORTS['endpoint']}",
                              description="the BentoML endpoint that Promote hot-swaps adapters into")
    promote_endpoints: list[str] = Field(
        default_factory=list,
        description="further endpoints a Promote request may name in endpoint_url; the admin token is sent to "
                    "endpoint_url and these only, never to an address a client chose")
    admin_token_env: str = Field(default="LEMA_ADMIN_TOKEN", description="env var with the endpoint's admin token")
    promotion_record: str | None = Field(
        default=None, description="fleet-wide promotion: Promote writes this file in adapters_root (the record every "
                                  "endpoint replica follows) instead of calling endpoint_url")
    gate_margin: float = Field(
        default=0.01, gt=0, lt=1,
        description="the promotion gate's margin as an accuracy fraction (0.01: one point). Promote pairs the "
                    "adapter's outcomes on the gate's validation problems with the serving adapter's and the base "
                    "model's, and promotes only when the lower end of each paired 95% interval of the difference is "
                    "above -margin and the mean difference is at least 0; it refuses as too small to decide when the "
                    "problems cannot see a margin-sized difference (mde_80 > margin). docs/harness.md, 'Promotion "
                    "gate'")


class CollectorConfig(GrpcServerConfig):
    """The collector's intake server (`lema serve collector`): problems over gRPC into the intake table that
    `lema collect --follow` consumes, and the store's counts."""

    port: Port = DEFAULT_PORTS["collector"]
    store: str = Field(default="lema.db", description="an SQLite file path or a database URL (postgresql://...)")
    max_items_per_request: int = Field(default=10_000, ge=1, description="upper limit on problems per AddProblems")
    lease_s: float = Field(default=300.0, gt=0, description="a problem claimed by a `lema collect --follow` worker "
                                                             "returns to the queue when its worker has not renewed "
                                                             "the lease within this time (the worker died)")


class ReviewConfig(_Section):
    """The review pages (`lema serve review`, lema.services.review): people grade corrections in a browser."""

    host: str = Field(default="127.0.0.1", description="bind address; beyond loopback only with tls_cert and tls_key "
                                                       "(the session cookie carries proof of the token)")
    port: Port = DEFAULT_PORTS["review"]
    store: str = Field(default="lema.db", description="an SQLite file path or a database URL (postgresql://...)")
    token_env: str = Field(default="LEMA_REVIEW_TOKEN",
                           description="env var holding the bearer token every page and grade needs (unset: every "
                                       "request is refused, as the admin API does)")
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="how long a browser session lasts")
    page_size: int = Field(default=50, ge=1, le=500, description="corrections per queue page")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")


class LemaConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEMA_", env_nested_delimiter="__", extra="forbid",
                                      nested_model_default_partial_update=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # The environment above the file (passed as init values by load_config); no .env files, no secret dirs.
        return env_settings, init_settings

    client: ClientConfig = ClientConfig()
    verifier: VerifierConfig = VerifierConfig()
    reasoner: ReasonerConfig = ReasonerConfig()
    corrector: CorrectorConfig = CorrectorConfig()
    trainer: TrainerConfig = TrainerConfig()
    collector: CollectorConfig = CollectorConfig()
    endpoint: EndpointConfig = EndpointConfig()
    review: ReviewConfig = ReviewConfig()


def load_config(path: str | Path | None = None) -> LemaConfig:
    """The defaults, the config file (`path`, or $LEMA_CONFIG) and the `LEMA_<SECTION>__<FIELD>` environment."""
    path = path or os.environ.get("LEMA_CONFIG")
    data = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a lema config file is a mapping of sections (client, verifier, ...)")
    return LemaConfig(**data)


def section_env(section: str, values: dict) -> dict[str, str]:
    """The environment variables that set these fields of one section (layer 3): what a command hands a process
    it starts (`lema serve endpoint` -> `bentoml serve`). None values are left out (the field keeps its default)."""
    env = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        env[f"LEMA_{section.upper()}__{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env
