from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chenu_agents import errors
from chenu_agents.keystore import FileKeyStore
from chenu_agents.semver import VersionError
from chenu_agents.signing import (
    STATEMENT_TYPE,
    AcceptedVersions,
    Statement,
    TrustStore,
    file_digest,
    sign_bundle,
    verify_bundle,
)
from chenu_agents.trust import TrustedKey, rsa_sign

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


pytestmark = pytest.mark.usefixtures("fast_keys")


@dataclass
class World:
    tmp: Path
    store: FileKeyStore
    bundle: Path
    accepted: AcceptedVersions

    @property
    def sig(self) -> Path:
        return Path(f"{self.bundle}.sig")

    def trust(self) -> TrustStore:
        return self.store.trust_store()

    def sign(self, version: str = "1.2.0", at: datetime = NOW + MINUTE, **kw) -> Statement:
        return sign_bundle(self.bundle, self.store, agent="estimator", version=version, now=at, **kw)

    def envelope(self) -> dict:
        return json.loads(self.sig.read_text())

    def write_envelope(self, env: dict) -> None:
        self.sig.write_text(json.dumps(env))


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = FileKeyStore(tmp_path / "keys")
    store.ensure_key(now=NOW)
    bundle = tmp_path / "estimator-1.2.0.tar.zst"
    bundle.write_bytes(os.urandom(64 * 1024))
    return World(tmp_path, store, bundle, AcceptedVersions(tmp_path / "accepted.json"))


# --- statement and digest --------------------------------------------------------------------------


def test_round_trip(world: World) -> None:
    statement = world.sign()
    assert statement.digest == "sha256:" + hashlib.sha256(world.bundle.read_bytes()).hexdigest()
    assert statement.key_id == world.store.current_key_id()
    assert statement.expires_at == NOW + MINUTE + timedelta(days=30)
    got = verify_bundle(
        world.bundle, world.trust(), agent="estimator", version="1.2.0", now=NOW + HOUR, accepted=world.accepted
    )
    assert got == statement


def test_signature_file_format(world: World) -> None:
    statement = world.sign()
    env = world.envelope()
    assert set(env) == {"statement", "signature", "algorithm"}
    assert env["algorithm"] == "rsa-pss-sha256"
    assert env["statement"] == {
        "type": STATEMENT_TYPE,
        "agent": "estimator",
        "version": "1.2.0",
        "digest": statement.digest,
        "key_id": statement.key_id,
        "issued_at": "2026-01-01T12:01:00Z",
        "expires_at": "2026-01-31T12:01:00Z",
    }
    assert base64.b64decode(env["signature"])
    assert stat.S_IMODE(world.sig.stat().st_mode) == 0o644
    assert not list(world.tmp.glob(".*.tmp"))


def test_canonical_bytes_are_sorted_and_compact() -> None:
    s = Statement("abc", "1.0.0", "sha256:" + "0" * 64, "file:x", NOW, NOW + DAY)
    assert s.canonical_bytes() == (
        b'{"agent":"abc","digest":"sha256:' + b"0" * 64 + b'","expires_at":"2026-01-02T12:00:00Z",'
        b'"issued_at":"2026-01-01T12:00:00Z","key_id":"file:x","type":"chenu.agents/statement/v1",'
        b'"version":"1.0.0"}'
    )
    assert Statement.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"issued_at": datetime(2026, 1, 1)}, "naive"),
        ({"digest": "sha256:ABC"}, "digest"),
        ({"digest": "md5:" + "0" * 64}, "digest"),
        ({"agent": ""}, "agent"),
        ({"agent": "../../etc"}, "agent name"),
        ({"agent": "abc\n"}, "agent name"),
        ({"agent": "\u0430bc"}, "agent name"),  # Cyrillic a
        ({"version": "1.2"}, "semantic version"),
        ({"version": "1.2.0\n"}, "semantic version"),
        ({"expires_at": NOW}, "later than"),
    ],
)
def test_statement_refuses_bad_fields(kwargs: dict, message: str) -> None:
    base = {
        "agent": "abc",
        "version": "1.0.0",
        "digest": "sha256:" + "0" * 64,
        "key_id": "k",
        "issued_at": NOW,
        "expires_at": NOW + DAY,
    }
    with pytest.raises(ValueError, match=message):
        Statement(**{**base, **kwargs})


