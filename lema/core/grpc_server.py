"""What every lema gRPC server shares: health checking, reflection, limits, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from lema.core.config import GrpcServerConfig
from lema.core.errors import LemaError
from lema.core.security import add_port, server_interceptors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to mount: its full name (for health and reflection) and how to add it."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]


async def run_grpc_server(
    config: GrpcServerConfig,
    services: Sequence[ServiceBinding],
    on_ready: Callable[[int], None] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully (NOT_SERVING, drain in-flight calls, close)."""
    limit = config.max_message_mb * 1024 * 1024
    server = grpc.aio.server(
        interceptors=[*server_interceptors(config), ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    for service in services:
        service.add_to_server(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [s.full_name for s in services]
    reflection.enable_server_reflection([*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME], server)
    port = add_port(server, config)
    if port == 0:
        raise RuntimeError(f"could not bind {config.host}:{config.port}")
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
    await server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d", ", ".join(names), config.host, port)
    if on_ready is not None:
        on_ready(port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: draining in-flight calls for up to %.1fs", config.grace_s)
    await health.enter_graceful_shutdown()
    # Clients balancing over replicas watch health (lema.core.security.service_config): a moment of NOT_SERVING before
    # the server stops accepting calls lets them move new calls elsewhere instead of racing the shutdown.
    await asyncio.sleep(min(config.drain_delay_s, config.grace_s))
    await server.stop(config.grace_s)
    if on_shutdown is not None:
        await on_shutdown()
    log.info("stopped")


class _CorruptRequest:
    """What a request that does not parse as its message type arrives as (the handler then answers INVALID_ARGUMENT;
    left to gRPC, a corrupt request is an unexplained INTERNAL/UNKNOWN)."""

    def __init__(self, error: str):
        self.error = error


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place a gRPC server turns errors into status: a LemaError raised by a servicer becomes its
    `grpc_status` with its (truncated) message, and a request that is not a valid protobuf message becomes
    INVALID_ARGUMENT. Servicers raise; they do not choose status codes call by call."""

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:  # lema's RPCs take one request; reflection streams
            return handler
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        def tolerant(data: bytes):
            try:
                return deserialize(data) if deserialize is not None else data
            except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad bytes
                return _CorruptRequest(type(exc).__name__)

        async def guard(request, context) -> None:
            if isinstance(request, _CorruptRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request is not a valid message for {method} ({request.error})")

        async def called(inner, request, context):  # one request, one reply (or context.write, as grpc.health's Watch)
            await guard(request, context)
            try:
                return await inner(request, context)
            except LemaError as exc:
                await context.abort(exc.grpc_status, exc.public_message())

        async def streamed(request, context):  # a servicer that yields its replies
            await guard(request, context)
            try:
                async for item in handler.unary_stream(request, context):
                    yield item
            except LemaError as exc:
                await context.abort(exc.grpc_status, exc.public_message())

        options = dict(request_deserializer=tolerant, response_serializer=handler.response_serializer)
        if not handler.response_streaming:
            return grpc.unary_unary_rpc_method_handler(functools.partial(called, handler.unary_unary), **options)
        if inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(streamed, **options)
        # A partial of a coroutine function is one to gRPC (inspect sees through it); a lambda is not.
        return grpc.unary_stream_rpc_method_handler(functools.partial(called, handler.unary_stream), **options)
