from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from chenu_agents import keystore as keystore_mod
from chenu_agents import trust as trust_mod
from chenu_agents.errors import KeyStoreError
from chenu_agents.keystore import (
    PENDING_FILE_KEY_ID,
    FileKeyStore,
    KeyStore,
    VaultTransitKeyStore,
    select_keystore,
)
from chenu_agents.signing import sign_bundle, verify_bundle

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


pytestmark = pytest.mark.usefixtures("fast_keys")


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    if not path.exists():
        return {}
    return {p.name: (p.stat().st_mode, p.read_bytes()) for p in sorted(path.iterdir())}


def private_pems(path: Path) -> list[bytes]:
    return [p.read_bytes() for p in path.glob("*.pem")]


# --- file key store ---------------------------------------------------------------------------------


def test_ensure_key_creates_once(store: FileKeyStore) -> None:
    assert store.current_key_id() is None
    changed, key_id = store.ensure_key(now=NOW)
    assert changed
    assert re.fullmatch(r"file:[0-9a-f]{16}", key_id)
    assert store.ensure_key(now=NOW + DAY * 7) == (False, key_id)
    assert store.current_key_id() == key_id


def test_key_id_is_sha256_of_der_public_key(store: FileKeyStore) -> None:
    _, key_id = store.ensure_key(now=NOW)
    pem = store.trust_store().get(key_id).public_pem.encode()
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id == "file:" + hashlib.sha256(der).hexdigest()[:16]


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
def test_file_modes(store: FileKeyStore, umask: int) -> None:
    old = os.umask(umask)
    try:
        _, key_id = store.ensure_key(now=NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    for name in (key_id.removeprefix("file:") + ".pem", "keyring.json"):
        assert stat.S_IMODE((store.path / name).stat().st_mode) == 0o600, name


def test_private_key_never_visible_before_rename(store: FileKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def spying_replace(src: str, dst: str) -> None:
        seen.append((Path(dst).name, stat.S_IMODE(os.stat(src).st_mode)))
        real_replace(src, dst)

    monkeypatch.setattr(trust_mod.os, "replace", spying_replace)
    store.ensure_key(now=NOW)
    assert seen and all(mode == 0o600 for _, mode in seen), seen
    assert not list(store.path.glob(".*.tmp"))


def test_refuses_a_loose_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)
    os.chmod(tmp_path / "keys", 0o755)  # noqa: S103 - the loose mode is the point of the test
    with pytest.raises(KeyStoreError, match="0755"):
        FileKeyStore(tmp_path / "keys").ensure_key(now=NOW)
    assert list((tmp_path / "keys").iterdir()) == []


def test_refuses_a_loose_private_key(store: FileKeyStore) -> None:
    _, key_id = store.ensure_key(now=NOW)
    os.chmod(store.path / (key_id.removeprefix("file:") + ".pem"), 0o644)
    with pytest.raises(KeyStoreError, match="must be 0600"):
        store.sign(b"data")


@pytest.mark.parametrize(
    ("age", "force", "rotates"),
    [
        (timedelta(0), False, False),
        (23 * HOUR, False, False),
        (24 * HOUR, False, True),
        (30 * DAY, False, True),
        (timedelta(0), True, True),
    ],
)
def test_rotate_follows_the_period(store: FileKeyStore, age: timedelta, force: bool, rotates: bool) -> None:
    _, first = store.ensure_key(now=NOW)
    changed, current = store.rotate(now=NOW + age, force=force)
    assert changed is rotates
    assert (current != first) is rotates
    assert store.current_key_id() == current


def test_rotate_is_idempotent_within_the_period(store: FileKeyStore) -> None:
    store.ensure_key(now=NOW)
    changed, second = store.rotate(now=NOW + DAY)
    assert changed
    before = snapshot(store.path)
    assert store.rotate(now=NOW + DAY + HOUR) == (False, second)
    assert store.rotate(now=NOW + 2 * DAY - timedelta(seconds=1)) == (False, second)
    assert snapshot(store.path) == before


def test_rotate_on_empty_store_creates_the_first_key(store: FileKeyStore) -> None:
    changed, key_id = store.rotate(now=NOW)
    assert changed and store.current_key_id() == key_id


def test_rotation_keeps_old_public_key_with_closed_window(store: FileKeyStore) -> None:
    _, first = store.ensure_key(now=NOW)
    _, second = store.rotate(now=NOW + DAY)
    trust = store.trust_store()
    old, new = trust.get(first), trust.get(second)
    assert (old.valid_from, old.valid_until, old.revoked_at) == (NOW, NOW + DAY, None)
    assert (new.valid_from, new.valid_until) == (NOW + DAY, None)
    # The retired private half is gone: nothing can back-date a statement into the old window.
    assert [p.name for p in store.path.glob("*.pem")] == [second.removeprefix("file:") + ".pem"]


def test_sign_uses_the_current_key(store: FileKeyStore) -> None:
    _, key_id = store.ensure_key(now=NOW)
    signed_by, signature = store.sign(b"payload")
    assert signed_by == key_id
    assert store.trust_store().get(key_id).verify(b"payload", signature)
    assert not store.trust_store().get(key_id).verify(b"payload!", signature)


def test_sign_refuses_a_key_that_is_not_current(store: FileKeyStore) -> None:
    _, first = store.ensure_key(now=NOW)
    store.rotate(now=NOW + DAY)
    with pytest.raises(KeyStoreError, match="not the current signing key"):
        store.sign(b"x", key_id=first)


def test_sign_without_key(store: FileKeyStore) -> None:
    with pytest.raises(KeyStoreError, match="ensure_key"):
        store.sign(b"x")


def test_revoke(store: FileKeyStore) -> None:
    _, key_id = store.ensure_key(now=NOW)
    assert store.revoke(key_id, now=NOW + HOUR) is True
    assert store.revoke(key_id, now=NOW + 2 * HOUR) is False
    assert store.trust_store().get(key_id).revoked_at == NOW + HOUR
    assert store.current_key_id() is None
    assert private_pems(store.path) == []
    with pytest.raises(KeyStoreError):
        store.sign(b"x")
    changed, new = store.ensure_key(now=NOW + 2 * HOUR)
    assert changed and new != key_id


def test_revoke_unknown_key(store: FileKeyStore) -> None:
    store.ensure_key(now=NOW)
    with pytest.raises(KeyStoreError, match="file:0000"):
        store.revoke("file:0000000000000000")


@pytest.mark.parametrize(
    ("setup", "action", "expected"),
    [
        ("empty", lambda s, k: s.ensure_key(now=NOW, dry_run=True), (True, PENDING_FILE_KEY_ID)),
        ("empty", lambda s, k: s.rotate(now=NOW, dry_run=True), (True, PENDING_FILE_KEY_ID)),
        ("key", lambda s, k: s.ensure_key(now=NOW, dry_run=True), (False, "KEY")),
        ("key", lambda s, k: s.rotate(now=NOW + DAY, dry_run=True), (True, PENDING_FILE_KEY_ID)),
        ("key", lambda s, k: s.plan_rotate(NOW + HOUR), (False, "KEY")),
        ("key", lambda s, k: s.rotate(now=NOW, force=True, dry_run=True), (True, PENDING_FILE_KEY_ID)),
        ("key", lambda s, k: s.revoke(k, now=NOW, dry_run=True), True),
    ],
)
def test_dry_run_changes_nothing(store: FileKeyStore, setup: str, action, expected) -> None:
    key_id = store.ensure_key(now=NOW)[1] if setup == "key" else None
    before = snapshot(store.path)
    result = action(store, key_id)
    if isinstance(expected, tuple) and expected[1] == "KEY":
        expected = (expected[0], key_id)
    assert result == expected
    assert snapshot(store.path) == before
    assert store.path.exists() is (setup == "key")


def test_private_key_never_leaks(store: FileKeyStore) -> None:
    _, key_id = store.ensure_key(now=NOW)
    pem_path = store.path / (key_id.removeprefix("file:") + ".pem")
    pem = pem_path.read_text()
    body_lines = [line for line in pem.splitlines() if "-----" not in line]
    # A corrupt private key must fail without echoing any of it.
    corrupt = pem.replace(body_lines[3], body_lines[3][::-1])
    pem_path.write_text(corrupt)
    os.chmod(pem_path, 0o600)
    with pytest.raises(KeyStoreError) as info:
        store.sign(b"x")
    exposed = [str(info.value), repr(info.value), repr(store), json.dumps(store.trust_store().to_dict())]
    exposed.append((store.path / "keyring.json").read_text())
    for text in exposed:
        assert "PRIVATE" not in text
        assert not any(line in text for line in body_lines), text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_corrupt_keyring(store: FileKeyStore) -> None:
    store.ensure_key(now=NOW)
    store.keyring_path.write_text("{not json")
    with pytest.raises(KeyStoreError, match=r"keyring\.json"):
        store.current_key_id()


@pytest.mark.parametrize(
    ("kind", "options", "cls"),
    [
        ("file", {"rotation_period": 3600}, FileKeyStore),
        ("file", {"rotation_period": timedelta(hours=2)}, FileKeyStore),
        ("vault", {"url": "http://127.0.0.1:1", "token": "t"}, VaultTransitKeyStore),
        ("vault_transit", {"url": "http://127.0.0.1:1", "token": "t"}, VaultTransitKeyStore),
    ],
)
def test_select_keystore(tmp_path: Path, kind: str, options: dict, cls: type[KeyStore]) -> None:
    if cls is FileKeyStore:
        options = {"path": tmp_path / "k", **options}
    ks = select_keystore(kind, **options)
    assert type(ks) is cls


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("pkcs11", {}, "unknown key store kind"),
        ("file", {"path": "/x", "colour": "blue"}, "bad options"),
        ("file", {"path": "/x", "rotation_period": -5}, "must be positive"),
        ("file", {"path": "/x", "rotation_period": "1d"}, "timedelta or seconds"),
    ],
)
def test_select_keystore_refuses(kind: str, options: dict, message: str) -> None:
    with pytest.raises(KeyStoreError, match=message):
        select_keystore(kind, **options)


