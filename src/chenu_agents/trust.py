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

from .errors import Problem, VerificationError, VersionPinned
from .files import atomic_write
from .safeload import Budget, check_agent_name, is_agent_name, load_json
from .semver import VersionError
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


# Trust stores, accepted-versions records: small files, shallow JSON.
_STATE_BUDGET = Budget(max_bytes=8 * 1024 * 1024, max_depth=8)


def _load_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_STATE_BUDGET.max_bytes + 1)
    except OSError as exc:
        raise VerificationError(
            f"cannot read {what} {path}", [Problem(str(path), "(file)", f"a readable file ({exc.strerror})")]
        ) from None
    try:
        return load_json(raw, str(path), error=VerificationError, budget=_STATE_BUDGET)
    except VerificationError as exc:
        raise VerificationError(f"cannot read {what} {path}", exc.problems) from None


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


# --- accepted versions (anti-rollback) and the digest each version was accepted with (pinning) ---------


def pin_key(version: str) -> str:
    """The version a pin is kept under: build metadata dropped, since 1.2.0+b2 is 1.2.0 to semver."""
    v = semver_parse(version)
    return str(replace(v, build=""))


class AcceptedVersions:
    """Highest version accepted per agent, {agent: version}, in one JSON file; beside it
    (`<name>.digests.json`) the digest each version was first accepted with, and every forced change
    of one, as an append-only list of audit rows. The main file keeps its simple shape: the runtime,
    deploy and the playbooks read it.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AcceptedVersions({str(self.path)!r})"

    @property
    def digests_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.digests.json")

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = _load_json(self.path, "accepted versions file")
        if not isinstance(data, dict) or not all(is_agent_name(k) and isinstance(v, str) for k, v in data.items()):
            raise VerificationError(
                f"malformed accepted versions file {self.path}",
                [Problem(str(self.path), "(root)", "a mapping of agent name to version string")],
            )
        return data

    def load_digests(self) -> dict[str, Any]:
        """{"pins": {agent: {version: digest}}, "overrides": [audit rows]}."""
        if not self.digests_path.exists():
            return {"pins": {}, "overrides": []}
        data = _load_json(self.digests_path, "accepted digests file")
        pins = data.get("pins") if isinstance(data, dict) else None
        overrides = data.get("overrides") if isinstance(data, dict) else None
        if (
            not isinstance(pins, dict)
            or not isinstance(overrides, list)
            or not all(
                is_agent_name(agent)
                and isinstance(versions, dict)
                and all(isinstance(v, str) and isinstance(d, str) for v, d in versions.items())
                for agent, versions in pins.items()
            )
        ):
            raise VerificationError(
                f"malformed accepted digests file {self.digests_path}",
                [Problem(str(self.digests_path), "pins", "{agent: {version: digest}} and a list of overrides")],
            )
        return data

    def highest(self, agent: str) -> str | None:
        return self.load().get(agent)

    def is_rollback(self, agent: str, version: str) -> bool:
        highest = self.highest(agent)
        return highest is not None and semver_compare(version, highest) < 0

    def pinned(self, agent: str, version: str) -> str | None:
        """The digest this version (build metadata ignored) was accepted with, or None."""
        return self.load_digests()["pins"].get(agent, {}).get(pin_key(version))

    def check_pin(self, agent: str, version: str, digest: str, *, where: str = "", force: bool = False) -> None:
        """VersionPinned when this version was accepted with another digest, unless forced."""
        pinned = self.pinned(agent, version)
        if pinned is not None and pinned != digest and not force:
            raise VersionPinned(
                f"{where or agent}: {agent} {version} was accepted before with digest {pinned}; this bundle hashes "
                f"to {digest}. A version names one build: bump the version, or force the replacement "
                "(recorded in the audit rows of the accepted digests file)",
                [Problem(str(self.digests_path), f"pins.{agent}.{pin_key(version)}", f"{pinned} (got {digest})")],
            )

    def record(
        self,
        agent: str,
        version: str,
        *,
        digest: str | None = None,
        force: bool = False,
        reason: str | None = None,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> bool:
        """Raise the agent's highest accepted version to `version` (never lowers it) and pin `digest` to
        it. A different digest for a pinned version needs `force`, and writes an audit row. Returns changed."""
        check_agent_name(agent, file=str(self.path), field="agent", error=VerificationError)
        try:
            semver_parse(version)
        except VersionError as exc:
            raise VerificationError(str(exc), [Problem(str(self.path), "version", "a semantic version")]) from None
        data = self.load()
        current = data.get(agent)
        raise_highest = current is None or semver_compare(version, current) > 0
        pins_changed = False
        if digest is not None:
            self.check_pin(agent, version, digest, where=str(self.path), force=force)
            pins_changed = self.pinned(agent, version) != digest
        if dry_run or not (raise_highest or pins_changed):
            return raise_highest or pins_changed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if pins_changed:
            # The pin first: a crash in between leaves a pin for a version not yet recorded as highest,
            # which only ever refuses another build of it.
            state = self.load_digests()
            key = pin_key(version)
            previous = state["pins"].setdefault(agent, {}).get(key)
            state["pins"][agent][key] = digest
            if previous is not None:
                state["overrides"].append(
                    {
                        "at": format_time(utc(now)),
                        "agent": agent,
                        "version": version,
                        "previous_digest": previous,
                        "digest": digest,
                        "actor": _actor(),
                        "reason": reason or "forced",
                    }
                )
            atomic_write(self.digests_path, dump_json(state), 0o644)
        if raise_highest:
            data[agent] = version
            atomic_write(self.path, dump_json(data), 0o644)
        return True


def _actor() -> str:
    from .lifecycle import default_actor  # the one definition of who acts (AWX user, sudo user, login)

    return default_actor()


__all__ = [
    "ALGORITHM",
    "AcceptedVersions",
    "TrustStore",
    "TrustedKey",
    "format_time",
    "parse_time",
    "pin_key",
    "utc",
]
