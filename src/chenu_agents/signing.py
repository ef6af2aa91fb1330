"""Signed statements about agent bundles: what was built (digest), for which agent and version, by which
key, and until when it may be loaded.

Algorithm: RSASSA-PSS, SHA-256, MGF1-SHA256, 32-byte salt. PSS has a security proof and randomised
signatures where PKCS#1 v1.5 has neither and a history of padding-oracle and lax-parser forgeries; with
the salt pinned to the digest length (Vault transit's `salt_length=hash`), signatures made by Vault and
by a local key verify with the same code.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import (
    BadSignature,
    ExpiredStatement,
    KeyNotValid,
    KeyStoreError,
    Problem,
    RevokedKey,
    RollbackRefused,
    StatementMismatch,
    TamperedBundle,
    UnknownKey,
    VerificationError,
)
from .files import atomic_write, canonical_json, file_digests
from .keystore import KeyStore
from .semver import compare as semver_compare
from .semver import parse as semver_parse
from .trust import ALGORITHM, AcceptedVersions, TrustedKey, TrustStore, dump_json, format_time, parse_time, utc

STATEMENT_TYPE = "chenu.agents/statement/v1"
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_VALIDITY = timedelta(days=30)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_FIELDS = ("agent", "version", "digest", "key_id", "issued_at", "expires_at")


@dataclass(frozen=True)
class Statement:
    agent: str
    version: str
    digest: str
    key_id: str
    issued_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        for name in ("agent", "version", "key_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"statement {name} must be a non-empty string")
        if not isinstance(self.digest, str) or not _DIGEST.match(self.digest):
            raise ValueError(f"statement digest {self.digest!r} is not 'sha256:<64 lowercase hex>'")
        object.__setattr__(self, "issued_at", utc(self.issued_at))
        object.__setattr__(self, "expires_at", utc(self.expires_at))
        if self.expires_at <= self.issued_at:
            raise ValueError("statement expires_at must be later than issued_at")

    def to_dict(self) -> dict[str, str]:
        return {
            "type": STATEMENT_TYPE,
            "agent": self.agent,
            "version": self.version,
            "digest": self.digest,
            "key_id": self.key_id,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Statement:
        if not isinstance(data, dict):
            raise ValueError("statement must be a JSON object")
        expected = {"type", *_FIELDS}
        if set(data) != expected:
            raise ValueError(f"statement fields {sorted(data)} differ from {sorted(expected)}")
        if data["type"] != STATEMENT_TYPE:
            raise ValueError(f"statement type {data['type']!r} is not {STATEMENT_TYPE!r}")
        return cls(
            agent=data["agent"],
            version=data["version"],
            digest=data["digest"],
            key_id=data["key_id"],
            issued_at=parse_time(data["issued_at"]),
            expires_at=parse_time(data["expires_at"]),
        )


def file_digest(path: str | os.PathLike[str]) -> str:
    """'sha256:<hex>' of a file (files.file_digests: 1 MiB chunks into one reused buffer)."""
    return "sha256:" + file_digests(path)[1]["sha256"]


def signature_path_for(bundle_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(bundle_path)}.sig")


def sign_bundle(
    bundle_path: str | os.PathLike[str],
    keystore: KeyStore,
    *,
    agent: str,
    version: str,
    validity: timedelta = DEFAULT_VALIDITY,
    now: datetime | None = None,
    signature_path: str | os.PathLike[str] | None = None,
) -> Statement:
    """Sign a statement about the bundle with the key store's current key; write `<bundle>.sig` atomically."""
    bundle_path = Path(bundle_path)
    sig_path = Path(signature_path) if signature_path else signature_path_for(bundle_path)
    semver_parse(version)
    if validity <= timedelta(0):
        raise ValueError(f"validity must be positive, got {validity}")
    key_id = keystore.current_key_id()
    if key_id is None:
        raise KeyStoreError(f"no current signing key in {keystore!r}: run ensure_key first")
    issued = utc(now)
    statement = Statement(
        agent=agent,
        version=version,
        digest=file_digest(bundle_path),
        key_id=key_id,
        issued_at=issued,
        expires_at=issued + validity,
    )
    # key_id pins the key named in the statement: a rotation in between fails instead of mis-signing.
    signed_by, signature = keystore.sign(statement.canonical_bytes(), key_id=key_id)
    if signed_by != key_id:
        raise KeyStoreError(f"{keystore!r} signed with {signed_by}, but the statement names {key_id}")
    envelope = {
        "statement": statement.to_dict(),
        "signature": base64.b64encode(signature).decode(),
        "algorithm": ALGORITHM,
    }
    atomic_write(sig_path, dump_json(envelope), 0o644)
    return statement


