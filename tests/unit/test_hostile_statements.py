"""Issue 13, classes 2, 3, 4 and 5 on the signature side: statements that never expire, back-dated
statements from a stolen key, the same version with other bytes, names that are paths, envelopes a
lax parser would read differently. Every refusal is a VerificationError subclass naming the signature
file, the field and what was expected, and nothing is recorded."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chenu_agents import errors
from chenu_agents.files import canonical_json
from chenu_agents.keystore import FileKeyStore
from chenu_agents.signing import DEFAULT_MAX_LIFETIME, file_digest, sign_bundle, verify_bundle
from chenu_agents.trust import AcceptedVersions, format_time

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

pytestmark = pytest.mark.usefixtures("fast_keys")


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    keys = FileKeyStore(tmp_path / "keys")
    keys.ensure_key(now=NOW)
    return keys


def _bundle(tmp_path: Path, name: str = "b.tar.zst", data: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(data if data is not None else os.urandom(4096))
    return path


def _forge(store: FileKeyStore, bundle: Path, **fields) -> Path:
    """A statement signed with the store's current key, with any field set as an attacker holding it would."""
    statement = {
        "type": "chenu.agents/statement/v1",
        "agent": "estimator",
        "version": "1.0.0",
        "digest": file_digest(bundle),
        "key_id": store.current_key_id(),
        "issued_at": format_time(NOW + timedelta(minutes=1)),
        "expires_at": format_time(NOW + 2 * DAY),
        **fields,
    }
    _, signature = store.sign(canonical_json(statement))
    sig = Path(f"{bundle}.sig")
    sig.write_text(
        json.dumps(
            {"statement": statement, "signature": base64.b64encode(signature).decode(), "algorithm": "rsa-pss-sha256"}
        )
    )
    return sig


# --- lifetime ----------------------------------------------------------------------------------------


def test_a_hundred_year_statement_is_refused_whatever_it_claims(tmp_path, store):
    bundle = _bundle(tmp_path)
    sig = _forge(store, bundle, expires_at=format_time(NOW + 36500 * DAY))
    with pytest.raises(errors.StatementTooLong) as info:
        verify_bundle(bundle, store.trust_store(), now=NOW + DAY)
    problem = info.value.problems[0]
    assert (problem.file, problem.field) == (str(sig), "statement.expires_at")
    assert "30 days" in problem.expected
    # StatementTooLong is an ExpiredStatement: agent_signature's renewal treats it as one
    assert isinstance(info.value, errors.ExpiredStatement)


@pytest.mark.parametrize(
    ("lifetime", "limit", "ok"),
    [
        (DEFAULT_MAX_LIFETIME, DEFAULT_MAX_LIFETIME, True),
        (31 * DAY, DEFAULT_MAX_LIFETIME, False),
        (8 * DAY, 7 * DAY, False),
    ],
)
def test_max_lifetime_is_configurable(tmp_path, store, lifetime, limit, ok):
    bundle = _bundle(tmp_path)
    issued = NOW + timedelta(minutes=1)
    _forge(store, bundle, issued_at=format_time(issued), expires_at=format_time(issued + lifetime))
    call = {"now": NOW + DAY, "max_lifetime": limit}
    if ok:
        verify_bundle(bundle, store.trust_store(), **call)
    else:
        with pytest.raises(errors.StatementTooLong):
            verify_bundle(bundle, store.trust_store(), **call)


def test_signing_refuses_a_validity_over_the_bound_and_writes_nothing(tmp_path, store):
    bundle = _bundle(tmp_path)
    with pytest.raises(errors.SigningError) as info:
        sign_bundle(bundle, store, agent="estimator", version="1.0.0", validity=timedelta(days=365 * 100))
    assert info.value.problems[0].field == "validity"
    assert not Path(f"{bundle}.sig").exists()


