"""The management API for request logs and usage statistics (read-only)."""
