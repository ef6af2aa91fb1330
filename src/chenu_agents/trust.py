"""What a verifier trusts: public keys with their windows (TrustStore) and the versions already accepted.

Both are small JSON files, written atomically so a reader never sees half a file. The time helpers and
the signature primitive live here too, because key stores and the signing module both need them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import Problem, VerificationError
from .files import atomic_write
from .semver import compare as semver_compare
from .semver import parse as semver_parse

ALGORITHM = "rsa-pss-sha256"
SALT_LENGTH = 32  # = SHA-256 digest size; Vault transit's salt_length "hash"

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def pss_padding() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=SALT_LENGTH)


def rsa_sign(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    return private_key.sign(data, pss_padding(), hashes.SHA256())


# --- time: whole seconds, UTC, 'Z' ------------------------------------------------------------------
# Everything is truncated to the second so a timestamp survives a JSON round trip unchanged and a
# statement issued in the same second its key was created still falls inside the key's window.


def utc(dt: datetime | None = None) -> datetime:
    if dt is None:
        dt = datetime.now(UTC)
    elif dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: pass a timezone-aware datetime")
    return dt.astimezone(UTC).replace(microsecond=0)


def format_time(dt: datetime) -> str:
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, *, strict: bool = True) -> datetime:
    """Strict: exactly YYYY-MM-DDTHH:MM:SSZ. Lenient: any RFC 3339 time (Vault's nanoseconds included)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a timestamp string, got {type(text).__name__}")
    if strict and not _TIME.match(text):
        raise ValueError(f"{text!r} is not a UTC timestamp of the form YYYY-MM-DDTHH:MM:SSZ")
    if not strict:
        text = re.sub(r"\.\d+", "", text)
    return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _opt_time(value: Any) -> datetime | None:
    return None if value is None else parse_time(value, strict=False)


def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"cannot read {what} {path}", [Problem(str(path), "(file)", f"readable JSON ({exc})")]
        ) from None


# --- trust store -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_pem: str
    valid_from: datetime
    valid_until: datetime | None = None
    revoked_at: datetime | None = None

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        try:
            key = serialization.load_pem_public_key(self.public_pem.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise VerificationError(f"trust store key {self.key_id} has an unreadable public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise VerificationError(f"key {self.key_id} is not an RSA public key")
        return key

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, data, pss_padding(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def in_window(self, when: datetime) -> bool:
        return self.valid_from <= when and (self.valid_until is None or when <= self.valid_until)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_pem": self.public_pem,
            "valid_from": format_time(self.valid_from),
            "valid_until": None if self.valid_until is None else format_time(self.valid_until),
            "revoked_at": None if self.revoked_at is None else format_time(self.revoked_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrustedKey:
        return cls(
            key_id=str(data["key_id"]),
            public_pem=str(data["public_pem"]),
            valid_from=parse_time(data["valid_from"], strict=False),
            valid_until=_opt_time(data.get("valid_until")),
            revoked_at=_opt_time(data.get("revoked_at")),
        )


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return min(a, b)


@dataclass(frozen=True)
class TrustStore:
    """Public keys a verifier accepts; immutable, so `merged != before` tells whether anything changed."""

    keys: tuple[TrustedKey, ...] = ()
    _index: dict[str, TrustedKey] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(sorted(self.keys, key=lambda k: (k.valid_from, k.key_id)))
        object.__setattr__(self, "keys", keys)
        for key in keys:
            if key.key_id in self._index:
                raise VerificationError(f"trust store lists key {key.key_id} twice")
            self._index[key.key_id] = key

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, key_id: str) -> TrustedKey | None:
        return self._index.get(key_id)

    def merge(self, other: TrustStore | Iterable[TrustedKey]) -> TrustStore:
        """Union. For a key in both, the narrower window and the earlier revocation win."""
        merged = dict(self._index)
        for key in other:
            mine = merged.get(key.key_id)
            if mine is None:
                merged[key.key_id] = key
                continue
            if mine.public_pem.strip() != key.public_pem.strip():
                raise VerificationError(
                    f"key {key.key_id} has two different public keys; refusing to merge trust stores"
                )
            merged[key.key_id] = replace(
                mine,
                valid_from=max(mine.valid_from, key.valid_from),
                valid_until=_earliest(mine.valid_until, key.valid_until),
                revoked_at=_earliest(mine.revoked_at, key.revoked_at),
            )
        return TrustStore(tuple(merged.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"keys": [k.to_dict() for k in self.keys]}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<trust store>") -> TrustStore:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise VerificationError(f"malformed trust store {source}", [Problem(source, "keys", "a list of keys")])
        keys = []
        for i, entry in enumerate(data["keys"]):
            try:
                keys.append(TrustedKey.from_dict(entry))
            except (KeyError, TypeError, ValueError) as exc:
                raise VerificationError(
                    f"malformed trust store {source}",
                    [Problem(source, f"keys[{i}]", f"key_id, public_pem, valid_from as UTC time ({exc})")],
                ) from None
        return cls(tuple(keys))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> TrustStore:
        path = Path(path)
        if missing_ok and not path.exists():
            return cls()
        return cls.from_dict(_load_json(path, "trust store"), source=str(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write(path, dump_json(self.to_dict()), 0o644)


# --- accepted versions (anti-rollback) -------------------------------------------------------------


class AcceptedVersions:
    """Highest version accepted per agent: {agent: version}, in one JSON file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AcceptedVersions({str(self.path)!r})"

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = _load_json(self.path, "accepted versions file")
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise VerificationError(
                f"malformed accepted versions file {self.path}",
                [Problem(str(self.path), "(root)", "a mapping of agent name to version string")],
            )
        return data

    def highest(self, agent: str) -> str | None:
        return self.load().get(agent)

    def is_rollback(self, agent: str, version: str) -> bool:
        highest = self.highest(agent)
        return highest is not None and semver_compare(version, highest) < 0

    def record(self, agent: str, version: str, *, dry_run: bool = False) -> bool:
        """Raise the agent's highest accepted version to `version`; never lowers it. Returns changed."""
        semver_parse(version)
        data = self.load()
        current = data.get(agent)
        if current is not None and semver_compare(version, current) <= 0:
            return False
        if not dry_run:
            data[agent] = version
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, dump_json(data), 0o644)
        return True


__all__ = [
    "ALGORITHM",
    "AcceptedVersions",
    "TrustStore",
    "TrustedKey",
    "format_time",
    "parse_time",
    "utc",
]
