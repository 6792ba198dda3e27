"""Encryption at rest for upstream credentials (Fernet: AES-128-CBC + HMAC-SHA256).

Keys come from AETHERGATE_ENCRYPTION_KEY (comma-separated; the first encrypts,
all decrypt, so a key can be rotated) or, when that is empty, are derived from
SECRET_KEY. The SECRET_KEY-derived key always stays available for decryption,
so moving to a dedicated key needs no downtime.
"""

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_INFO = b"aethergate upstream credentials v1"


def _derive(material: str) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        material.encode()
    )
    return Fernet(base64.urlsafe_b64encode(raw))


@functools.lru_cache(maxsize=4)
def _fernet(secret_key: str, dedicated: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([_derive(k) for k in (*dedicated, secret_key)])


def _current() -> MultiFernet:
    return _fernet(settings.SECRET_KEY, tuple(settings.AETHERGATE_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    """Return an opaque token for `plaintext`; a new token on every call."""
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Return the plaintext of `token`, or raise ImproperlyConfigured if no key fits."""
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "An upstream credential cannot be decrypted: SECRET_KEY or "
            "AETHERGATE_ENCRYPTION_KEY changed since it was stored."
        ) from None
