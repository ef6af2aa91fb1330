"""Signing key stores behind one interface: a local directory of RSA keys, or HashiCorp Vault transit.

Every state-changing method takes `dry_run`: it returns what it would do (changed, key id) and writes
nothing, which is what an Ansible module's check mode needs. Private key material never leaves the
store through a return value, an exception message or a repr.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import KeyStoreError, Problem
from .files import atomic_write
from .safeload import Budget, load_json
from .trust import (
    TrustedKey,
    TrustStore,
    dump_json,
    format_time,
    parse_time,
    rsa_sign,
    utc,
)

try:
    import hvac
    import hvac.exceptions

    HAS_HVAC = True
except ImportError:  # pragma: no cover - exercised only where hvac is absent
    hvac = None
    HAS_HVAC = False

DEFAULT_ROTATION_PERIOD = timedelta(hours=24)
# What a dry run reports for a file key that does not exist yet: its id derives from the key itself.
PENDING_FILE_KEY_ID = "file:pending"
_KEYRING_BUDGET = Budget(max_bytes=8 * 1024 * 1024, max_depth=6)


def _period(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        period = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        period = timedelta(seconds=value)
    else:
        raise KeyStoreError(f"rotation_period must be a timedelta or seconds, got {type(value).__name__}")
    if period <= timedelta(0):
        raise KeyStoreError(f"rotation_period must be positive, got {period}")
    return period


class KeyStore(ABC):
    """Where signing keys live. `sign` always uses the current key; old public keys stay in the trust store."""

    rotation_period: timedelta = DEFAULT_ROTATION_PERIOD

    @abstractmethod
    def current_key_id(self) -> str | None:
        """The key that signs now, or None when there is none (never created, or revoked)."""

    @abstractmethod
    def ensure_key(self, now: datetime | None = None, *, dry_run: bool = False) -> tuple[bool, str]:
        """Create a signing key when there is no current one. Returns (changed, current key id)."""

    @abstractmethod
    def rotate(self, now: datetime | None = None, force: bool = False, *, dry_run: bool = False) -> tuple[bool, str]:
        """New key version when the current one is older than rotation_period (or force)."""

    @abstractmethod
    def revoke(self, key_id: str, now: datetime | None = None, *, dry_run: bool = False) -> bool:
        """Mark a key revoked: everything it ever signed stops verifying. Returns changed."""

    @abstractmethod
    def sign(self, data: bytes, *, key_id: str | None = None) -> tuple[str, bytes]:
        """Sign with the current key (RSASSA-PSS, SHA-256, salt 32). `key_id` pins which key is expected."""

    @abstractmethod
    def trust_store(self) -> TrustStore:
        """Every public key with its validity window and revocation."""

    def plan_rotate(self, now: datetime | None = None, force: bool = False) -> tuple[bool, str]:
        return self.rotate(now, force, dry_run=True)

    def _due(self, created_at: datetime, now: datetime) -> bool:
        return now - created_at >= self.rotation_period


# --- file ------------------------------------------------------------------------------------------


def _generate_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_id_for(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "file:" + hashlib.sha256(der).hexdigest()[:16]


class FileKeyStore(KeyStore):
    """A 0700 directory: one 0600 PEM per usable private key and keyring.json with every key's metadata.

    Only the current key's private half is kept: it is deleted when the key is rotated out or revoked,
    so a stolen directory cannot back-date statements into an old key's window.
    """

    KEYRING = "keyring.json"

    def __init__(self, path: str | os.PathLike[str], rotation_period: timedelta | float = DEFAULT_ROTATION_PERIOD):
        self.path = Path(path)
        self.rotation_period = _period(rotation_period)

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.path)!r}, rotation_period={self.rotation_period!r})"

    @property
    def keyring_path(self) -> Path:
        return self.path / self.KEYRING

    def _pem_path(self, key_id: str) -> Path:
        return self.path / (key_id.removeprefix("file:") + ".pem")

    # state

    def _entries(self) -> list[dict[str, Any]]:
        if not self.keyring_path.exists():
            return []
        source = str(self.keyring_path)
        try:
            data = load_json(self.keyring_path.read_bytes(), source, error=KeyStoreError, budget=_KEYRING_BUDGET)
            entries = data["keys"]
            for e in entries:
                e["created_at"] = parse_time(e["created_at"])
                for name in ("signing_until", "revoked_at"):
                    e[name] = None if e.get(name) is None else parse_time(e[name])
                if not isinstance(e["key_id"], str) or not isinstance(e["public_pem"], str):
                    raise TypeError("key_id and public_pem must be strings")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(
                f"unreadable keyring {source}",
                [Problem(source, "keys", f"a list of key_id, created_at, public_pem ({exc})")],
            ) from None
        return entries

    def _save(self, entries: list[dict[str, Any]]) -> None:
        out = []
        for e in entries:
            out.append(
                {
                    "key_id": e["key_id"],
                    "created_at": format_time(e["created_at"]),
                    "signing_until": None if e["signing_until"] is None else format_time(e["signing_until"]),
                    "revoked_at": None if e["revoked_at"] is None else format_time(e["revoked_at"]),
                    "public_pem": e["public_pem"],
                }
            )
        atomic_write(self.keyring_path, dump_json({"version": 1, "keys": out}), 0o600)

    @staticmethod
    def _current(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        for e in reversed(entries):
            if e["signing_until"] is None and e["revoked_at"] is None:
                return e
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Create the directory 0700 if needed, refuse a looser one, and serialise writers."""
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path, 0o700)
            os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise KeyStoreError(
                f"key store directory {self.path} has mode {mode:04o}; it must not be accessible "
                "by group or others (chmod 0700)"
            )
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _new_key(self, now: datetime) -> dict[str, Any]:
        private = _generate_rsa_key()
        key_id = key_id_for(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(self._pem_path(key_id), pem, 0o600)
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "key_id": key_id,
            "created_at": now,
            "signing_until": None,
            "revoked_at": None,
            "public_pem": public_pem.decode(),
        }

    def _prune(self, entries: list[dict[str, Any]]) -> None:
        current = self._current(entries)
        keep = self._pem_path(current["key_id"]).name if current else None
        for pem in self.path.glob("*.pem"):
            if pem.name != keep:
                pem.unlink(missing_ok=True)

    # interface

    def current_key_id(self) -> str | None:
        current = self._current(self._entries())
        return current["key_id"] if current else None

    def ensure_key(self, now: datetime | None = None, *, dry_run: bool = False) -> tuple[bool, str]:
        return self._rotate(utc(now), force=False, dry_run=dry_run, only_if_missing=True)

    def rotate(self, now: datetime | None = None, force: bool = False, *, dry_run: bool = False) -> tuple[bool, str]:
        return self._rotate(utc(now), force=force, dry_run=dry_run, only_if_missing=False)

    def _rotate(self, now: datetime, *, force: bool, dry_run: bool, only_if_missing: bool) -> tuple[bool, str]:
        current = self._current(self._entries())
        if current is not None and (only_if_missing or not (force or self._due(current["created_at"], now))):
            return False, current["key_id"]
        if dry_run:
            return True, PENDING_FILE_KEY_ID
        with self._locked():
            entries = self._entries()  # again, under the lock
            current = self._current(entries)
            if current is not None and (only_if_missing or not (force or self._due(current["created_at"], now))):
                return False, current["key_id"]
            new = self._new_key(now)
            if current is not None:
                current["signing_until"] = now
            entries.append(new)
            self._save(entries)
            self._prune(entries)
        return True, new["key_id"]

    def revoke(self, key_id: str, now: datetime | None = None, *, dry_run: bool = False) -> bool:
        now = utc(now)
        entry = next((e for e in self._entries() if e["key_id"] == key_id), None)
        if entry is None:
            raise KeyStoreError(f"key {key_id} is not in {self.keyring_path}")
        if entry["revoked_at"] is not None:
            return False
        if dry_run:
            return True
        with self._locked():
            entries = self._entries()
            entry = next(e for e in entries if e["key_id"] == key_id)
            if entry["revoked_at"] is not None:
                return False
            entry["revoked_at"] = now
            if entry["signing_until"] is None:
                entry["signing_until"] = max(now, entry["created_at"])
            self._save(entries)
            self._prune(entries)
        return True

    def sign(self, data: bytes, *, key_id: str | None = None) -> tuple[str, bytes]:
        current = self._current(self._entries())
        if current is None:
            raise KeyStoreError(f"no usable signing key in {self.path}: run ensure_key or rotate first")
        if key_id is not None and key_id != current["key_id"]:
            raise KeyStoreError(f"key {key_id} is not the current signing key of {self.path} ({current['key_id']})")
        pem_path = self._pem_path(current["key_id"])
        try:
            st = pem_path.stat()
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyStoreError(f"private key {pem_path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600")
            private = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
        except KeyStoreError:
            raise
        # `from None`: the parser's exception could carry fragments of the key it choked on.
        except (OSError, ValueError, TypeError):
            raise KeyStoreError(f"cannot load private key {pem_path} for {current['key_id']}") from None
        if not isinstance(private, rsa.RSAPrivateKey) or key_id_for(private.public_key()) != current["key_id"]:
            raise KeyStoreError(f"private key {pem_path} does not match {current['key_id']} in the keyring")
        return current["key_id"], rsa_sign(private, data)

    def trust_store(self) -> TrustStore:
        return TrustStore(
            tuple(
                TrustedKey(
                    key_id=e["key_id"],
                    public_pem=e["public_pem"],
                    valid_from=e["created_at"],
                    valid_until=e["signing_until"],
                    revoked_at=e["revoked_at"],
                )
                for e in self._entries()
            )
        )