# --- Vault transit: a local server speaking the endpoints the key store uses ---------------------------


class FakeVault:
    """Just enough of Vault's HTTP API (transit keys/rotate/sign, KV v2 data) to check the wire format."""

    def __init__(self, keys: list[rsa.RSAPrivateKey], token: str):
        self.pool = itertools.cycle(keys)
        self.token = token
        self.now = NOW
        self.transit: dict[str, dict] = {}
        self.kv: dict[str, tuple[int, dict]] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.fail_with: int | None = None

    def add_version(self, name: str) -> None:
        key = self.transit.setdefault(name, {"versions": {}, "private": {}})
        version = len(key["versions"]) + 1
        private = next(self.pool)
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key["versions"][str(version)] = {
            "creation_time": self.now.strftime("%Y-%m-%dT%H:%M:%S") + ".123456789Z",
            "name": "rsa-2048",
            "public_key": pem.decode(),
        }
        key["private"][version] = private

    def handle(self, method: str, path: str, body: dict | None, token: str | None) -> tuple[int, dict | None]:
        self.requests.append((method, path, body))
        if token != self.token:
            return 403, {"errors": ["permission denied"]}
        if self.fail_with:
            return self.fail_with, {"errors": ["internal error"]}
        if m := re.fullmatch(r"/v1/transit/keys/([\w-]+)", path):
            name = m.group(1)
            if method == "POST":
                assert body == {"type": "rsa-2048", "exportable": False}, body
                if name not in self.transit:
                    self.add_version(name)
                return 204, None
            if name not in self.transit:
                return 404, {"errors": []}
            versions = self.transit[name]["versions"]
            return 200, {
                "data": {
                    "name": name,
                    "type": "rsa-2048",
                    "latest_version": len(versions),
                    "min_available_version": 0,
                    "keys": versions,
                }
            }
        if (m := re.fullmatch(r"/v1/transit/keys/([\w-]+)/rotate", path)) and method == "POST":
            self.add_version(m.group(1))
            return 204, None
        if (m := re.fullmatch(r"/v1/transit/sign/([\w-]+)", path)) and method == "POST":
            assert body["hash_algorithm"] == "sha2-256"
            assert body["signature_algorithm"] == "pss"
            assert body["salt_length"] == "hash"
            assert body["marshaling_algorithm"] == "asn1"
            version = body["key_version"]
            private = self.transit[m.group(1)]["private"][version]
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            sig = private.sign(base64.b64decode(body["input"]), pss, hashes.SHA256())
            return 200, {"data": {"signature": f"vault:v{version}:{base64.b64encode(sig).decode()}"}}
        if m := re.fullmatch(r"/v1/secret/data/(.+)", path):
            kv_path = m.group(1)
            if method == "GET":
                if kv_path not in self.kv:
                    return 404, {"errors": []}
                version, data = self.kv[kv_path]
                return 200, {"data": {"data": data, "metadata": {"version": version}}}
            current = self.kv.get(kv_path, (0, {}))[0]
            if body.get("options", {}).get("cas") != current:
                return 400, {"errors": ["check-and-set parameter did not match the current version"]}
            self.kv[kv_path] = (current + 1, body["data"])
            return 200, {"data": {"version": current + 1}}
        return 404, {"errors": [f"no handler for {method} {path}"]}

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.requests if m != "GET"]


