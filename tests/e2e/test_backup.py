"""Backups end to end on the local inventory: backup.yml then backup_verify.yml.

A throwaway database (chenu_test_backup) with known rows is recorded in the backup's manifest; the
restore drill must find the same counts and samples in the restored instance, export a good result,
and fail (exporting 0, keeping the last good time) against a manifest that does not match. A second
run of the role changes nothing.

Documents: a few small documents in a private source directory are backed up to a private versioned
bucket of the S3 stand-in (a settings file of the test's own, so the shared bucket and manifests are
untouched); then one is overwritten and another deleted, in the source and in the bucket. The drill
restores the versions of the first manifest all the same, fails naming the document when the
manifest is tampered with, and documents_restore.yml brings back one document as it was before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.ansible_run import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("this_host")]

DATABASE = "chenu_test_backup"
MANIFEST = Path("/var/lib/chenu-backup/manifests/latest.json")
METRICS = Path("/var/lib/prometheus/node-exporter/chenu_backup_restore_repo1.prom")
CONFIG = "/etc/pgbackrest.conf"
STANZA = "chenu"


def psql(sql: str, dbname: str = "postgres") -> str:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "--no-psqlrc", "--quiet", "--tuples-only", "--no-align",
         "--dbname", dbname, "--set=ON_ERROR_STOP=1", "--command", sql],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return done.stdout.strip()


def metric(name: str) -> float:
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", METRICS.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{name} missing from {METRICS}"
    return float(match.group(1))


def scratch_dirs() -> set[str]:
    return {str(p) for p in Path("/tmp").glob("chenu-restore-*")}


@pytest.fixture(scope="module")
def test_database():
    psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    psql(f"CREATE DATABASE {DATABASE}")
    psql(
        "CREATE TABLE agents (id serial PRIMARY KEY, name text NOT NULL, state text NOT NULL);"
        "INSERT INTO agents (name, state) SELECT 'agent-' || g, 'active' FROM generate_series(1, 500) g;"
        "CREATE TABLE audit (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), what text);"
        "INSERT INTO audit (what) SELECT md5(g::text) FROM generate_series(1, 2000) g;",
        DATABASE,
    )
    yield DATABASE
    psql(f"DROP DATABASE IF EXISTS {DATABASE}")


@pytest.fixture(scope="module")
def backed_up(test_database):
    run = run_playbook(
        "playbooks/backup.yml",
        "-e",
        json.dumps({"backup_type": "full", "backup_manifest_extra_databases": [test_database]}),
    )
    assert run.returncode == 0, run.tail()
    return run


def test_backup_reaches_both_repositories_with_a_manifest(backed_up, test_database):
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["databases"][test_database]["public.agents"]["rows"] == 500
    assert manifest["databases"][test_database]["public.audit"]["rows"] == 2000
    assert "registry" in manifest["databases"]
    info = json.loads(
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "pgbackrest",
                f"--config={CONFIG}",
                f"--stanza={STANZA}",
                "--output=json",
                "info",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    )[0]
    labels = {(b["database"]["repo-key"], b["label"]) for b in info["backup"]}
    assert (1, manifest["backups"]["1"]) in labels
    assert (2, manifest["backups"]["2"]) in labels
    assert {r["key"]: r["status"]["code"] for r in info["repo"]} == {1: 0, 2: 0}
    assert "sizes and durations" not in backed_up.output  # the report is data, not prose
    assert re.search(r"repo_bytes: \d+", backed_up.output), backed_up.tail()


def test_restore_drill_verifies_and_exports_its_result(backed_up, test_database):
    before = scratch_dirs()
    started = time.time()
    run = run_playbook("playbooks/backup_verify.yml")
    assert run.returncode == 0, run.tail()
    assert re.search(r"checked: (\d+) tables, (\d+) rows", run.output), run.tail()
    tables, rows = map(int, re.search(r"checked: (\d+) tables, (\d+) rows", run.output).groups())
    assert tables >= 2 and rows >= 2500
    assert metric("chenu_backup_restore_success") == 1
    assert metric("chenu_backup_restore_last_success_timestamp_seconds") >= started - 1
    assert 0 < metric("chenu_backup_restore_duration_seconds") < run.seconds + 1
    assert scratch_dirs() == before, "the throwaway instance's directory was left behind"


def test_restore_drill_fails_on_a_manifest_that_does_not_match(backed_up, test_database):
    good = metric("chenu_backup_restore_last_success_timestamp_seconds")
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    manifest["databases"][test_database]["public.audit"]["rows"] += 1
    # Beside the real manifests: the drill reads it as postgres.
    tampered = MANIFEST.with_name("e2e-tampered.json")
    tampered.write_text(json.dumps(manifest), encoding="utf-8")
    tampered.chmod(0o644)
    before = scratch_dirs()
    run = run_playbook("playbooks/backup_verify.yml", "-e", f"backup_verify_manifest={tampered}")
    tampered.unlink()
    assert run.returncode != 0
    assert f"{test_database}.public.audit: expected" in run.output, run.tail()
    assert metric("chenu_backup_restore_success") == 0
    assert metric("chenu_backup_restore_last_success_timestamp_seconds") == good
    assert scratch_dirs() == before, "the throwaway instance's directory was left behind"
    # Leave the host with a good result again.
    assert run_playbook("playbooks/backup_verify.yml").returncode == 0


def test_the_role_changes_nothing_the_second_time(backed_up):
    run = run_playbook("playbooks/backup.yml", "--tags", "backup")
    assert run.returncode == 0, run.tail()
    assert run.total("changed") == 0, run.tail()
    crontab = Path("/etc/cron.d/chenu-backup").read_text(encoding="utf-8")
    for job in (
        "database --type full",
        "database --type diff",
        "database --type incr",
        " state",
        " documents",
        " config",
    ):
        assert job in crontab


# Documents: a private bucket on the S3 stand-in, a private source and manifest directory.
SCRIPT = "/usr/local/sbin/chenu-backup"
SETTINGS = Path("/etc/chenu-backup/settings.json")
DOCUMENTS_BUCKET = "chenu-test-s-documents"
DOCUMENTS_METRICS = Path(f"/var/lib/prometheus/node-exporter/chenu_backup_documents_restore_{DOCUMENTS_BUCKET}.prom")
S3_CA = "/etc/chenu-backup/s3/ca.pem"


def s3():
    import boto3

    return boto3.client(
        "s3",
        endpoint_url="https://127.0.0.1:9555",
        aws_access_key_id="chenu-test-s",
        aws_secret_access_key="chenu-test-s-secret",
        region_name="us-east-1",
        verify=S3_CA,
    )


def empty_and_remove(client, bucket: str) -> None:
    listed = client.list_object_versions(Bucket=bucket)
    objects = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])
    ]
    if objects:
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects})
    client.delete_bucket(Bucket=bucket)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Documents:
    """The test's documents: source directory, settings and manifests of its own."""

    def __init__(self, base: Path):
        self.base = base
        self.source = base / "source"
        self.work = base / "work"
        self.settings = base / "settings.json"
        settings = json.loads(SETTINGS.read_text(encoding="utf-8"))
        settings.update(documents_dir=str(self.source), documents_bucket=DOCUMENTS_BUCKET, work_dir=str(self.work))
        self.settings.write_text(json.dumps(settings), encoding="utf-8")
        self.source.mkdir()

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [SCRIPT, *args],
            env={**os.environ, "CHENU_BACKUP_SETTINGS": str(self.settings)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def backup(self) -> dict:
        done = self.run("documents")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def write(self, key: str, data: bytes) -> None:
        (self.source / key).parent.mkdir(parents=True, exist_ok=True)
        (self.source / key).write_bytes(data)


def documents_metric(name: str, result: str | None = None) -> float:
    labels = f'bucket="{DOCUMENTS_BUCKET}"' + (f',result="{result}"' if result else "")
    text = DOCUMENTS_METRICS.read_text(encoding="utf-8")
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} missing from {DOCUMENTS_METRICS}"
    return float(match.group(1))


