"""AetherGate: a self-hosted, OpenAI-compatible LLM gateway."""
