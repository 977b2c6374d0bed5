"""`pangu serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with continuous batching.

- `engine.py`: the decoding thread, a bounded request queue, rows joining the running batch each step
- `protocol.py`: request models (validation -> 400), the chat template, response / SSE chunk shapes
- `app.py`: the routes (/v1/completions, /v1/chat/completions, /v1/models, /health, / the web page)
- `page.py`: the web page
"""
from .app import create_app, load_engine, serve

__all__ = ["create_app", "load_engine", "serve"]
