"""Secrets shown once and stored only as a SHA-256 digest and a display prefix."""

import hashlib
import secrets


def digest(secret: str) -> str:
    """SHA-256 hex of the whole secret: the only form in which it is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(marker: str, display_length: int) -> tuple[str, str, str]:
    """A fresh secret (`marker` + 256 random bits), its digest and its display prefix."""
    secret = marker + secrets.token_urlsafe(32)  # 256 bits
    return secret, digest(secret), secret[:display_length]


def is_whole(text: str, marker: str, display_length: int) -> bool:
    """Whether `text` is a whole secret `issue(marker, display_length)` made, not a display prefix.

    Marked, and longer than a prefix: what a search box, a filter or a
    command argument must never look up in clear, store or echo.
    """
    return text.startswith(marker) and len(text) > display_length
