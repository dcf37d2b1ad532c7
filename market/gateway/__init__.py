"""OpenAI-compatible HTTP gateway: any OpenAI client buys from the Hearth market unchanged."""

from market.gateway.app import Backend, JobStream, create_app
from market.gateway.serve import serve_gateway

__all__ = ["Backend", "JobStream", "create_app", "serve_gateway"]
