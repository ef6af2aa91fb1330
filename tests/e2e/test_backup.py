"""Backups end to end on the local inventory: backup.yml then backup_verify.yml.

A throwaway database (chenu_test_backup) with known rows is recorded in the backup's manifest; the
restore drill must find the same counts and samples in the restored instance, export a good result,
and fail (exporting 0, keeping the last good time) against a manifest that does not match. A second
run of the role changes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
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
