"""`lema serve trainer`: the trainer gRPC server process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lema.core.config import TrainerConfig
from lema.core.grpc_server import ServiceBinding, run_grpc_server
from lema.trainer.servicer import TrainerServicer
from lema.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


async def serve(config: TrainerConfig, on_ready: Callable[[int], None] | None = None) -> None:
    servicer = TrainerServicer(config)
    binding = ServiceBinding(SERVICE_NAME, lambda server: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server))

    async def shutdown() -> None:
        await asyncio.to_thread(servicer.runs.close)

    await run_grpc_server(config, [binding], on_ready=on_ready, on_shutdown=shutdown)


def main(config: TrainerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, on_ready=lambda port: print(f"lema trainer listening on {config.host}:{port}", flush=True)))