@pytest.fixture
def fake_vault(key_pool: list[rsa.RSAPrivateKey]):
    vault = FakeVault(key_pool, token="s.test-token-123")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = vault.handle(self.command, self.path, body, self.headers.get("X-Vault-Token"))
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    vault.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield vault
    server.shutdown()
    server.server_close()


@pytest.fixture
def vstore(fake_vault: FakeVault) -> VaultTransitKeyStore:
    return VaultTransitKeyStore(url=fake_vault.url, token=fake_vault.token, key_name="agents")


def test_vault_ensure_key_creates_once(vstore: VaultTransitKeyStore, fake_vault: FakeVault) -> None:
    assert vstore.current_key_id() is None
    assert vstore.ensure_key(now=NOW, dry_run=True) == (True, "vault:agents:v1")
    assert fake_vault.writes() == []
    assert vstore.ensure_key(now=NOW) == (True, "vault:agents:v1")
    assert fake_vault.writes() == [("POST", "/v1/transit/keys/agents")]
    assert vstore.ensure_key(now=NOW) == (False, "vault:agents:v1")
    assert len(fake_vault.writes()) == 1


def test_vault_rotate(vstore: VaultTransitKeyStore, fake_vault: FakeVault) -> None:
    vstore.ensure_key(now=NOW)
    assert vstore.rotate(now=NOW + HOUR) == (False, "vault:agents:v1")
    assert vstore.rotate(now=NOW + DAY, dry_run=True) == (True, "vault:agents:v2")
    assert len(fake_vault.writes()) == 1
    fake_vault.now = NOW + DAY
    assert vstore.rotate(now=NOW + DAY) == (True, "vault:agents:v2")
    assert fake_vault.writes()[-1] == ("POST", "/v1/transit/keys/agents/rotate")
    assert vstore.rotate(now=NOW + DAY + HOUR) == (False, "vault:agents:v2")
    trust = vstore.trust_store()
    v1, v2 = trust.get("vault:agents:v1"), trust.get("vault:agents:v2")
    assert (v1.valid_from, v1.valid_until) == (NOW, NOW + DAY)
    assert (v2.valid_from, v2.valid_until) == (NOW + DAY, None)


