"""Signed statements about agent bundles: what was built (digest), for which agent and version, by which
key, and until when it may be loaded.

Freshness is bounded as TUF bounds it per role: whatever a statement claims, the verifier refuses one
whose lifetime (expires_at - issued_at) exceeds `max_lifetime` (30 days by default), so a key stolen
while current cannot sign, or back-date, a statement that outlives it by years. A version is pinned to
the digest it was first accepted with: another build under the same version is refused unless forced,
and a forced replacement is written as an audit row.

Algorithm: RSASSA-PSS, SHA-256, MGF1-SHA256, 32-byte salt. PSS has a security proof and randomised
signatures where PKCS#1 v1.5 has neither and a history of padding-oracle and lax-parser forgeries; with
the salt pinned to the digest length (Vault transit's `salt_length=hash`), signatures made by Vault and
by a local key verify with the same code.
"""

from __future__ import annotations

import base64
import binascii
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
    SigningError,
    StatementMismatch,
    StatementTooLong,
    TamperedBundle,
    UnknownKey,
    VerificationError,
)
from .files import atomic_write, canonical_json, file_digests
from .keystore import KeyStore
from .safeload import AGENT_NAME_EXPECTED, Budget, is_agent_name, load_json
from .semver import VersionError
from .semver import compare as semver_compare
from .semver import parse as semver_parse
from .trust import ALGORITHM, AcceptedVersions, TrustedKey, TrustStore, dump_json, format_time, parse_time, utc

STATEMENT_TYPE = "chenu.agents/statement/v1"
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_VALIDITY = timedelta(days=30)
# The longest lifetime a verifier accepts, whatever the statement claims; signing refuses longer too.
DEFAULT_MAX_LIFETIME = DEFAULT_VALIDITY
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_KEY_ID = re.compile(r"^[A-Za-z0-9:._-]{1,200}\Z")
# A signature file holds a statement of a few hundred bytes and a 2048- to 4096-bit signature.
_ENVELOPE_BUDGET = Budget(max_bytes=64 * 1024, max_depth=4)


class _FieldError(ValueError):
    """A statement field is wrong: which one and what was expected (turned into a Problem)."""

    def __init__(self, field: str, expected: str):
        self.field, self.expected = field, expected
        super().__init__(f"statement {field}: {expected}")


