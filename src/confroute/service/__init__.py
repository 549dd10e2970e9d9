"""The router service (FastAPI): /v1/route, /v1/chat/completions, feedback, health, metrics."""

from confroute.service.app import create_app

__all__ = ["create_app"]