def test_vault_signatures_verify_like_ours(vstore: VaultTransitKeyStore, fake_vault: FakeVault, tmp_path: Path) -> None:
    vstore.ensure_key(now=NOW)
    bundle = tmp_path / "a.tar.zst"
    bundle.write_bytes(b"bundle bytes")
    statement = sign_bundle(bundle, vstore, agent="estimator", version="1.0.0", now=NOW + HOUR)
    assert statement.key_id == "vault:agents:v1"
    sign_request = next(b for m, p, b in fake_vault.requests if p == "/v1/transit/sign/agents")
    assert sign_request["key_version"] == 1
    assert base64.b64decode(sign_request["input"]) == statement.canonical_bytes()
    assert verify_bundle(bundle, vstore.trust_store(), now=NOW + 2 * HOUR) == statement


def test_vault_signature_with_wrong_salt_is_caught_at_signing(
    vstore: VaultTransitKeyStore, fake_vault: FakeVault
) -> None:
    vstore.ensure_key(now=NOW)
    real = fake_vault.handle

    def max_salt(method, path, body, token):
        status, payload = real(method, path, body, token)
        if path.startswith("/v1/transit/sign/"):
            private = fake_vault.transit["agents"]["private"][1]
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
            sig = private.sign(base64.b64decode(body["input"]), pss, hashes.SHA256())
            payload = {"data": {"signature": "vault:v1:" + base64.b64encode(sig).decode()}}
        return status, payload

    fake_vault.handle = max_salt
    with pytest.raises(KeyStoreError, match="salt_length"):
        vstore.sign(b"data")


