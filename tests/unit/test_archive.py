"""chenu_agents.archive: an archived version kept whole in the bundle store, found by its digest, purged
with an audit row once its retention ran out (a throwaway registry database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from chenu_agents import archive
from chenu_agents.files import file_digests
from chenu_agents.lifecycle import Request, apply
from chenu_agents.registry import Registry
from tests.pg import require, throwaway_database

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def registry():
    require()
    with throwaway_database("chenu_test_archive") as settings, Registry(settings) as reg:
        yield reg


def archived_version(registry, tmp_path, version="1.0.0"):
    path = tmp_path / "builds" / f"demo-{version}.tar.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"bundle {version}".encode())
    (tmp_path / "builds" / f"demo-{version}.tar.zst.sig").write_text('{"statement": {}}')
    digest = "sha256:" + file_digests(path)[1]["sha256"]
    # Registered with a path that now holds another build: the archive looks for the digest elsewhere.
    apply(registry, Request("demo", version, target="draft", digest=digest, key_id="k1", bundle=str(tmp_path / "x")))
    for action in ("validate", "approve", "deploy", "deprecate"):
        apply(registry, Request("demo", version, action=action, actor="tests"))
    return registry.version("demo", version), path


def test_archive_keeps_bundle_signature_and_trail_whole(registry, tmp_path):
    record, path = archived_version(registry, tmp_path)
    store = tmp_path / "store"
    with pytest.raises(archive.ArchiveError, match="no bundle with digest"):
        archive.archive_version(record, registry.audit("demo", "1.0.0"), store, search=[tmp_path / "elsewhere"])
    assert not (store / "demo").exists()  # nothing half-written
    checked = archive.archive_version(
        record, [], store, search=[str(tmp_path / "builds" / "*.tar.zst")], check_mode=True
    )
    assert checked["changed"] and not (store / "demo").exists()
    kept = archive.archive_version(
        record, registry.audit("demo", "1.0.0"), store, search=[str(tmp_path / "builds" / "*.tar.zst")], now=T0
    )
    directory = store / "demo" / "1.0.0"
    assert kept["changed"] and kept["directory"] == str(directory)
    assert (directory / "agent.tar.zst").read_bytes() == path.read_bytes()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["digest"] == record.digest and manifest["expires_at"] == (T0 + timedelta(days=1825)).isoformat()
    assert set(manifest["files"]) == {"agent.tar.zst", "agent.tar.zst.sig", "audit.json"}
    assert [e["action"] for e in json.loads((directory / "audit.json").read_text())][-1] == "deprecate"
    again = archive.archive_version(record, [], store, search=[str(tmp_path / "builds" / "*.tar.zst")])
    assert not again["changed"]


def test_purge_only_what_outlived_its_retention(registry, tmp_path):
    store = tmp_path / "store"
    for version, at in (("1.0.0", T0), ("1.1.0", T0 + timedelta(days=400))):
        record, _path = archived_version(registry, tmp_path, version)
        apply(registry, Request("demo", version, action="archive", actor="tests"))
        archive.archive_version(record, [], store, search=[str(tmp_path / "builds" / "*.tar.zst")], now=at)
    as_of = T0 + timedelta(days=1825, hours=1)
    assert [
        m["version"] for m in archive.purge(registry, store, actor="t", run_id="r", now=as_of, check_mode=True)
    ] == ["1.0.0"]
    assert (store / "demo" / "1.0.0").exists()
    gone = archive.purge(registry, store, actor="cron", run_id="r1", now=as_of)
    assert [(g["version"], g["registry_row"]) for g in gone] == [("1.0.0", True)]
    assert not (store / "demo" / "1.0.0").exists() and (store / "demo" / "1.1.0").exists()
    assert registry.version("demo", "1.0.0") is None and registry.version("demo", "1.1.0").state == "archived"
    row = registry.audit("demo", "1.0.0")[-1]
    assert (row.action, row.actor, row.from_state, row.to_state, row.reason) == (
        "purge",
        "cron",
        "archived",
        None,
        "retention ran out",
    )
    assert row.details["expires_at"] == (T0 + timedelta(days=1825)).isoformat()
    assert archive.purge(registry, store, actor="cron", run_id="r2", now=as_of) == []
