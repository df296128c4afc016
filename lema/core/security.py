"""gRPC authentication and TLS: the server side (one interceptor, the listening port's credentials) and the client
side (every lema client opens its channels here), both from the one config file.

- **Token**: when the environment variable named by `auth_token_env` (default `LEMA_API_TOKEN`) is set, every call
  to a lema gRPC service must carry `authorization: Bearer <token>` metadata, else UNAUTHENTICATED. Health checking
  and reflection stay open: Kubernetes probes and `grpcurl list` carry no credentials, and neither changes state.
  Every lema client sends the token of its own `client.auth_token_env` when that variable is set.
- **TLS**: a server with `tls_cert` and `tls_key` listens with TLS only; with `tls_client_ca` too it requires client
  certificates signed by that CA (mutual TLS). A client with `client.tls: true` connects with TLS, trusting
  `client.tls_ca` (or the system roots) and presenting `client.tls_cert`/`client.tls_key` when given.
- **Exposure**: a service refuses to listen on a non-loopback address without a token, unless its section says
  `insecure: true`.

The token travels as metadata on plain-text channels too (gRPC's own call credentials refuse to), so on anything but
loopback it belongs with TLS.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from lema.core.errors import InvalidInput

if TYPE_CHECKING:
    from lema.core.config import ClientConfig, GrpcServerConfig

# Services any caller may use: they change nothing and probes carry no credentials.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


class InsecureBindError(InvalidInput):
    """A service asked to listen beyond loopback with nothing guarding it."""


def read_token(env_name: str) -> str:
    return os.environ.get(env_name, "").strip()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or 0.0.0.0 / :: (every interface)


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED before reading any request."""

    async def abort(request_or_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request_or_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (makes this an async generator, as streaming handlers are)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    streaming_response = handler.response_streaming
    return kinds[(handler.request_streaming, streaming_response)](
        abort_stream if streaming_response else abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call outside OPEN_SERVICES whose `authorization` metadata is not `Bearer <token>`."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("token: empty")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        reason = "missing" if not given else "invalid"
        return _deny_handler(handler, f"{reason} credentials: send 'authorization: Bearer <token>' metadata")


def server_interceptors(config: GrpcServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server installs; refuses an unguarded non-loopback bind (see the module docstring)."""
    token = read_token(config.auth_token_env)
    if not token and not is_loopback(config.host) and not config.insecure:
        raise InsecureBindError(
            f"host: {config.host} is not a loopback address and ${config.auth_token_env} is not set; set the token "
            "(and TLS), or set insecure: true in the service's config section to serve it unauthenticated")
    return [BearerTokenInterceptor(token)] if token else []


def check_server_security(config: GrpcServerConfig) -> None:
    """Everything `run_grpc_server` would refuse about security, checked before a service loads anything."""
    server_interceptors(config)
    for field in ("tls_cert", "tls_key", "tls_client_ca"):
        _read(getattr(config, field), field)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("tls_cert and tls_key: give both (the server's certificate chain and its private key)")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ValueError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")


def _read(path: Path | None, field: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror}") from None


def add_port(server: grpc.aio.Server, config: GrpcServerConfig) -> int:
    """Bind the service's address, with TLS when the config has a certificate; returns the bound port."""
    address = f"{config.host}:{config.port}"
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ValueError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
        return server.add_insecure_port(address)
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("tls_cert and tls_key: give both (the server's certificate chain and its private key)")
    client_ca = _read(config.tls_client_ca, "tls_client_ca")
    credentials = grpc.ssl_server_credentials(
        [(_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))],
        root_certificates=client_ca, require_client_auth=client_ca is not None)
    return server.add_secure_port(address, credentials)


class _BearerTokenClient(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                         grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call of a blocking channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _AsyncBearerToken:
    """Adds the token to every call of an asyncio channel. grpc.aio files each interceptor object under one call
    kind only (the first interface it implements), so there is one subclass per kind."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), self._header))


class _AsyncUnaryUnary(_AsyncBearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AsyncUnaryStream(_AsyncBearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AsyncStreamUnary(_AsyncBearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncStreamStream(_AsyncBearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def client_config() -> ClientConfig:
    """The `client` section of $LEMA_CONFIG (or the defaults): what every lema client uses unless told otherwise."""
    from lema.core.config import load_config

    return load_config().client


def _channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=_read(config.tls_ca, "client.tls_ca"),
                                        private_key=_read(config.tls_key, "client.tls_key"),
                                        certificate_chain=_read(config.tls_cert, "client.tls_cert"))


def service_config(config: ClientConfig) -> str:
    """gRPC's service config for every lema channel: the load-balancing policy over the addresses a target resolves
    to (`dns:///lema-verifier.lema.svc.cluster.local:50061` lists a headless Service's pods; `ipv4:a:p,b:p` lists
    addresses), and a retry policy for UNAVAILABLE, the status of a replica that stops or restarts. gRPC retries a
    streaming call only until its first response arrives, so nothing is received twice."""
    # healthCheckConfig: the client watches each address's grpc.health.v1 status and stops picking one that reports
    # NOT_SERVING, which every lema server does first when it is told to stop (lema.core.grpc_server).
    policy: dict[str, object] = {"loadBalancingConfig": [{config.load_balancing: {}}],
                                 "healthCheckConfig": {"serviceName": ""}}
    if config.retry_attempts > 1:
        policy["methodConfig"] = [{
            "name": [{}],  # every method of every service
            "retryPolicy": {"maxAttempts": config.retry_attempts, "initialBackoff": "0.1s", "maxBackoff": "2s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }]
    return json.dumps(policy)


def _options(config: ClientConfig, extra: list[tuple[str, object]] | None) -> list[tuple[str, object]]:
    options = [("grpc.service_config", service_config(config)), ("grpc.enable_retries", 1), *(extra or [])]
    if config.tls and config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return options


def open_channel(address: str, config: ClientConfig | None = None,
                 options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A blocking channel to a lema service, with the configured token and TLS."""
    config = config or client_config()
    opts = _options(config, options)
    channel = (grpc.secure_channel(address, _channel_credentials(config), options=opts) if config.tls
               else grpc.insecure_channel(address, options=opts))
    token = read_token(config.auth_token_env)
    return grpc.intercept_channel(channel, _BearerTokenClient(token)) if token else channel


def open_aio_channel(address: str, config: ClientConfig | None = None,
                     options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
    """An asyncio channel to a lema service, with the configured token and TLS."""
    config = config or client_config()
    opts = _options(config, options)
    token = read_token(config.auth_token_env)
    kinds = (_AsyncUnaryUnary, _AsyncUnaryStream, _AsyncStreamUnary, _AsyncStreamStream)
    interceptors = [kind(token) for kind in kinds] if token else None
    if config.tls:
        return grpc.aio.secure_channel(address, _channel_credentials(config), options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