def test_vault_revoke_records_in_kv(vstore: VaultTransitKeyStore, fake_vault: FakeVault) -> None:
    vstore.ensure_key(now=NOW)
    assert vstore.revoke("vault:agents:v1", now=NOW + HOUR, dry_run=True) is True
    assert fake_vault.kv == {}
    assert vstore.revoke("vault:agents:v1", now=NOW + HOUR) is True
    assert fake_vault.kv["chenu-agents/signing-keys/agents"] == (
        1,
        {"revoked": {"vault:agents:v1": "2026-01-01T13:00:00Z"}},
    )
    assert vstore.revoke("vault:agents:v1", now=NOW + 2 * HOUR) is False
    assert vstore.trust_store().get("vault:agents:v1").revoked_at == NOW + HOUR
    assert vstore.current_key_id() is None
    with pytest.raises(KeyStoreError, match="ensure_key"):
        vstore.sign(b"x")
    assert vstore.ensure_key(now=NOW + 2 * HOUR) == (True, "vault:agents:v2")
    with pytest.raises(KeyStoreError, match="not a version"):
        vstore.revoke("vault:agents:v9")


def test_vault_errors_name_the_key_but_not_the_token(vstore: VaultTransitKeyStore, fake_vault: FakeVault) -> None:
    fake_vault.fail_with = 500
    with pytest.raises(KeyStoreError) as info:
        vstore.current_key_id()
    assert "/v1/transit/keys/agents" in str(info.value)
    for text in (str(info.value), repr(vstore)):
        assert fake_vault.token not in text


def test_vault_wrong_token(fake_vault: FakeVault) -> None:
    store = VaultTransitKeyStore(url=fake_vault.url, token="s.wrong", key_name="agents")
    with pytest.raises(KeyStoreError, match="Forbidden"):
        store.ensure_key(now=NOW)


def test_vault_without_hvac_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystore_mod, "HAS_HVAC", False)
    with pytest.raises(KeyStoreError, match="hvac"):
        select_keystore("vault", url="http://127.0.0.1:1", token="t")


@pytest.mark.skipif(
    not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")),
    reason="needs a real Vault: set VAULT_ADDR and VAULT_TOKEN (transit and KV v2 'secret' mounts enabled)",
)
def test_real_vault_round_trip(tmp_path: Path) -> None:
    name = f"chenu-agents-test-{os.getpid()}"
    store = VaultTransitKeyStore(
        url=os.environ["VAULT_ADDR"],
        token=os.environ["VAULT_TOKEN"],
        key_name=name,
        verify=os.environ.get("VAULT_CACERT", True),
    )
    changed, key_id = store.ensure_key()
    assert changed and key_id == f"vault:{name}:v1"
    assert store.ensure_key() == (False, key_id)
    bundle = tmp_path / "b"
    bundle.write_bytes(os.urandom(4096))
    time.sleep(1.1)  # the key's window starts on Vault's clock, the statement's on ours
    before = sign_bundle(bundle, store, agent="abc", version="1.0.0")
    assert store.rotate(force=True) == (True, f"vault:{name}:v2")
    assert verify_bundle(bundle, store.trust_store()) == before
