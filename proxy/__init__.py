"""The OpenAI-compatible `/v1/*` gateway (built on the other apps; no models)."""
