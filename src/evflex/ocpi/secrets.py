"""Credentials tokens: made at random, checked by hash, sent encrypted.

The token a partner calls us with is kept only as its SHA-256; the token we call
a partner with must be sent, so it is kept encrypted (Fernet, AES-128-CBC with
HMAC-SHA256, from ``cryptography``) with a key in ``ocpi_key_file`` that the node
makes on first use, readable by its owner only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def new_token() -> str:
    """A credentials token: 43 URL-safe characters (256 random bits), within OCPI's 64."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def encode_header(token: str) -> str:
    """The Authorization header value: ``Token`` and the token in Base64, as 2.2.1 says."""
    return "Token " + base64.b64encode(token.encode()).decode()


def header_candidates(value: str | None) -> list[str]:
    """The tokens an Authorization header may carry: its Base64 decoding (2.2.1) and
    the text as given (2.1.1-era peers send the token unencoded). Empty if no token."""
    if not value:
        return []
    scheme, _, raw = value.strip().partition(" ")
    raw = raw.strip()
    if scheme.lower() != "token" or not raw:
        return []
    found = [raw]
    try:
        decoded = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return found
    if decoded and decoded.isprintable():
        found.insert(0, decoded)
    return found


class TokenBox:
    """Encrypts and decrypts the tokens we send, with the node's key file."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = Path(key_file)
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            if not self.key_file.exists():
                self.key_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
            self._fernet = Fernet(self.key_file.read_bytes().strip())
        return self._fernet

    def seal(self, token: str) -> str:
        return self._key().encrypt(token.encode()).decode()

    def open(self, sealed: str) -> str:
        """The token; ValueError if the key file is not the one that sealed it."""
        try:
            return self._key().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ValueError(
                f"cannot decrypt a partner token with {self.key_file}: is it the key file "
                "this database was used with?"
            ) from None
