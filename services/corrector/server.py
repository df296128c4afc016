"""`lema serve corrector`: the corrector proxy's gRPC server process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lema.core.config import CorrectorConfig
from lema.core.grpc_server import ServiceBinding, run_grpc_server
from lema.services.corrector.proxy import CorrectorProxy
from lema.services.corrector.servicer import CorrectorServicer
from lema.services.corrector.upstreams import OpenAIUpstream, ReferenceUpstream, Upstream
from lema.services.verifier import open_verifier
from lema.v1 import corrector_pb2, corrector_pb2_grpc

SERVICE_NAME = corrector_pb2.DESCRIPTOR.services_by_name["Corrector"].full_name


def build_upstream(config: CorrectorConfig) -> Upstream:
    if config.upstream == "reference":
        return ReferenceUpstream()
    if not config.base_url:
        raise ValueError("upstream=openai needs --base-url (an OpenAI-compatible server)")
    return OpenAIUpstream(config.base_url, config.model, config.api_key_env, config.max_tokens, config.temperature)


async def build_proxy(config: CorrectorConfig) -> CorrectorProxy:
    verifier = open_verifier()  # client.verifier: local worker processes, or the verifier service
    await verifier.start()
    return CorrectorProxy(build_upstream(config), config, verifier)


async def serve(config: CorrectorConfig, on_ready: Callable[[int], None] | None = None) -> None:
    proxy = await build_proxy(config)
    servicer = CorrectorServicer(proxy, config)
    binding = ServiceBinding(SERVICE_NAME, lambda server: corrector_pb2_grpc.add_CorrectorServicer_to_server(servicer, server))

    async def shutdown() -> None:
        await proxy.upstream.close()
        await proxy.verifier.close()

    await run_grpc_server(config, [binding], on_ready=on_ready, on_shutdown=shutdown)


def main(config: CorrectorConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, on_ready=lambda port: print(f"lema corrector listening on {config.host}:{port}", flush=True)))
