"""`lema serve verifier`: the verifier gRPC server process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lema.core.config import VerifierConfig
from lema.core.grpc_server import ServiceBinding, run_grpc_server
from lema.services.verifier.pool import VerifierPool
from lema.services.verifier.servicer import VerifierServicer
from lema.v1 import verifier_pb2, verifier_pb2_grpc

SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name


async def serve(config: VerifierConfig, on_ready: Callable[[int], None] | None = None) -> None:
    pool = VerifierPool(workers=config.workers, item_timeout_s=config.item_timeout_s)
    await pool.start()
    servicer = VerifierServicer(pool, config)
    binding = ServiceBinding(SERVICE_NAME, lambda server: verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server))
    await run_grpc_server(config, [binding], on_ready=on_ready, on_shutdown=pool.close)


def main(config: VerifierConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, on_ready=lambda port: print(f"lema verifier listening on {config.host}:{port}", flush=True)))
