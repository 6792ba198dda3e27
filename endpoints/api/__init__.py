"""The management API for upstream endpoints."""