def test_statement_times_are_normalised_to_utc_seconds() -> None:
    paris = datetime(2026, 1, 1, 13, 0, 0, 999999, tzinfo=timezone(HOUR))
    s = Statement("abc", "1.0.0", "sha256:" + "0" * 64, "k", paris, paris + DAY)
    assert s.issued_at == NOW and s.issued_at.tzinfo is UTC
    assert s.to_dict()["issued_at"] == "2026-01-01T12:00:00Z"


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) - 7])
def test_file_digest(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_digest(path) == "sha256:" + hashlib.sha256(data).hexdigest()


# --- sign_bundle refusals --------------------------------------------------------------------------


def test_sign_without_key_writes_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.write_bytes(b"x")
    with pytest.raises(errors.KeyStoreError, match="ensure_key"):
        sign_bundle(bundle, FileKeyStore(tmp_path / "keys"), agent="abc", version="1.0.0")
    assert not Path(f"{bundle}.sig").exists()


def test_sign_refuses_a_non_semver_version(world: World) -> None:
    with pytest.raises(VersionError):
        world.sign(version="v1")
    assert not world.sig.exists()


def test_sign_to_a_custom_path(world: World) -> None:
    target = world.tmp / "elsewhere.sig"
    statement = world.sign(signature_path=target)
    assert not world.sig.exists()
    assert verify_bundle(world.bundle, world.trust(), signature_path=target, now=NOW + HOUR) == statement


# --- verify_bundle refusals ------------------------------------------------------------------------


def _alter_statement(field: str, value: str) -> Callable[[World], dict]:
    def mutate(w: World) -> dict:
        env = w.envelope()
        env["statement"][field] = value
        w.write_envelope(env)
        return {}

    return mutate


def _unknown_key(w: World) -> dict:
    return {"trust": TrustStore()}


def _other_key_signs(w: World) -> dict:
    # A key that is not the one the statement names produces the signature.
    env = w.envelope()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    statement = Statement.from_dict(env["statement"])
    env["signature"] = base64.b64encode(rsa_sign(other, statement.canonical_bytes())).decode()
    w.write_envelope(env)
    return {}


def _garbage(text: str) -> Callable[[World], dict]:
    def mutate(w: World) -> dict:
        w.sig.write_text(text)
        return {}

    return mutate


def _envelope_field(field: str, value: object) -> Callable[[World], dict]:
    def mutate(w: World) -> dict:
        env = w.envelope()
        env[field] = value
        w.write_envelope(env)
        return {}

    return mutate


def _revoke(w: World) -> dict:
    w.store.revoke(w.store.current_key_id(), now=NOW + 2 * HOUR)
    return {}


def _signed_after_key_retired(w: World) -> dict:
    # The statement says it was issued at NOW+1min, but its key was rotated out at NOW+30s.
    w.store.rotate(now=NOW + timedelta(seconds=30), force=True)
    return {}


def _window_closed_before(w: World) -> dict:
    key = w.trust().get(w.store.current_key_id())
    return {"trust": TrustStore((replace(key, valid_until=NOW),))}


def _window_opens_after(w: World) -> dict:
    key = w.trust().get(w.store.current_key_id())
    return {"trust": TrustStore((replace(key, valid_from=NOW + HOUR),))}


def _remove_sig(w: World) -> dict:
    w.sig.unlink()
    return {}


def _flip_byte(w: World) -> dict:
    data = bytearray(w.bundle.read_bytes())
    data[1000] ^= 0x01
    w.bundle.write_bytes(bytes(data))
    return {}


def _append_byte(w: World) -> dict:
    with open(w.bundle, "ab") as f:
        f.write(b"\0")
    return {}


def _accepted(version: str) -> Callable[[World], dict]:
    def mutate(w: World) -> dict:
        w.accepted.record("estimator", version)
        return {}

    return mutate


E = errors
REFUSALS = [
    ("unknown key", _unknown_key, {}, E.UnknownKey),
    ("key id swapped to an unknown one", _alter_statement("key_id", "file:ffffffffffffffff"), {}, E.UnknownKey),
    ("version altered", _alter_statement("version", "9.9.9"), {}, E.BadSignature),
    ("expiry extended", _alter_statement("expires_at", "2099-01-01T00:00:00Z"), {}, E.BadSignature),
    ("digest altered", _alter_statement("digest", "sha256:" + "1" * 64), {}, E.BadSignature),
    ("signed by another key", _other_key_signs, {}, E.BadSignature),
    ("extra statement field", _alter_statement("note", "hi"), {}, E.BadSignature),
    ("not json", _garbage("{nope"), {}, E.BadSignature),
    ("not an object", _garbage("[1, 2]"), {}, E.BadSignature),
    ("signature not base64", _envelope_field("signature", "!!!"), {}, E.BadSignature),
    ("other algorithm", _envelope_field("algorithm", "rsa-pkcs1-sha256"), {}, E.BadSignature),
    ("signature missing", _remove_sig, {}, E.BadSignature),
    ("revoked after signing", _revoke, {}, E.RevokedKey),
    ("issued after key rotated out", _signed_after_key_retired, {}, E.KeyNotValid),
    ("window closed before issue", _window_closed_before, {}, E.KeyNotValid),
    ("window opens after issue", _window_opens_after, {}, E.KeyNotValid),
    ("expired", None, {"now": NOW + MINUTE + 30 * DAY + timedelta(seconds=1)}, E.ExpiredStatement),
    ("not yet valid", None, {"now": NOW - 5 * MINUTE}, E.ExpiredStatement),
    ("other agent", None, {"agent": "summariser"}, E.StatementMismatch),
    ("other version", None, {"version": "1.2.1"}, E.StatementMismatch),
    ("bundle byte flipped", _flip_byte, {}, E.TamperedBundle),
    ("bundle extended", _append_byte, {}, E.TamperedBundle),
    ("lower than accepted", _accepted("1.3.0"), {}, E.RollbackRefused),
    ("prerelease after release", _accepted("1.2.0"), {"_version": "1.2.0-rc.1"}, E.RollbackRefused),
    ("numeric, not lexical", _accepted("1.10.0"), {"_version": "1.9.0"}, E.RollbackRefused),
]


@pytest.mark.parametrize(("mutate", "kwargs", "exc"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_verify_refuses(world: World, mutate, kwargs: dict, exc: type[Exception]) -> None:
    kwargs = dict(kwargs)
    world.sign(version=kwargs.pop("_version", "1.2.0"))
    overrides = mutate(world) if mutate else {}
    trust = overrides.get("trust", world.trust())
    before = world.accepted.load()
    call = {"now": NOW + HOUR, "accepted": world.accepted, "record": True, **kwargs}
    with pytest.raises(errors.VerificationError) as info:
        verify_bundle(world.bundle, trust, **call)
    assert type(info.value) is exc, info.value
    assert str(world.bundle) in str(info.value)
    assert world.accepted.load() == before


@pytest.mark.parametrize(
    ("now", "ok"),
    [
        (NOW + MINUTE - 5 * MINUTE, True),  # exactly the allowed skew
        (NOW + MINUTE - 5 * MINUTE - timedelta(seconds=1), False),
        (NOW + MINUTE + 30 * DAY, True),  # the expiry second itself
        (NOW + MINUTE + 30 * DAY + timedelta(seconds=1), False),
    ],
)
def test_freshness_boundaries(world: World, now: datetime, ok: bool) -> None:
    world.sign()
    if ok:
        verify_bundle(world.bundle, world.trust(), now=now)
    else:
        with pytest.raises(errors.ExpiredStatement):
            verify_bundle(world.bundle, world.trust(), now=now)


ORDER = [
    # Several things wrong at once: the first check in trust order is the one reported.
    ("revoked beats tampered and mismatch", [_revoke, _flip_byte], {"agent": "other"}, E.RevokedKey),
    ("forgery beats everything after it", [_alter_statement("agent", "other"), _flip_byte], {}, E.BadSignature),
    ("expired beats tampered", [_flip_byte], {"now": NOW + 40 * DAY}, E.ExpiredStatement),
    ("mismatch beats tampered", [_flip_byte], {"version": "2.0.0"}, E.StatementMismatch),
    ("tampered beats rollback", [_accepted("3.0.0"), _flip_byte], {}, E.TamperedBundle),
]


@pytest.mark.parametrize(("mutations", "kwargs", "exc"), [r[1:] for r in ORDER], ids=[r[0] for r in ORDER])
def test_checks_run_in_trust_order(world: World, mutations, kwargs: dict, exc: type[Exception]) -> None:
    world.sign()
    for mutate in mutations:
        mutate(world)
    call = {"now": NOW + HOUR, "accepted": world.accepted, **kwargs}
    with pytest.raises(errors.VerificationError) as info:
        verify_bundle(world.bundle, world.trust(), **call)
    assert type(info.value) is exc, info.value


def test_signed_but_malformed_statement(world: World) -> None:
    # A correctly signed statement that is not a v1 statement is still refused.
    raw = {"type": "something/else", "key_id": world.store.current_key_id()}
    _, sig = world.store.sign(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode())
    world.write_envelope({"statement": raw, "signature": base64.b64encode(sig).decode(), "algorithm": "rsa-pss-sha256"})
    with pytest.raises(errors.VerificationError, match="malformed"):
        verify_bundle(world.bundle, world.trust(), now=NOW + HOUR)


# --- rollback and recording ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "version", "recorded"),
    [
        (None, "1.2.0", "1.2.0"),
        ("1.2.0", "1.2.0", "1.2.0"),
        ("1.2.0", "1.2.1", "1.2.1"),
        ("1.9.0", "1.10.0", "1.10.0"),
        ("1.2.0-rc.1", "1.2.0", "1.2.0"),
        ("1.2.0-alpha", "1.2.0-beta", "1.2.0-beta"),
    ],
)
def test_record_raises_the_accepted_version(world: World, accepted: str | None, version: str, recorded: str) -> None:
    if accepted:
        world.accepted.record("estimator", accepted)
    world.sign(version=version)
    verify_bundle(world.bundle, world.trust(), now=NOW + HOUR, accepted=world.accepted, record=True)
    assert world.accepted.highest("estimator") == recorded


def test_no_record_without_asking(world: World) -> None:
    world.sign()
    verify_bundle(world.bundle, world.trust(), now=NOW + HOUR, accepted=world.accepted)
    assert world.accepted.load() == {}
    assert not world.accepted.path.exists()


def test_allow_rollback_loads_but_never_lowers(world: World) -> None:
    world.accepted.record("estimator", "2.0.0")
    world.sign(version="1.2.0")
    statement = verify_bundle(
        world.bundle, world.trust(), now=NOW + HOUR, accepted=world.accepted, allow_rollback=True, record=True
    )
    assert statement.version == "1.2.0"
    assert world.accepted.highest("estimator") == "2.0.0"


def test_record_needs_a_store(world: World) -> None:
    world.sign()
    with pytest.raises(ValueError, match="AcceptedVersions"):
        verify_bundle(world.bundle, world.trust(), now=NOW + HOUR, record=True)


def test_accepted_versions_file(tmp_path: Path) -> None:
    acc = AcceptedVersions(tmp_path / "sub" / "accepted.json")
    assert acc.highest("aaa") is None
    assert acc.record("aaa", "1.0.0", dry_run=True) is True
    assert not acc.path.exists()
    assert acc.record("aaa", "1.0.0") is True
    assert acc.record("aaa", "1.0.0") is False
    assert acc.record("aaa", "0.9.0") is False
    assert acc.record("bbb", "0.1.0") is True
    assert json.loads(acc.path.read_text()) == {"aaa": "1.0.0", "bbb": "0.1.0"}
    acc.path.write_text('["not", "a", "mapping"]')
    with pytest.raises(errors.VerificationError, match="accepted versions"):
        acc.highest("aaa")


# --- rotation and revocation over time ---------------------------------------------------------------


def test_rotation_keeps_old_statements_verifying(world: World, tmp_path: Path) -> None:
    old_statement = world.sign(at=NOW + MINUTE)
    old_bundle, old_sig = world.bundle, world.sig
    _, new_key = world.store.rotate(now=NOW + DAY)
    new_bundle = tmp_path / "estimator-1.3.0.tar.zst"
    new_bundle.write_bytes(b"newer")
    new_statement = sign_bundle(new_bundle, world.store, agent="estimator", version="1.3.0", now=NOW + DAY + MINUTE)
    assert new_statement.key_id == new_key != old_statement.key_id

    # The runtime's trust store, shipped before the rotation then merged with the new one.
    trust_path = tmp_path / "trust.json"
    TrustStore().merge(world.trust()).save(trust_path)
    trust = TrustStore.load(trust_path)
    at = NOW + 2 * DAY
    assert verify_bundle(old_bundle, trust, signature_path=old_sig, now=at) == old_statement
    assert verify_bundle(new_bundle, trust, now=at) == new_statement
    # ...until the old statement expires.
    with pytest.raises(errors.ExpiredStatement):
        verify_bundle(old_bundle, trust, now=old_statement.expires_at + timedelta(seconds=1))


def test_revoked_key_fails_statements_signed_long_before(world: World) -> None:
    world.sign(at=NOW + MINUTE)
    key_id = world.store.current_key_id()
    world.store.rotate(now=NOW + DAY)
    world.store.revoke(key_id, now=NOW + 20 * DAY)
    with pytest.raises(errors.RevokedKey, match=key_id):
        verify_bundle(world.bundle, world.trust(), now=NOW + 3 * DAY)


# --- trust store -----------------------------------------------------------------------------------


def _key(key_id: str, pem: str = "PEM", **kw) -> TrustedKey:
    return TrustedKey(key_id, pem, valid_from=kw.pop("valid_from", NOW), **kw)


def test_trust_store_save_load(world: World, tmp_path: Path) -> None:
    world.store.rotate(now=NOW + DAY)
    world.store.revoke(world.store.current_key_id(), now=NOW + 2 * DAY)
    trust = world.trust()
    path = tmp_path / "trust.json"
    trust.save(path)
    assert TrustStore.load(path) == trust
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    text = path.read_text()
    assert "PRIVATE" not in text
    assert json.loads(text)["keys"][1]["revoked_at"] == "2026-01-03T12:00:00Z"
    assert TrustStore.load(tmp_path / "missing.json", missing_ok=True) == TrustStore()


@pytest.mark.parametrize("content", ["{", "[]", '{"keys": [{"key_id": "x"}]}', '{"keys": 3}'])
def test_trust_store_refuses_malformed_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "trust.json"
    path.write_text(content)
    with pytest.raises(errors.VerificationError, match="trust"):
        TrustStore.load(path)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        (_key("a"), None, _key("a")),
        (None, _key("b"), _key("b")),
        (_key("a"), _key("a", revoked_at=NOW + DAY), _key("a", revoked_at=NOW + DAY)),
        (_key("a", revoked_at=NOW + DAY), _key("a"), _key("a", revoked_at=NOW + DAY)),
        (_key("a", revoked_at=NOW + 2 * DAY), _key("a", revoked_at=NOW + DAY), _key("a", revoked_at=NOW + DAY)),
        (_key("a"), _key("a", valid_until=NOW + DAY), _key("a", valid_until=NOW + DAY)),
    ],
)
def test_trust_store_merge(mine, theirs, expected: TrustedKey) -> None:
    a = TrustStore((mine,) if mine else ())
    b = TrustStore((theirs,) if theirs else ())
    for merged in (a.merge(b), b.merge(a)):
        assert merged.get(expected.key_id) == expected
        assert len(merged) == 1


def test_trust_store_merge_is_a_union_and_pure() -> None:
    a = TrustStore((_key("a"),))
    b = TrustStore((_key("b", valid_from=NOW + DAY),))
    merged = a.merge(b)
    assert [k.key_id for k in merged] == ["a", "b"]
    assert [k.key_id for k in a] == ["a"]
    assert merged.merge(b) == merged


def test_trust_store_merge_refuses_two_keys_under_one_id() -> None:
    with pytest.raises(errors.VerificationError, match="two different public keys"):
        TrustStore((_key("a", "PEM1"),)).merge(TrustStore((_key("a", "PEM2"),)))


def test_unreadable_public_key_fails_closed(world: World) -> None:
    world.sign()
    key = world.trust().get(world.store.current_key_id())
    broken = TrustStore((replace(key, public_pem="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),))
    with pytest.raises(errors.VerificationError, match="unreadable public key"):
        verify_bundle(world.bundle, broken, now=NOW + HOUR)
