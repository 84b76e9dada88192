"""The OpenAI-compatible server: `scheduler` (continuous batching over engine.batch, no HTTP),
`api` (request and response shapes), `app` (starlette routes, uvicorn; the `server` extra)."""
