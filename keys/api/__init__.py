"""The management API for consumer API keys."""