def test_a_stolen_key_cannot_backdate_a_long_lived_statement(tmp_path, store):
    # the thief holds the key while it is current, back-dates into its window, asks for decades
    bundle = _bundle(tmp_path)
    _forge(store, bundle, issued_at=format_time(NOW), expires_at=format_time(NOW + 20 * 365 * DAY))
    store.rotate(now=NOW + 2 * DAY, force=True)
    with pytest.raises(errors.StatementTooLong):
        verify_bundle(bundle, store.trust_store(), now=NOW + 400 * DAY)


@pytest.mark.parametrize(
    ("issued", "error"),
    [
        (NOW - DAY, errors.KeyNotValid),  # before the key's activation
        (NOW + 3 * DAY, errors.KeyNotValid),  # after its retirement (rotated out at NOW + 2 days)
    ],
    ids=["before activation", "after retirement"],
)
def test_issued_at_within_the_key_window(tmp_path, store, issued, error):
    bundle = _bundle(tmp_path)
    _forge(store, bundle, issued_at=format_time(issued), expires_at=format_time(issued + DAY))
    store.rotate(now=NOW + 2 * DAY, force=True)
    with pytest.raises(error):
        verify_bundle(bundle, store.trust_store(), now=issued + timedelta(hours=1))


# --- names and fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("agent", "../../etc", "an agent name"),
        ("agent", "estimator\n", "an agent name"),
        ("agent", "\u0435stimator", "an agent name"),  # Cyrillic e
        ("version", "1.0", "semantic version"),
        ("version", 1.0, "semantic version"),
        ("key_id", None, None),  # caught before: an envelope without a key id string
        ("issued_at", "2026-03-01 12:01:00", "UTC time"),
    ],
)
def test_signed_but_malformed_fields_name_the_field(tmp_path, store, field, value, expected):
    bundle = _bundle(tmp_path)
    sig = _forge(store, bundle, **{field: value})
    with pytest.raises(errors.VerificationError) as info:
        verify_bundle(bundle, store.trust_store(), now=NOW + DAY)
    if expected is None:
        assert isinstance(info.value, errors.BadSignature)
        return
    problem = info.value.problems[0]
    assert (problem.file, problem.field) == (str(sig), f"statement.{field}")
    assert expected in problem.expected


def test_expected_agent_must_be_a_name(tmp_path, store):
    bundle = _bundle(tmp_path)
    sign_bundle(bundle, store, agent="estimator", version="1.0.0", now=NOW)
    with pytest.raises(errors.StatementMismatch, match="not an agent name"):
        verify_bundle(bundle, store.trust_store(), agent="../estimator", now=NOW + DAY)


@pytest.mark.parametrize("agent", ["../../tmp/x", "Estimator", "es"])
def test_signing_refuses_a_bad_agent_name(tmp_path, store, agent):
    bundle = _bundle(tmp_path)
    with pytest.raises(errors.SigningError, match="not an agent name"):
        sign_bundle(bundle, store, agent=agent, version="1.0.0")


# --- envelopes a lax parser reads differently ------------------------------------------------------------


def _envelope_text(tmp_path, store) -> tuple[Path, Path, str]:
    bundle = _bundle(tmp_path)
    sign_bundle(bundle, store, agent="estimator", version="1.0.0", now=NOW)
    sig = Path(f"{bundle}.sig")
    return bundle, sig, sig.read_text()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda t: t.replace('"algorithm": "rsa-pss-sha256"', '"algorithm": "rsa-pss-sha256", "algorithm": "none"'),
            "algorithm",
        ),
        (lambda t: t.replace('"agent": "estimator"', '"agent": "estimator", "agent": "summariser"'), "agent"),
        (lambda t: '{"statement": ' + "[" * 10_000 + "]" * 10_000 + "}", "(document)"),
        (lambda t: t + " " * (70 * 1024), "(size)"),
        (lambda t: t[:-2] + ', "note": "x"}', "(root)"),
        (lambda t: t.replace('"signature": "', '"signature": 1, "x": "'), "(root)"),
    ],
    ids=[
        "duplicate algorithm",
        "duplicate statement key",
        "deep nesting",
        "too large",
        "extra field",
        "signature type",
    ],
)
def test_envelope_differentials_are_refused(tmp_path, store, mutate, field):
    bundle, sig, text = _envelope_text(tmp_path, store)
    sig.write_text(mutate(text))
    with pytest.raises(errors.BadSignature) as info:
        verify_bundle(bundle, store.trust_store(), now=NOW + DAY)
    assert info.value.problems[0].field == field
    assert info.value.problems[0].file == str(sig)