def _check_version(version: object) -> str:
    if not isinstance(version, str) or version != version.strip():
        raise _FieldError("version", f"a semantic version string such as 1.2.0 (got {str(version)[:40]!r})")
    try:
        semver_parse(version)
    except VersionError:
        raise _FieldError("version", f"a semantic version string such as 1.2.0 (got {version[:40]!r})") from None
    return version


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
        if not is_agent_name(self.agent):
            raise _FieldError("agent", f"{AGENT_NAME_EXPECTED} (got {str(self.agent)[:80]!r})")
        _check_version(self.version)
        if not isinstance(self.key_id, str) or not _KEY_ID.match(self.key_id):
            raise _FieldError(
                "key_id", f"a key id of 1 to 200 letters, digits or ':._-' (got {str(self.key_id)[:80]!r})"
            )
        if not isinstance(self.digest, str) or not _DIGEST.match(self.digest):
            raise _FieldError("digest", f"'sha256:<64 lowercase hex>' (got {str(self.digest)[:80]!r})")
        object.__setattr__(self, "issued_at", utc(self.issued_at))
        object.__setattr__(self, "expires_at", utc(self.expires_at))
        if self.expires_at <= self.issued_at:
            raise _FieldError("expires_at", "a time later than issued_at")

    @property
    def lifetime(self) -> timedelta:
        return self.expires_at - self.issued_at

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
            raise _FieldError("(root)", "a JSON object")
        expected = {"type", *_FIELDS}
        if set(data) != expected:
            raise _FieldError(
                "(fields)", f"exactly {', '.join(sorted(expected))} (got {', '.join(sorted(data))[:200]})"
            )
        if data["type"] != STATEMENT_TYPE:
            raise _FieldError("type", f"{STATEMENT_TYPE!r} (got {str(data['type'])[:80]!r})")
        times = {}
        for name in ("issued_at", "expires_at"):
            try:
                times[name] = parse_time(data[name])
            except ValueError:
                raise _FieldError(name, f"a UTC time YYYY-MM-DDTHH:MM:SSZ (got {str(data[name])[:40]!r})") from None
        return cls(
            agent=data["agent"],
            version=data["version"],
            digest=data["digest"],
            key_id=data["key_id"],
            issued_at=times["issued_at"],
            expires_at=times["expires_at"],
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
    max_lifetime: timedelta = DEFAULT_MAX_LIFETIME,
) -> Statement:
    """Sign a statement about the bundle with the key store's current key; write `<bundle>.sig` atomically."""
    bundle_path = Path(bundle_path)
    sig_path = Path(signature_path) if signature_path else signature_path_for(bundle_path)
    if not is_agent_name(agent):
        raise SigningError(
            f"cannot sign {bundle_path}: {agent!r} is not an agent name",
            [Problem("(argument)", "agent", f"{AGENT_NAME_EXPECTED} (got {str(agent)[:80]!r})")],
        )
    semver_parse(version)  # VersionError says what a semantic version looks like
    if version != version.strip():
        raise SigningError(f"cannot sign {bundle_path}", [Problem("(argument)", "version", "no spaces or line breaks")])
    if not timedelta(0) < validity <= max_lifetime:
        raise SigningError(
            f"cannot sign {bundle_path} for {validity}",
            [Problem("(argument)", "validity", f"more than 0 and at most {max_lifetime} (the verifiers' bound)")],
        )
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
        with open(sig_path, "rb") as handle:
            raw = handle.read(_ENVELOPE_BUDGET.max_bytes + 1)
    except FileNotFoundError:
        raise BadSignature(
            f"{where}: signature file {sig_path} is missing", [Problem(str(sig_path), "(file)", "a signature file")]
        ) from None
    except OSError as exc:
        raise bad("(file)", f"a readable file ({exc.strerror})") from None
    try:
        envelope = load_json(raw, str(sig_path), error=BadSignature, budget=_ENVELOPE_BUDGET)
    except BadSignature as exc:
        raise BadSignature(f"{where}: malformed signature file", exc.problems) from None
    if not isinstance(envelope, dict) or set(envelope) != {"statement", "signature", "algorithm"}:
        raise bad("(root)", "a JSON object with exactly statement, signature, algorithm")
    if envelope.get("algorithm") != ALGORITHM:
        raise bad("algorithm", f"{ALGORITHM!r}, got {str(envelope.get('algorithm'))[:40]!r}")
    statement = envelope.get("statement")
    if not isinstance(statement, dict) or not isinstance(statement.get("key_id"), str):
        raise bad("statement", "an object with a key_id string")
    if not isinstance(envelope["signature"], str):
        raise bad("signature", "a base64 string")
    try:
        signature = base64.b64decode(envelope["signature"], validate=True)
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
    max_lifetime: timedelta = DEFAULT_MAX_LIFETIME,
    force_digest: bool = False,
    reason: str | None = None,
) -> Statement:
    """The verified statement, or the VerificationError subclass of the first check that fails.

    Order: key known, signature, revocation, key window, lifetime, freshness, expected agent/version,
    bundle digest, rollback, digest pin. Nothing from the signature file is used beyond picking the
    key until the signature over it has verified; the digest (the costly check) runs only for a fully
    trusted statement. `record` raises the accepted version and pins its digest only after every check
    passed; `force_digest` lets another digest replace a pinned one (an audit row, with `reason`).
    """
    bundle_path = Path(bundle_path)
    sig_path = Path(signature_path) if signature_path else signature_path_for(bundle_path)
    where = f"{bundle_path} (signature {sig_path})"
    if record and accepted is None:
        raise ValueError("record=True needs an AcceptedVersions to record into")
    if agent is not None and not is_agent_name(agent):
        raise StatementMismatch(
            f"{where}: the expected agent {str(agent)[:80]!r} is not an agent name",
            [Problem("(argument)", "agent", AGENT_NAME_EXPECTED)],
        )
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
    except _FieldError as exc:
        raise VerificationError(
            f"{where}: signed statement is malformed", [Problem(str(sig_path), f"statement.{exc.field}", exc.expected)]
        ) from None
    except (TypeError, ValueError) as exc:
        raise VerificationError(
            f"{where}: signed statement is malformed", [Problem(str(sig_path), "statement", str(exc)[:200])]
        ) from None

    if key.revoked_at is not None:
        raise RevokedKey(f"{where}: key {key_id} was revoked at {format_time(key.revoked_at)}")
    if not key.in_window(statement.issued_at):
        until = "open" if key.valid_until is None else format_time(key.valid_until)
        raise KeyNotValid(
            f"{where}: issued at {format_time(statement.issued_at)}, outside the signing window of "
            f"{key_id} [{format_time(key.valid_from)}, {until}]"
        )
    if statement.lifetime > max_lifetime:
        raise StatementTooLong(
            f"{where}: statement claims a lifetime of {statement.lifetime} "
            f"({format_time(statement.issued_at)} to {format_time(statement.expires_at)}); at most {max_lifetime} "
            "is accepted",
            [Problem(str(sig_path), "statement.expires_at", f"at most {max_lifetime} after issued_at")],
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
        accepted.check_pin(statement.agent, statement.version, statement.digest, where=where, force=force_digest)
        if record:
            accepted.record(
                statement.agent, statement.version, digest=statement.digest, force=force_digest, reason=reason, now=now
            )
    return statement


__all__ = [
    "ALGORITHM",
    "CLOCK_SKEW",
    "DEFAULT_MAX_LIFETIME",
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
