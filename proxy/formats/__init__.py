"""Body adapters per API format: what goes upstream, and what the client gets back (pure)."""
