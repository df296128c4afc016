"""`lema serve review`: the review app on its own port (uvicorn), over the store's sessions."""

from __future__ import annotations

import logging

from lema.core.config import ReviewConfig
from lema.core.errors import InvalidInput
from lema.core.security import InsecureBindError, is_loopback, read_token

logger = logging.getLogger("lema.review")


def check_review_security(config: ReviewConfig) -> None:
    """Refused before anything starts: no token to check against, half a TLS pair, or a non-loopback address
    without TLS (the session cookie and the token on the login form would cross the network in the clear)."""
    if not read_token(config.token_env):
        raise InvalidInput(f"{config.token_env} is not set: the review pages need a token (as the admin API does); "
                           f"set it, or name another variable with review.token_env")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise InvalidInput("review.tls_cert and review.tls_key go together")
    for field in ("tls_cert", "tls_key"):
        path = getattr(config, field)
        if path is not None and not path.is_file():
            raise InvalidInput(f"review.{field}: {path} is not a readable file")
    if not is_loopback(config.host) and config.tls_cert is None:
        raise InsecureBindError(f"review.host {config.host} is beyond loopback: serve it with tls_cert and tls_key "
                                "(or put it behind a TLS proxy on loopback)")


def build(config: ReviewConfig):
    from lema.core.store.db import open_store
    from lema.services.review.app import build_app

    return build_app(config, open_store(config.store))


def main(config: ReviewConfig) -> None:
    import uvicorn

    check_review_security(config)
    app = build(config)
    scheme = "https" if config.tls_cert else "http"
    logger.info("review pages on %s://%s:%d", scheme, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=10,
                ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
                ssl_keyfile=str(config.tls_key) if config.tls_key else None, server_header=False)