# --- Vault transit ---------------------------------------------------------------------------------

_VAULT_SIGNATURE = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/=]+)$")


class VaultTransitKeyStore(KeyStore):
    """An `rsa-2048` transit key: Vault holds the private halves, rotates natively and signs.

    Transit has no notion of revoking one version, so revocations are kept in a KV v2 entry beside
    the key (`kv_mount`/`kv_path`) rather than in a local file: AWX runs each job in a fresh
    container, and a local file would forget a revocation between two runs. The entry is written with
    check-and-set so two concurrent revocations cannot lose each other.
    Needs a Vault that honours transit's `salt_length` (1.12 or later); `sign` checks each signature
    against the public key before returning it, so an older Vault fails at signing, not at deployment.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        mount: str = "transit",
        key_name: str = "chenu-agents",
        rotation_period: timedelta | float = DEFAULT_ROTATION_PERIOD,
        verify: bool | str = True,
        kv_mount: str = "secret",
        kv_path: str | None = None,
        timeout: float = 30,
        client: Any = None,
    ):
        if client is None:
            if not HAS_HVAC:
                raise KeyStoreError(
                    "the Vault transit key store needs the 'hvac' library (pip install 'chenu-agents[vault]')"
                )
            client = hvac.Client(url=url, token=token, verify=verify, timeout=timeout)
        self._client = client
        self.url = url or getattr(client, "url", "")
        self.mount = mount
        self.key_name = key_name
        self.kv_mount = kv_mount
        self.kv_path = kv_path or f"chenu-agents/signing-keys/{key_name}"
        self.rotation_period = _period(rotation_period)

    def __repr__(self) -> str:
        return f"VaultTransitKeyStore(url={self.url!r}, mount={self.mount!r}, key_name={self.key_name!r})"

    def key_id(self, version: int) -> str:
        return f"vault:{self.key_name}:v{version}"

    def _where(self) -> str:
        return f"{self.url}/v1/{self.mount}/keys/{self.key_name}"

    @contextlib.contextmanager
    def _vault(self, action: str) -> Iterator[None]:
        try:
            yield
        except KeyStoreError:
            raise
        except Exception as exc:  # hvac raises VaultError subclasses and requests' own errors
            raise KeyStoreError(f"Vault {action} failed for {self._where()}: {type(exc).__name__}: {exc}") from None

    def _read_key(self) -> dict[str, Any] | None:
        with self._vault("read key"):
            try:
                data = self._client.secrets.transit.read_key(name=self.key_name, mount_point=self.mount)["data"]
            except hvac.exceptions.InvalidPath:
                return None
        if data.get("type") != "rsa-2048":
            raise KeyStoreError(f"transit key {self._where()} has type {data.get('type')!r}; expected 'rsa-2048'")
        return data

    def _versions(self, data: dict[str, Any]) -> list[tuple[int, datetime, str]]:
        out = []
        for version, info in data.get("keys", {}).items():
            try:
                out.append((int(version), parse_time(info["creation_time"], strict=False), info["public_key"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyStoreError(f"transit key {self._where()} version {version} is unreadable: {exc}") from None
        return sorted(out)

    def _read_revocations(self) -> tuple[dict[str, str], int]:
        with self._vault("read revocations"):
            try:
                resp = self._client.secrets.kv.v2.read_secret_version(
                    path=self.kv_path, mount_point=self.kv_mount, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath:
                return {}, 0
        return dict(resp["data"]["data"].get("revoked", {})), int(resp["data"]["metadata"]["version"])

    def _current(self, data: dict[str, Any] | None, revoked: dict[str, str]) -> tuple[int, datetime] | None:
        if data is None:
            return None
        latest = int(data["latest_version"])
        if self.key_id(latest) in revoked:
            return None
        for version, created, _pem in self._versions(data):
            if version == latest:
                return latest, created
        raise KeyStoreError(f"transit key {self._where()} does not list its latest version {latest}")

    def current_key_id(self) -> str | None:
        data = self._read_key()
        current = self._current(data, self._read_revocations()[0] if data else {})
        return self.key_id(current[0]) if current else None

    def ensure_key(self, now: datetime | None = None, *, dry_run: bool = False) -> tuple[bool, str]:
        return self._rotate(utc(now), force=False, dry_run=dry_run, only_if_missing=True)

    def rotate(self, now: datetime | None = None, force: bool = False, *, dry_run: bool = False) -> tuple[bool, str]:
        return self._rotate(utc(now), force=force, dry_run=dry_run, only_if_missing=False)

    def _rotate(self, now: datetime, *, force: bool, dry_run: bool, only_if_missing: bool) -> tuple[bool, str]:
        data = self._read_key()
        if data is None:
            if not dry_run:
                with self._vault("create key"):
                    self._client.secrets.transit.create_key(
                        name=self.key_name, key_type="rsa-2048", exportable=False, mount_point=self.mount
                    )
            return True, self.key_id(1)
        current = self._current(data, self._read_revocations()[0])
        if current is not None and (only_if_missing or not (force or self._due(current[1], now))):
            return False, self.key_id(current[0])
        if not dry_run:
            with self._vault("rotate key"):
                self._client.secrets.transit.rotate_key(name=self.key_name, mount_point=self.mount)
            data = self._read_key() or data
        else:
            data = dict(data, latest_version=int(data["latest_version"]) + 1)
        return True, self.key_id(int(data["latest_version"]))

    def revoke(self, key_id: str, now: datetime | None = None, *, dry_run: bool = False) -> bool:
        now = utc(now)
        data = self._read_key()
        known = {self.key_id(v) for v, _created, _pem in self._versions(data)} if data else set()
        if key_id not in known:
            raise KeyStoreError(f"key {key_id} is not a version of {self._where()}")
        revoked, version = self._read_revocations()
        if key_id in revoked:
            return False
        if not dry_run:
            revoked[key_id] = format_time(now)
            with self._vault("record revocation"):
                self._client.secrets.kv.v2.create_or_update_secret(
                    path=self.kv_path, secret={"revoked": revoked}, cas=version, mount_point=self.kv_mount
                )
        return True

    def sign(self, data: bytes, *, key_id: str | None = None) -> tuple[str, bytes]:
        key = self._read_key()
        current = self._current(key, self._read_revocations()[0] if key else {})
        if key is None or current is None:
            raise KeyStoreError(f"no usable signing key at {self._where()}: run ensure_key or rotate first")
        version = current[0]
        if key_id is not None and key_id != self.key_id(version):
            raise KeyStoreError(f"key {key_id} is not the current signing key of {self._where()}")
        with self._vault("sign"):
            resp = self._client.secrets.transit.sign_data(
                name=self.key_name,
                hash_input=base64.b64encode(data).decode(),
                key_version=version,
                hash_algorithm="sha2-256",
                signature_algorithm="pss",
                salt_length="hash",
                marshaling_algorithm="asn1",
                mount_point=self.mount,
            )
        match = _VAULT_SIGNATURE.match(str(resp.get("data", {}).get("signature", "")))
        if not match or int(match.group(1)) != version:
            raise KeyStoreError(f"Vault returned an unexpected signature format from {self._where()}")
        signature = base64.b64decode(match.group(2))
        public_pem = next(pem for v, _created, pem in self._versions(key) if v == version)
        trusted = TrustedKey(self.key_id(version), public_pem, valid_from=current[1])
        if not trusted.verify(data, signature):
            raise KeyStoreError(
                f"Vault's signature from {self._where()} does not verify as RSASSA-PSS/SHA-256 with a "
                "32-byte salt; does this Vault honour salt_length (1.12 or later)?"
            )
        return self.key_id(version), signature

    def trust_store(self) -> TrustStore:
        data = self._read_key()
        if data is None:
            return TrustStore()
        revoked = self._read_revocations()[0]
        versions = self._versions(data)
        keys = []
        for i, (version, created, pem) in enumerate(versions):
            key_id = self.key_id(version)
            until = versions[i + 1][1] if i + 1 < len(versions) else None
            revoked_at = parse_time(revoked[key_id], strict=False) if key_id in revoked else None
            keys.append(TrustedKey(key_id, pem, created, until, revoked_at))
        return TrustStore(tuple(keys))


_KINDS: dict[str, type[KeyStore]] = {
    "file": FileKeyStore,
    "vault": VaultTransitKeyStore,
    "vault_transit": VaultTransitKeyStore,
}


def select_keystore(kind: str, **options: Any) -> KeyStore:
    """The key store named by `kind` ('file' or 'vault'), built from its options."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise KeyStoreError(f"unknown key store kind {kind!r}; expected one of: {', '.join(_KINDS)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise KeyStoreError(f"bad options for the {kind!r} key store: {exc}") from None
