"""`lema serve reasoner`: the reasoner gRPC server process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lema.core.config import ReasonerConfig
from lema.core.engines import create_engine
from lema.core.grpc_server import ServiceBinding, run_grpc_server
from lema.core.model_resolve import resolve_model
from lema.services.reasoner.servicer import ReasonerServicer
from lema.services.verifier import open_verifier
from lema.v1 import reasoner_pb2, reasoner_pb2_grpc

SERVICE_NAME = reasoner_pb2.DESCRIPTOR.services_by_name["Reasoner"].full_name


def build_engine(config: ReasonerConfig):
    if config.engine == "openai":
        if not config.base_url:
            raise ValueError("engine=openai needs --base-url")
        return create_engine("openai", config.model, base_url=config.base_url, api_key_env=config.api_key_env)
    options = {"batch_size": config.batch_size, "threads": config.threads} if config.engine == "transformers" else {}
    return create_engine(config.engine, resolve_model(config.model), **options)


async def serve(
    config: ReasonerConfig, adapters: dict[str, str] | None = None, on_ready: Callable[[int], None] | None = None
) -> None:
    engine = build_engine(config)
    if hasattr(engine, "start"):
        await engine.start()
    for name, path in (adapters or {}).items():
        await engine.load_adapter(name, path)
    verifier = open_verifier()  # client.verifier: local worker processes, or the verifier service
    await verifier.start()
    servicer = ReasonerServicer(engine, config, verifier)
    binding = ServiceBinding(SERVICE_NAME, lambda server: reasoner_pb2_grpc.add_ReasonerServicer_to_server(servicer, server))

    async def shutdown() -> None:
        await verifier.close()
        await engine.close()

    await run_grpc_server(config, [binding], on_ready=on_ready, on_shutdown=shutdown)


def main(config: ReasonerConfig, adapters: dict[str, str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(
        serve(config, adapters, on_ready=lambda port: print(f"lema reasoner listening on {config.host}:{port}", flush=True))
    )
