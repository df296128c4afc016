"""`lema serve collector`: the collector's intake gRPC server process.

Problems sent to `AddProblems` land in the store's intake table, which a collector running with
`lema collect --follow --store SAME_STORE` consumes; `GetStats` reports the store's counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lema.core.config import CollectorConfig
from lema.core.grpc_server import ServiceBinding, run_grpc_server
from lema.core.store.db import open_store
from lema.services.collector.intake_servicer import CollectorServicer
from lema.v1 import collector_pb2, collector_pb2_grpc

SERVICE_NAME = collector_pb2.DESCRIPTOR.services_by_name["Collector"].full_name


async def serve(config: CollectorConfig, on_ready: Callable[[int], None] | None = None) -> None:
    sessions = await asyncio.to_thread(open_store, config.store)  # migrates the schema to the newest revision
    servicer = CollectorServicer(sessions, config)
    binding = ServiceBinding(SERVICE_NAME, lambda server: collector_pb2_grpc.add_CollectorServicer_to_server(servicer, server))

    async def shutdown() -> None:
        await asyncio.to_thread(sessions.kw["bind"].dispose)

    await run_grpc_server(config, [binding], on_ready=on_ready, on_shutdown=shutdown)


def main(config: CollectorConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, on_ready=lambda port: print(f"lema collector listening on {config.host}:{port}", flush=True)))
