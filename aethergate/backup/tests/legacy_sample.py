"""A realistic backup of the earlier FastAPI version, and the consumer secrets behind its keys.

Shared by the legacy import's tests here and the end-to-end test in
proxy/tests/test_legacy_import.py, which needs the live gateway.
"""

import hashlib

# Consumer keys as the earlier version issued them; only their SHA-256 is in its backup.
ALICE_SECRET = "sk-AbCdE8f7f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1"
BOB_SECRET = "sk-ZyXwV0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8"
OLD_SECRET = "sk-QqQqQ1111222233334444555566667777888899990000aaaa"
UPSTREAM_CREDENTIAL = "sk-legacy-openai-upstream-credential"
ANTHROPIC_CREDENTIAL = "sk-ant-legacy-anthropic-upstream-credential"
ALICE_ID = "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f"
BOB_ID = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def legacy_backup() -> dict:
    """A realistic backup written by the earlier version's export."""
    return {
        "version": 1,
        "timestamp": "2025-05-01T10:00:00.123456",
        "data": {
            "endpoints": [
                {
                    "id": 1,
                    "name": "Local Ollama",
                    "base_url": "http://localhost:11434",
                    "api_key": None,
                    "rpm_limit": 0,
                    "day_limit": None,
                    "is_active": True,
                },
                {
                    "id": 2,
                    "name": "OpenAI",
                    "base_url": "https://api.openai.com/v1",
                    "api_key": UPSTREAM_CREDENTIAL,
                    "rpm_limit": 500,
                    "day_limit": -1,
                    "is_active": True,
                },
                {
                    "id": 3,
                    "name": "Local Ollama",
                    "base_url": "http://10.0.0.5:11434/",
                    "api_key": None,
                    "rpm_limit": None,
                    "day_limit": 10000,
                    "is_active": False,
                },
                {
                    # LiteLLM's address for Anthropic: it adds /v1/messages itself.
                    "id": 4,
                    "name": "Anthropic",
                    "base_url": "https://api.anthropic.com",
                    "api_key": ANTHROPIC_CREDENTIAL,
                    "rpm_limit": 50,
                    "day_limit": None,
                    "is_active": True,
                },
            ],
            "models": [
                {
                    "id": "llama3",
                    "litellm_name": "ollama/llama3",
                    "capability": "TEXT",
                    "billing_unit": "TOKEN",
                    "price_in": 1e-06,
                    "price_out": 2e-06,
                    "is_active": True,
                    "fallback_model_id": "gpt-4o-mini",
                    "endpoint_id": 1,
                    "rpm_limit": 0,
                    "day_limit": 1000,
                },
                {
                    "id": "llama3-big",
                    "litellm_name": "ollama_chat/llama3:70b",
                    "capability": "TEXT",
                    "billing_unit": "TOKEN",
                    "price_in": 0.0,
                    "price_out": 0.0,
                    "is_active": True,
                    "fallback_model_id": None,
                    "endpoint_id": 3,
                    "rpm_limit": None,
                    "day_limit": None,
                },
                {
                    "id": "gpt-4o",
                    "litellm_name": "openai/gpt-4o",
                    "capability": "TEXT",
                    "billing_unit": "TOKEN",
                    "price_in": 2.5e-06,
                    "price_out": 1e-05,
                    "is_active": True,
                    "fallback_model_id": None,
                    "endpoint_id": 2,
                    "rpm_limit": 60,
                    "day_limit": None,
                },
                {
                    "id": "gpt-4o-mini",
                    "litellm_name": "gpt-4o-mini",
                    "capability": "TEXT",
                    "billing_unit": "TOKEN",
                    "price_in": 1.5e-07,
                    "price_out": 6e-07,
                    "is_active": True,
                    "fallback_model_id": None,
                    "endpoint_id": 2,
                    "rpm_limit": None,
                    "day_limit": None,
                },
                {
                    "id": "claude-sonnet",
                    "litellm_name": "anthropic/claude-3-5-sonnet-20240620",
                    "capability": "TEXT",
                    "billing_unit": "TOKEN",
                    "price_in": 3e-06,
                    "price_out": 1.5e-05,
                    "is_active": True,
                    "fallback_model_id": "gpt-4o",
                    "endpoint_id": 4,
                    "rpm_limit": None,
                    "day_limit": None,
                },
                {
                    "id": "embed",
                    "litellm_name": "hosted_vllm/BAAI/bge-m3",
                    "capability": "EMBEDDING",
                    "billing_unit": "TOKEN",
                    "price_in": 1e-08,
                    "price_out": 0,
                    "is_active": True,
                    "fallback_model_id": None,
                    "endpoint_id": None,
                    "rpm_limit": None,
                    "day_limit": None,
                },
            ],
            "users": [
                {
                    "id": ALICE_ID,
                    "username": "alice",
                    "email": "alice@example.com",
                    "balance": 10.0,
                    "is_active": True,
                    "organization": "Acme",
                    "created_at": "2025-01-02T03:04:05.678901",
                },
                {
                    "id": BOB_ID,
                    "username": "bob",
                    "email": None,
                    "balance": 0.5,
                    "is_active": False,
                    "organization": None,
                    "created_at": "2025-02-01T00:00:00+00:00",
                },
            ],
            "api_keys": [
                {
                    "id": "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a",
                    "key_hash": sha256(ALICE_SECRET),
                    "key_prefix": ALICE_SECRET[:8],
                    "user_id": ALICE_ID,
                    "name": "default",
                    "is_active": True,
                    "log_content": True,
                    "rate_limit_model": "60/m",
                    "allowed_capabilities": ["TEXT"],
                },
                {
                    "id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                    "key_hash": sha256(BOB_SECRET),
                    "key_prefix": BOB_SECRET[:8],
                    "user_id": BOB_ID,
                    "name": "batch",
                    "is_active": True,
                    "log_content": False,
                    "rate_limit_model": None,
                    "allowed_capabilities": [],
                },
                {
                    "id": "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
                    "key_hash": sha256(OLD_SECRET),
                    "key_prefix": OLD_SECRET[:8],
                    "user_id": ALICE_ID,
                    "name": "old laptop",
                    "is_active": False,
                    "log_content": False,
                    "rate_limit_model": "10/s,1000/day",
                    "allowed_capabilities": ["TEXT", "EMBEDDING"],
                },
            ],
        },
    }
