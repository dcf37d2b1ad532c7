"""OpenAI-compatible HTTP gateway: any OpenAI client buys from the Hearth market unchanged."""

from market.gateway.app import Backend, JobStream, create_app
from market.gateway.serve import (
    GatewayBindError,
    listen,
    restore_recursion_limit,
    serve_gateway,
)

__all__ = [
    "Backend",
    "GatewayBindError",
    "JobStream",
    "create_app",
    "listen",
    "restore_recursion_limit",
    "serve_gateway",
]