def _read_envelope(sig_path: Path, where: str) -> tuple[dict[str, Any], str, bytes]:
    """The raw statement, the key id it names and the signature bytes. Nothing here is trusted yet."""

    def bad(field: str, expected: str) -> BadSignature:
        return BadSignature(f"{where}: malformed signature file", [Problem(str(sig_path), field, expected)])

    try:
        envelope = json.loads(sig_path.read_bytes())
    except FileNotFoundError:
        raise BadSignature(f"{where}: signature file {sig_path} is missing") from None
    except (OSError, ValueError) as exc:
        raise bad("(file)", f"readable JSON ({exc})") from None
    if not isinstance(envelope, dict):
        raise bad("(root)", "a JSON object with statement, signature, algorithm")
    if envelope.get("algorithm") != ALGORITHM:
        raise bad("algorithm", f"{ALGORITHM!r}, got {envelope.get('algorithm')!r}")
    statement = envelope.get("statement")
    if not isinstance(statement, dict) or not isinstance(statement.get("key_id"), str):
        raise bad("statement", "an object with a key_id string")
    try:
        signature = base64.b64decode(str(envelope.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise bad("signature", "base64") from None
    if not signature:
        raise bad("signature", "a non-empty base64 signature")
    return statement, statement["key_id"], signature


def verify_bundle(
    bundle_path: str | os.PathLike[str],
    trust_store: TrustStore,
    *,
    signature_path: str | os.PathLike[str] | None = None,
    agent: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
    accepted: AcceptedVersions | None = None,
    allow_rollback: bool = False,
    record: bool = False,
) -> Statement:
    """The verified statement, or the VerificationError subclass of the first check that fails.

    Order: key known, signature, revocation, key window, freshness, expected agent/version, bundle
    digest, rollback. Nothing from the signature file is used beyond picking the key until the
    signature over it has verified; the digest (the costly check) runs only for a fully trusted
    statement. `record` raises the accepted version only after every check passed.
    """
    bundle_path = Path(bundle_path)
    sig_path = Path(signature_path) if signature_path else signature_path_for(bundle_path)
    where = f"{bundle_path} (signature {sig_path})"
    if record and accepted is None:
        raise ValueError("record=True needs an AcceptedVersions to record into")
    now = utc(now)

    raw, key_id, signature = _read_envelope(sig_path, where)
    key: TrustedKey | None = trust_store.get(key_id)
    if key is None:
        raise UnknownKey(f"{where}: signed by {key_id!r}, which the trust store does not hold")
    try:
        signed_bytes = canonical_json(raw)
    except (TypeError, ValueError):
        raise BadSignature(f"{where}: statement cannot be serialised canonically") from None
    if not key.verify(signed_bytes, signature):
        raise BadSignature(f"{where}: signature does not verify under key {key_id} (wrong key or altered statement)")
    try:
        statement = Statement.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise VerificationError(f"{where}: signed statement is malformed: {exc}") from None

    if key.revoked_at is not None:
        raise RevokedKey(f"{where}: key {key_id} was revoked at {format_time(key.revoked_at)}")
    if not key.in_window(statement.issued_at):
        until = "open" if key.valid_until is None else format_time(key.valid_until)
        raise KeyNotValid(
            f"{where}: issued at {format_time(statement.issued_at)}, outside the signing window of "
            f"{key_id} [{format_time(key.valid_from)}, {until}]"
        )
    if now > statement.expires_at:
        raise ExpiredStatement(f"{where}: statement expired at {format_time(statement.expires_at)}")
    if now < statement.issued_at - CLOCK_SKEW:
        raise ExpiredStatement(
            f"{where}: statement is not valid before {format_time(statement.issued_at)} (now {format_time(now)})"
        )
    for name, expected in (("agent", agent), ("version", version)):
        actual = getattr(statement, name)
        if expected is not None and actual != expected:
            raise StatementMismatch(f"{where}: statement is for {name} {actual!r}, expected {expected!r}")

    digest = file_digest(bundle_path)
    if digest != statement.digest:
        raise TamperedBundle(f"{where}: bundle hashes to {digest}, the statement signed {statement.digest}")

    if accepted is not None:
        highest = accepted.highest(statement.agent)
        try:
            lower = highest is not None and semver_compare(statement.version, highest) < 0
        except Exception as exc:  # semver.VersionError: a signed but unparsable version
            raise VerificationError(f"{where}: cannot compare version {statement.version!r}: {exc}") from None
        if lower and not allow_rollback:
            raise RollbackRefused(
                f"{where}: {statement.agent} {statement.version} is lower than {highest}, already accepted; "
                "pass allow_rollback to load it anyway"
            )
        if record:
            accepted.record(statement.agent, statement.version)
    return statement


__all__ = [
    "ALGORITHM",
    "CLOCK_SKEW",
    "STATEMENT_TYPE",
    "AcceptedVersions",
    "Statement",
    "TrustStore",
    "TrustedKey",
    "file_digest",
    "sign_bundle",
    "signature_path_for",
    "verify_bundle",
]