# --- version pinning ---------------------------------------------------------------------------------


def _sign(tmp_path: Path, store: FileKeyStore, version: str, content: bytes, name: str) -> Path:
    bundle = _bundle(tmp_path, name, content)
    sign_bundle(bundle, store, agent="estimator", version=version, now=NOW)
    return bundle


@pytest.mark.parametrize("second_version", ["1.2.0", "1.2.0+rebuild.2"])
def test_same_version_other_digest_is_refused(tmp_path, store, second_version):
    accepted = AcceptedVersions(tmp_path / "accepted.json")
    first = _sign(tmp_path, store, "1.2.0", b"first build", "a.tar.zst")
    verify_bundle(first, store.trust_store(), now=NOW + DAY, accepted=accepted, record=True)
    assert accepted.pinned("estimator", "1.2.0") == file_digest(first)

    other = _sign(tmp_path, store, second_version, b"another build", "b.tar.zst")
    before = (accepted.path.read_bytes(), accepted.digests_path.read_bytes())
    with pytest.raises(errors.VersionPinned) as info:
        verify_bundle(other, store.trust_store(), now=NOW + DAY, accepted=accepted, record=True)
    assert info.value.problems[0].field == "pins.estimator.1.2.0"
    assert file_digest(first) in info.value.problems[0].expected
    assert (accepted.path.read_bytes(), accepted.digests_path.read_bytes()) == before
    # the same bytes again (re-signed after a rotation, say) are fine
    verify_bundle(first, store.trust_store(), now=NOW + DAY, accepted=accepted, record=True)


def test_forced_replacement_writes_an_audit_row(tmp_path, store, monkeypatch):
    monkeypatch.setenv("AWX_USER_NAME", "ops-alice")
    accepted = AcceptedVersions(tmp_path / "accepted.json")
    first = _sign(tmp_path, store, "1.2.0", b"first build", "a.tar.zst")
    verify_bundle(first, store.trust_store(), now=NOW + DAY, accepted=accepted, record=True)
    other = _sign(tmp_path, store, "1.2.0", b"hotfix build", "b.tar.zst")
    verify_bundle(
        other,
        store.trust_store(),
        now=NOW + DAY,
        accepted=accepted,
        record=True,
        force_digest=True,
        reason="rebuilt with the fixed prompt",
    )
    state = accepted.load_digests()
    assert state["pins"]["estimator"]["1.2.0"] == file_digest(other)
    assert state["overrides"] == [
        {
            "at": format_time(NOW + DAY),
            "agent": "estimator",
            "version": "1.2.0",
            "previous_digest": file_digest(first),
            "digest": file_digest(other),
            "actor": "ops-alice",
            "reason": "rebuilt with the fixed prompt",
        }
    ]
    # the main file keeps the shape the runtime, deploy and the playbooks read
    assert json.loads(accepted.path.read_text()) == {"estimator": "1.2.0"}


def test_record_without_force_refuses_a_pinned_version(tmp_path):
    accepted = AcceptedVersions(tmp_path / "accepted.json")
    accepted.record("estimator", "1.0.0", digest="sha256:" + "a" * 64)
    with pytest.raises(errors.VersionPinned):
        accepted.record("estimator", "1.0.0", digest="sha256:" + "b" * 64)
    assert accepted.record("estimator", "1.0.0", digest="sha256:" + "a" * 64) is False


def test_malformed_digests_file_is_named(tmp_path):
    accepted = AcceptedVersions(tmp_path / "accepted.json")
    accepted.digests_path.write_text('{"pins": [], "overrides": []}')
    with pytest.raises(errors.VerificationError) as info:
        accepted.pinned("estimator", "1.0.0")
    assert info.value.problems[0].file == str(accepted.digests_path)