ORIGINAL = {"a.txt": b"alpha, first version\n", "sub/b.txt": b"bravo\n", "c.bin": os.urandom(2048)}


@pytest.fixture(scope="module")
def documents():
    """Backed up once (manifest `first`), then a.txt overwritten and sub/b.txt deleted, in both places."""
    installed = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, check=False).stdout
    if "documents-fetch" not in installed:  # a stack provisioned before the documents manifest
        run = run_playbook("playbooks/backup.yml", "--tags", "backup")
        assert run.returncode == 0, run.tail()
    client = s3()
    client.create_bucket(Bucket=DOCUMENTS_BUCKET)
    client.put_bucket_versioning(Bucket=DOCUMENTS_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    base = Path(tempfile.mkdtemp(prefix="chenu-test-s-documents-"))
    base.chmod(0o755)
    try:
        docs = Documents(base)
        for key, data in ORIGINAL.items():
            docs.write(key, data)
            # Written a minute before the backup: sync compares mtimes with S3's whole seconds, and would
            # upload again a file written in the second of its first upload.
            os.utime(docs.source / key, (time.time() - 60, time.time() - 60))
        docs.first_report = docs.backup()
        docs.first = docs.work / "manifests" / "documents-first.json"
        shutil.copy(docs.work / "manifests" / "documents-latest.json", docs.first)
        time.sleep(1.1)  # S3 times have a resolution of a second
        docs.between = datetime.now(UTC).isoformat(timespec="seconds")
        time.sleep(1.1)
        docs.write("a.txt", b"alpha, second version, longer\n")
        (docs.source / "sub" / "b.txt").unlink()
        docs.second_report = docs.backup()
        client.delete_object(Bucket=DOCUMENTS_BUCKET, Key="sub/b.txt")
        yield docs
    finally:
        empty_and_remove(client, DOCUMENTS_BUCKET)
        shutil.rmtree(base, ignore_errors=True)
        DOCUMENTS_METRICS.unlink(missing_ok=True)


def test_documents_backup_records_each_version_in_a_manifest(documents):
    first = json.loads(documents.first.read_text(encoding="utf-8"))
    assert documents.first_report["documents"] == 3 and documents.first_report["unconfirmed"] == []
    assert set(first["documents"]) == set(ORIGINAL)
    for key, data in ORIGINAL.items():
        entry = first["documents"][key]
        assert (entry["size"], entry["sha256"]) == (len(data), sha256(data))
        stored = s3().get_object(Bucket=DOCUMENTS_BUCKET, Key=key, VersionId=entry["version_id"])
        assert stored["Body"].read() == data
    second = json.loads((documents.work / "manifests" / "documents-latest.json").read_text(encoding="utf-8"))
    assert set(second["documents"]) == {"a.txt", "c.bin"}
    assert second["documents"]["a.txt"]["version_id"] != first["documents"]["a.txt"]["version_id"]
    assert second["documents"]["c.bin"] == first["documents"]["c.bin"]


def test_documents_drill_restores_the_backed_up_versions(documents):
    before = scratch_dirs()
    run = run_playbook(
        "playbooks/backup_verify.yml",
        "--tags",
        "documents",
        "-e",
        f"backup_verify_documents_manifest={documents.first}",
    )
    assert run.returncode == 0, run.tail()
    assert "restored: '3'" in run.output or "restored: 3" in run.output, run.tail()
    assert documents_metric("chenu_backup_documents_restore_success") == 1
    assert documents_metric("chenu_backup_documents_restore_documents", "restored") == 3
    assert documents_metric("chenu_backup_documents_restore_documents", "mismatched") == 0
    assert documents_metric("chenu_backup_documents_restore_documents", "missing") == 0
    assert 0 < documents_metric("chenu_backup_documents_restore_duration_seconds") < run.seconds + 1
    assert "Verify that the latest backup restores" in run.output  # the database play was skipped by tag
    assert "Restore the backup into the scratch data directory" not in run.output
    assert scratch_dirs() == before, "the throwaway directory was left behind"


def test_documents_drill_fails_naming_the_documents(documents):
    good = documents_metric("chenu_backup_documents_restore_last_success_timestamp_seconds")
    manifest = json.loads(documents.first.read_text(encoding="utf-8"))
    manifest["documents"]["c.bin"]["sha256"] = "0" * 64
    manifest["documents"]["sub/b.txt"]["version_id"] = "no-such-version"
    tampered = documents.base / "tampered.json"
    tampered.write_text(json.dumps(manifest), encoding="utf-8")
    run = run_playbook(
        "playbooks/backup_verify.yml", "--tags", "documents", "-e", f"backup_verify_documents_manifest={tampered}"
    )
    assert run.returncode != 0
    assert "1 mismatched, 1 missing" in run.output, run.tail()
    assert "c.bin: expected 2048 bytes sha256 000" in run.output, run.tail()
    assert "sub/b.txt: version no-such-version not restored" in run.output, run.tail()
    assert documents_metric("chenu_backup_documents_restore_success") == 0
    assert documents_metric("chenu_backup_documents_restore_documents", "restored") == 1
    assert documents_metric("chenu_backup_documents_restore_last_success_timestamp_seconds") == good


def test_one_document_restored_as_it_was(documents):
    dest = documents.base / "restored" / "a.txt"
    restore = ["playbooks/documents_restore.yml", "-e", f"documents_bucket={DOCUMENTS_BUCKET}",
               "-e", "document=a.txt", "-e", f"dest={dest}"]  # fmt: skip
    # Check mode changes nothing.
    run = run_playbook(*restore, "-e", f"at={documents.between}", "--check", "--diff")
    assert run.returncode == 0 and not dest.exists(), run.tail()
    run = run_playbook(*restore, "-e", f"at={documents.between}")
    assert run.returncode == 0, run.tail()
    assert dest.read_bytes() == ORIGINAL["a.txt"]
    # The current version differs: refused without force, shown by --check --diff, then written.
    run = run_playbook(*restore)
    assert run.returncode != 0 and "force=true" in run.output, run.tail()
    run = run_playbook(*restore, "-e", "force=true", "--check", "--diff")
    assert run.returncode == 0 and "+alpha, second version, longer" in run.output, run.tail()
    assert dest.read_bytes() == ORIGINAL["a.txt"]
    run = run_playbook(*restore, "-e", "force=true")
    assert run.returncode == 0, run.tail()
    assert dest.read_bytes() == b"alpha, second version, longer\n"
    # A deleted document comes back from before its deletion, and is refused after it.
    out = documents.base / "b.txt"
    done = documents.run("documents-fetch", "--key", "sub/b.txt", "--at", documents.between, "--out", str(out))
    assert done.returncode == 0 and out.read_bytes() == ORIGINAL["sub/b.txt"], done.stderr
    done = documents.run("documents-fetch", "--key", "sub/b.txt", "--out", str(out))
    assert done.returncode != 0 and "sub/b.txt: deleted at" in done.stderr
