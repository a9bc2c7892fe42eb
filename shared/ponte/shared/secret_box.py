"""Source secrets at rest: encrypted with a key from the environment, never stored plain.

``sources.secrets`` holds each signing secret as ``fernet:<token>``: Fernet (AES-128-CBC
with HMAC-SHA256, from ``cryptography``) under the keys in ``PONTE_SECRETS_KEY``, a
comma-separated list. The first key encrypts; every key decrypts (``MultiFernet``), so a
key is rotated by putting the new one first, running ``ponte rekey-secrets`` (every row
re-encrypted under it, ``sources.reseal_sources``), then dropping the old one.

A dump or backup of PostgreSQL then no longer holds a secret that forges webhooks; only a
process given the key reads them. Ingest and ops (the services that read or edit them)
refuse to start without a key; ``ponte dev`` and the tests generate one per run, as they
do the ops token. The migration that introduced this (0012) encrypts existing rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ponte.shared.settings import Settings

PREFIX = "fernet:"
"""Marks a stored value as encrypted (a Fernet token itself starts ``gAAAAA``)."""


class SecretsKeyMissing(RuntimeError):
    """No ``PONTE_SECRETS_KEY``: a service that reads or writes source secrets must not
    run, rather than store them in plaintext or fail on the first webhook."""


def generate_key() -> str:
    """A fresh key for ``PONTE_SECRETS_KEY`` (32 random bytes, URL-safe base64)."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts source secrets under a list of keys (first encrypts)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise SecretsKeyMissing("PONTE_SECRETS_KEY holds no key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.strip()))
            except ValueError:
                raise ValueError(
                    f"PONTE_SECRETS_KEY: key {position} is not a Fernet key (32 bytes, URL-safe "
                    "base64; `ponte secrets-key` prints a new one)"
                ) from None
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of ``PONTE_SECRETS_KEY``, or ``SecretsKeyMissing`` saying what to do."""
        raw = settings.secrets_key.get_secret_value() if settings.secrets_key else ""
        keys = [key for key in raw.split(",") if key.strip()]
        if not keys:
            raise SecretsKeyMissing(
                "PONTE_SECRETS_KEY must be set: source secrets are stored encrypted with it "
                "(`ponte secrets-key` prints a new key; keep it in a secret store, apart from "
                "the database's backups)"
            )
        return cls(keys)

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise ValueError("a stored source secret is not encrypted (run `ponte migrate`)")
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode("ascii")).decode()
        except InvalidToken:
            raise ValueError(
                "a stored source secret does not decrypt with any key in PONTE_SECRETS_KEY "
                "(was a key dropped before `ponte rekey-secrets`?)"
            ) from None

    def reseal(self, stored: str) -> str:
        """The same secret under the first key (rotation)."""
        if not stored.startswith(PREFIX):
            return self.seal(stored)
        try:
            token = self._fernet.rotate(stored[len(PREFIX) :].encode("ascii"))
        except InvalidToken:
            raise ValueError(
                "a stored source secret does not decrypt with any key in PONTE_SECRETS_KEY "
                "(keep the old key in the list until every row is re-encrypted)"
            ) from None
        return PREFIX + token.decode("ascii")

    def seal_all(self, secrets: Sequence[str]) -> list[str]:
        return [self.seal(secret) for secret in secrets]

    def open_all(self, stored: Sequence[str]) -> list[str]:
        return [self.open(value) for value in stored]


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
