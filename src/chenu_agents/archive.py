"""The bundle store's archive: what an archived version leaves behind, kept for the seed's retention.

Seed 000 §1: archived, `retention: 5_years`. Archiving a version puts into `<store>/<agent>/<version>/`
its bundle and signature (checked against the digest the registry holds), its audit trail as it stood
(`audit.json`), and `manifest.json` (digest, key id, archived_at, expires_at, sha256 of every file).
`purge()` removes the versions whose retention ran out: their directory, their registry row if it is
still archived, and one audit row (action `purge`) saying what went.
"""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import lifecycle
from .errors import ChenuError, Problem
from .files import atomic_write, file_digests

MANIFEST = "manifest.json"
BUNDLE = "agent.tar.zst"


class ArchiveError(ChenuError):
    """A version cannot be archived (its bundle is nowhere to be found) or the store is damaged."""


def _sha256(path: Path) -> str:
    return "sha256:" + file_digests(path)[1]["sha256"]


def find_bundle(digest: str, candidates: Iterable[str | Path]) -> Path | None:
    """The first file among `candidates` (paths or glob patterns) whose sha256 is `digest`."""
    seen = set()
    for candidate in candidates:
        for name in sorted(glob.glob(str(candidate))) if any(c in str(candidate) for c in "*?[") else [str(candidate)]:
            path = Path(name)
            if name in seen or not path.is_file():
                continue
            seen.add(name)
            if _sha256(path) == digest:
                return path
    return None


def version_dir(store: Path, agent: str, version: str) -> Path:
    return Path(store) / agent / version


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def archive_version(
    record: Any,
    audit: Iterable[Any],
    store: Path,
    *,
    search: Iterable[str | Path] = (),
    now: datetime | None = None,
    retention_days: int | None = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """Keep one version (a registry VersionRecord) in the store. Returns {changed, directory, manifest}.

    A version already kept with the same digest changes nothing; with another digest, it is refused.
    """
    directory = version_dir(store, record.agent, record.version)
    existing = read_manifest(directory)
    if existing is not None:
        if existing.get("digest") != record.digest:
            raise ArchiveError(
                f"{directory} keeps {record.agent} {record.version} with digest {existing.get('digest')}, "
                f"not {record.digest}",
                [Problem(str(directory / MANIFEST), "digest", record.digest)],
            )
        return {"changed": False, "directory": str(directory), "manifest": existing}
    candidates = [c for c in [record.bundle, *search] if c]
    bundle = find_bundle(record.digest, candidates)
    if bundle is None:
        raise ArchiveError(
            f"{record.agent} {record.version}: no bundle with digest {record.digest} to archive",
            [
                Problem(
                    "(request)", "search", f"a path or pattern holding it (looked in {', '.join(map(str, candidates))})"
                )
            ],
        )
    signature = Path(f"{bundle}.sig")
    now = now or datetime.now(UTC)
    days = lifecycle.retention_days() if retention_days is None else retention_days
    manifest = {
        "agent": record.agent,
        "version": record.version,
        "digest": record.digest,
        "key_id": record.key_id,
        "archived_at": now.isoformat(),
        "expires_at": (now + timedelta(days=days)).isoformat(),
        "retention_days": days,
        "source": str(bundle),
        "files": {},
    }
    if check_mode:
        return {"changed": True, "directory": str(directory), "manifest": manifest}
    staging = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(bundle, staging / BUNDLE)
    if signature.is_file():
        shutil.copyfile(signature, staging / f"{BUNDLE}.sig")
    trail = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in audit]
    (staging / "audit.json").write_text(json.dumps(trail, indent=1, default=str, ensure_ascii=False), encoding="utf-8")
    manifest["files"] = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
    atomic_write(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    staging.rename(directory)  # whole or not at all
    return {"changed": True, "directory": str(directory), "manifest": manifest}


def kept(store: Path) -> list[dict[str, Any]]:
    """Every manifest in the store, with its directory."""
    out = []
    for path in sorted(Path(store).glob(f"*/*/{MANIFEST}")):
        manifest = read_manifest(path.parent)
        if manifest is not None:
            out.append({**manifest, "directory": str(path.parent)})
    return out


def expired(store: Path, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    return [m for m in kept(store) if datetime.fromisoformat(m["expires_at"]) <= now]


def purge(
    registry: Any,
    store: Path,
    *,
    actor: str,
    run_id: str,
    now: datetime | None = None,
    check_mode: bool = False,
) -> list[dict[str, Any]]:
    """Remove what outlived its retention; one audit row per version purged. Returns what went."""
    gone = []
    for manifest in expired(store, now):
        agent, version = manifest["agent"], manifest["version"]
        record = registry.version(agent, version)
        removes_row = record is not None and record.state == "archived"
        entry = {"agent": agent, "version": version, "directory": manifest["directory"],
                 "expires_at": manifest["expires_at"], "registry_row": removes_row}  # fmt: skip
        gone.append(entry)
        if check_mode:
            continue
        details = {"archived_at": manifest["archived_at"], "expires_at": manifest["expires_at"],
                   "digest": manifest["digest"], "files": sorted(manifest["files"]), "registry_row": removes_row}  # fmt: skip
        with registry.locked(agent) as tx:
            if removes_row:
                tx.delete_version(version)
            entry["audit_id"] = tx.audit(
                actor, version, "purge", "archived" if removes_row else None, None, "retention ran out", run_id, details
            )
        shutil.rmtree(manifest["directory"])
    return gone
