"""chenu_agents.backup_tool: what runs on the database host as /usr/local/sbin/chenu-backup."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chenu_agents import backup_tool
from chenu_agents.backup_tool import BackupError

ROOT = Path(__file__).resolve().parents[2]
UTC = datetime.UTC


def shipped_modules() -> list[str]:
    """The files the backup role copies to the host (roles/backup/vars/main.yml)."""
    variables = yaml.safe_load((ROOT / "roles/backup/vars/main.yml").read_text(encoding="utf-8"))
    return variables["_backup_tool_modules"]


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The module directory as the role installs it: only the shipped files."""
    package = tmp_path / "lib" / "chenu_agents"
    package.mkdir(parents=True)
    for name in shipped_modules():
        shutil.copy(ROOT / "src/chenu_agents" / name, package / name)
    return tmp_path / "lib"


def isolated(lib: Path, *args: str, code: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Python with no site-packages (-S) and no environment (-I): the standard library and `lib` alone."""
    prelude = f"import sys; sys.path.insert(0, {str(lib)!r}); "
    program = prelude + (code or "from chenu_agents.backup_tool import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_the_shipped_files_import_with_the_standard_library_alone(installed: Path) -> None:
    done = isolated(
        installed,
        code="import json, chenu_agents.backup_tool; print(json.dumps(sorted(sys.modules)))",
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    outside = {
        name for name in loaded if name.split(".")[0] not in {*sys.stdlib_module_names, "chenu_agents", "__main__"}
    }
    assert outside == set()
    ours = {name.split(".", 1)[1] + ".py" for name in loaded if name.startswith("chenu_agents.")}
    assert ours <= set(shipped_modules())


def test_the_shipped_command_lists_every_subcommand(installed: Path) -> None:
    done = isolated(installed, "--help")
    assert done.returncode == 0, done.stderr
    for command in backup_tool.HANDLERS:
        assert command in done.stdout


def test_bad_settings_fail_with_one_json_line_naming_the_field(installed: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"stanza": "chenu", "repos": [1]}), encoding="utf-8")
    done = isolated(installed, "state", env={"CHENU_BACKUP_SETTINGS": str(settings)})
    assert done.returncode == 1 and done.stdout == ""
    error = json.loads(done.stderr)
    assert error["failed"] is True and error["command"] == "state"
    assert f"{settings}" in error["error"] and "pgbackrest_config" in error["error"]
    assert "Traceback" not in done.stderr


GOOD = {
    "stanza": "chenu",
    "pgbackrest_config": "/etc/pgbackrest.conf",
    "repos": [1, 2],
    "pg_port": 5432,
    "pg_socket_dir": "/var/run/postgresql",
    "work_dir": "/var/lib/chenu-backup",
    "manifest_databases": ["registry"],
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"pg_port": "5433"}, None),
        ({"stanza": None}, "stanza: a str, not None"),
        ({"repos": []}, "repos: at least one repository number"),
        ({"pg_port": "five"}, "pg_port: a int, not 'five'"),
        ({"pg_port": True}, "pg_port: a int, not True"),
        ({"documents_retention_days": "x"}, "documents_retention_days: a int"),
        ({"manifest_databases": "registry"}, "manifest_databases: a list"),
    ],
)
def test_settings_are_checked_field_by_field(tmp_path: Path, changes: dict, expected: str | None) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**GOOD, **changes}), encoding="utf-8")
    if expected is None:
        settings = backup_tool.load_settings(path)
        assert settings["pg_port"] == int(changes.get("pg_port", 5432))
        assert settings["user"] == "postgres" and settings["textfile_dir"].startswith("/var/lib/prometheus")
    else:
        with pytest.raises(BackupError) as caught:
            backup_tool.load_settings(path)
        assert str(path) in str(caught.value) and expected in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{", "not JSON"),
        ("[1]", "not a mapping"),
        (json.dumps({"stanza": "x"}), "pgbackrest_config: present"),
    ],
)
def test_unusable_settings_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BackupError, match=expected):
        backup_tool.load_settings(path)
    with pytest.raises(BackupError, match="cannot read"):
        backup_tool.load_settings(tmp_path / "absent.json")


ROWS = {"rows": 3, "sample_md5": "a"}


@pytest.mark.parametrize(
    ("expected", "found", "mismatches"),
    [
        ({"db": {"t": ROWS}}, {"db": {"t": ROWS}}, []),
        ({"db": {"t": ROWS}}, {"db": {}}, ["db.t: missing"]),
        ({"db": {"t": ROWS}}, {}, ["db.t: missing"]),
        (
            {"db": {"t": ROWS}},
            {"db": {"t": {"rows": 4, "sample_md5": "a"}}},
            ["db.t: expected {'rows': 3, 'sample_md5': 'a'}, found {'rows': 4, 'sample_md5': 'a'}"],
        ),
        ({"db": {}}, {"db": {"extra": ROWS}}, []),
        ({"b": {"t": ROWS}, "a": {"t": ROWS}}, {}, ["a.t: missing", "b.t: missing"]),
    ],
)
def test_compare(expected: dict, found: dict, mismatches: list[str]) -> None:
    assert backup_tool.compare(expected, found) == mismatches


@pytest.mark.parametrize(
    ("manifest", "repo", "expected"),
    [
        ({"databases": {"a": {}}, "repos": {"2": {"databases": {"b": {}}}}}, 2, {"databases": {"b": {}}}),
        ({"databases": {"a": {}}, "repos": {"2": {"databases": {"b": {}}}}}, 1, None),
        ({"databases": {"a": {}}}, 2, None),
        ({"databases": {"a": {}}}, None, None),
    ],
)
def test_a_restore_is_compared_with_its_repository_snapshot(manifest: dict, repo: int | None, expected) -> None:
    assert backup_tool.expected_for(manifest, repo) == (expected or manifest)


LOCAL = {"size": 5, "md5": "5d41402abc4b2a76b9719d911017c592"}


@pytest.mark.parametrize(
    ("remote", "same"),
    [
        (None, False),
        ({"size": 5, "etag": LOCAL["md5"]}, True),
        ({"size": 5, "etag": LOCAL["md5"], "deleted": True}, False),
        ({"size": 6, "etag": LOCAL["md5"]}, False),
        ({"size": 5, "etag": "0" * 32}, False),
        ({"size": 5, "etag": "abc-2"}, True),  # multipart: the ETag is no md5, the size decides
    ],
)
def test_matches(remote: dict | None, same: bool) -> None:
    assert backup_tool.matches(LOCAL, remote) is same


def test_digests_are_one_read_of_the_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "doc"
    path.write_bytes(data)
    assert backup_tool.digests(path) == {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
    }


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", ".", "a/.."])
def test_a_key_never_leaves_the_restore_directory(tmp_path: Path, key: str) -> None:
    with pytest.raises(BackupError, match="not a relative path inside"):
        backup_tool.inside(tmp_path, key)


def test_a_key_inside_resolves_under_the_directory(tmp_path: Path) -> None:
    assert backup_tool.inside(tmp_path, "sub/b.txt") == (tmp_path / "sub" / "b.txt").resolve()


VERSIONS = [
    {"version_id": "v2", "last_modified": "2026-11-21T12:00:00.000Z", "deleted": False},
    {"version_id": "v1", "last_modified": "2026-11-20T12:00:00.000Z", "deleted": False},
    {"version_id": "d3", "last_modified": "2026-11-22T12:00:00.000Z", "deleted": True},
]


@pytest.mark.parametrize(
    ("at", "version_id", "chosen", "error"),
    [
        ("2026-11-21T13:00:00Z", None, "v2", None),
        ("2026-11-21T12:00:00+00:00", None, "v2", None),
        ("2026-11-21T11:59:59", None, "v1", None),
        ("2026-11-21 08:00:00-05:00", None, "v2", None),
        ("2026-11-19T00:00:00Z", None, None, "no version at or before 2026-11-19T00:00:00+00:00"),
        ("2026-11-23T00:00:00Z", None, None, "k: deleted at 2026-11-22T12:00:00.000Z"),
        ("2026-11-19T00:00:00Z", "v1", "v1", None),
        ("2026-11-19T00:00:00Z", "v9", None, "no version v9 in bucket b"),
    ],
)
def test_choose_version(at: str, version_id: str | None, chosen: str | None, error: str | None) -> None:
    moment = backup_tool.parse_time(at)
    if error:
        with pytest.raises(BackupError, match=re.escape(error)):
            backup_tool.choose_version(VERSIONS, "k", "b", moment, version_id)
    else:
        assert backup_tool.choose_version(VERSIONS, "k", "b", moment, version_id)["version_id"] == chosen


def test_no_version_at_all_and_a_time_that_is_none() -> None:
    with pytest.raises(BackupError, match="k: no version in bucket b"):
        backup_tool.choose_version([], "k", "b", backup_tool.now())
    with pytest.raises(BackupError, match="not an ISO time"):
        backup_tool.parse_time("yesterday")


def test_versions_of_lists_versions_and_delete_markers() -> None:
    listed = {
        "Versions": [{"Key": "a", "VersionId": "1", "LastModified": "t", "Size": 3, "ETag": '"e"', "IsLatest": False}],
        "DeleteMarkers": [{"Key": "a", "VersionId": "2", "LastModified": "u", "IsLatest": True}],
    }
    assert backup_tool.versions_of(listed) == [
        {
            "key": "a",
            "version_id": "1",
            "last_modified": "t",
            "size": 3,
            "etag": "e",
            "latest": False,
            "deleted": False,
        },
        {
            "key": "a",
            "version_id": "2",
            "last_modified": "u",
            "size": None,
            "etag": "",
            "latest": True,
            "deleted": True,
        },
    ]
    assert backup_tool.versions_of({}) == []


@pytest.mark.parametrize(
    ("found", "result"),
    [
        ({"size": 3, "sha256": "s"}, ("restored", "")),
        ({"size": 3, "sha256": "t"}, ("mismatched", "k: expected 3 bytes sha256 s, restored 3 bytes sha256 t")),
        ({"size": 4, "sha256": "s"}, ("mismatched", "k: expected 3 bytes sha256 s, restored 4 bytes sha256 s")),
    ],
)
def test_judge_document(found: dict, result: tuple[str, str]) -> None:
    assert backup_tool.judge_document("k", {"size": 3, "sha256": "s"}, found) == result


def test_manifests_are_written_whole_with_their_mode(tmp_path: Path) -> None:
    directory = backup_tool.write_manifest({"work_dir": str(tmp_path)}, {"b": 1, "a": 2}, "x.json", "latest.json")
    assert directory == tmp_path / "manifests"
    for name in ("x.json", "latest.json"):
        assert json.loads((directory / name).read_text(encoding="utf-8")) == {"a": 2, "b": 1}
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o640
    assert sorted(p.name for p in directory.iterdir()) == ["latest.json", "x.json"]


def settings_for(tmp_path: Path) -> dict:
    return {
        **GOOD,
        "work_dir": str(tmp_path / "work"),
        "textfile_dir": str(tmp_path / "textfile"),
        "documents_bucket": "docs",
        "user": "postgres",
        "process_max": 1,
    }


def metric(path: Path, name: str, labels: str) -> float:
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", path.read_text(encoding="utf-8"), re.M)
    assert found, f"{name}{{{labels}}} missing from {path}"
    return float(found.group(1))


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], bytes]:
    """S3 versions as a dict: get_version copies from it, as the aws CLI would download them."""
    store: dict[tuple[str, str], bytes] = {}

    def get_version(settings: dict, bucket_name: str, key: str, version_id: str, out: Path) -> None:
        if (key, version_id) not in store:
            raise BackupError("aws s3api... exited 254: An error occurred (NoSuchVersion)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(store[key, version_id])

    monkeypatch.setattr(backup_tool, "get_version", get_version)
    monkeypatch.setattr(backup_tool.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "textfile").mkdir()
    return store


def documents_manifest(tmp_path: Path, documents: dict[str, bytes], name: str = "m.json") -> Path:
    path = tmp_path / name
    body = {
        "kind": "documents",
        "taken_at": "2026-11-21T12:00:00+00:00",
        "bucket": "docs",
        "documents": {
            key: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "version_id": f"v-{key}"}
            for key, data in documents.items()
        },
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_documents_drill_restores_checks_and_exports(tmp_path: Path, bucket: dict) -> None:
    docs = {"a.txt": b"alpha\n", "sub/b.txt": b"bravo\n"}
    bucket.update({(k, f"v-{k}"): v for k, v in docs.items()})
    result = backup_tool.drill_documents(settings_for(tmp_path), str(documents_manifest(tmp_path, docs)), 0, 2)
    assert result["success"] is True and "error" not in result
    assert (result["checked"], result["restored"], result["mismatched"], result["missing"]) == (2, 2, 0, 0)
    metrics = Path(result["metrics"])
    assert metrics.name == "chenu_backup_documents_restore_docs.prom"
    assert metric(metrics, "chenu_backup_documents_restore_success", 'bucket="docs"') == 1
    assert metric(metrics, "chenu_backup_documents_restore_documents", 'bucket="docs",result="restored"') == 2
    last = metric(metrics, "chenu_backup_documents_restore_last_success_timestamp_seconds", 'bucket="docs"')
    assert last == metric(metrics, "chenu_backup_documents_restore_last_run_timestamp_seconds", 'bucket="docs"')
    assert list((tmp_path / "tmp").iterdir()) == [], "the throwaway directory was left behind"


def test_a_failed_documents_drill_names_the_documents_and_keeps_the_last_good_time(
    tmp_path: Path, bucket: dict
) -> None:
    docs = {"a.txt": b"alpha\n", "c.bin": b"\0" * 10, "sub/b.txt": b"bravo\n"}
    bucket.update({(k, f"v-{k}"): v for k, v in docs.items()})
    settings = settings_for(tmp_path)
    good = backup_tool.drill_documents(settings, str(documents_manifest(tmp_path, docs)), 0, 4)
    metrics = Path(good["metrics"])
    last = metric(metrics, "chenu_backup_documents_restore_last_success_timestamp_seconds", 'bucket="docs"')
    bucket["c.bin", "v-c.bin"] = b"\1" * 10
    del bucket["sub/b.txt", "v-sub/b.txt"]
    result = backup_tool.drill_documents(settings, str(documents_manifest(tmp_path, docs)), 0, 4)
    assert result["success"] is False
    assert "(1 mismatched, 1 missing)" in result["error"]
    assert "c.bin: expected 10 bytes sha256" in result["error"]
    assert "sub/b.txt: version v-sub/b.txt not restored" in result["error"]
    assert metric(metrics, "chenu_backup_documents_restore_success", 'bucket="docs"') == 0
    assert metric(metrics, "chenu_backup_documents_restore_documents", 'bucket="docs",result="restored"') == 1
    assert metric(metrics, "chenu_backup_documents_restore_last_success_timestamp_seconds", 'bucket="docs"') == last


def test_a_documents_drill_without_a_manifest_says_what_to_run(tmp_path: Path, bucket: dict) -> None:
    result = backup_tool.drill_documents(settings_for(tmp_path), str(tmp_path / "absent.json"), 0, 1)
    assert result["success"] is False
    assert result["error"].startswith(f"No documents manifest at {tmp_path / 'absent.json'}")
    assert "chenu-backup documents" in result["error"]
    metrics = Path(result["metrics"])
    assert metric(metrics, "chenu_backup_documents_restore_success", 'bucket="docs"') == 0
    assert metric(metrics, "chenu_backup_documents_restore_last_success_timestamp_seconds", 'bucket="docs"') == 0


def test_a_database_drill_without_that_backup_fails_exports_and_cleans_up(tmp_path: Path, bucket: dict) -> None:
    manifest = tmp_path / "latest.json"
    manifest.write_text(json.dumps({"databases": {}, "backups": {"1": "20261121-120000F"}}), encoding="utf-8")
    metrics = tmp_path / "textfile" / "chenu_backup_restore_repo2.prom"
    metrics.write_text(
        'chenu_backup_restore_last_success_timestamp_seconds{stanza="chenu",repo="2"} 1700000000\n', encoding="utf-8"
    )
    result = backup_tool.drill_database(settings_for(tmp_path), 2, str(manifest), "/nonexistent", 5)
    assert result["success"] is False
    assert result["error"].startswith(f"read the manifest: {manifest}: no backup of repository 2")
    assert "backups.2: the label of that repository's backup" in result["error"]
    labels = 'stanza="chenu",repo="2"'
    assert metric(metrics, "chenu_backup_restore_success", labels) == 0
    assert metric(metrics, "chenu_backup_restore_last_success_timestamp_seconds", labels) == 1700000000
    assert metric(metrics, "chenu_backup_restore_duration_seconds", labels) >= 0
    assert list((tmp_path / "tmp").iterdir()) == [], "the scratch directory was left behind"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('m{a="1"} 12\n', 12.0),
        ('other{a="1"} 5\nm{a="1"} 1.7e9\n', 1.7e9),
        ("m 3\n", 0.0),  # no labels: not ours
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_previous_value(tmp_path: Path, text: str | None, value: float) -> None:
    path = tmp_path / "x.prom"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert backup_tool.previous_value(path, "m") == value


def test_throwaway_config_keeps_the_instance_on_its_socket_and_out_of_the_archive() -> None:
    config = backup_tool.throwaway_config(54321, "/tmp/s")
    assert "port = 54321" in config["postgresql.conf"] and "listen_addresses = ''" in config["postgresql.conf"]
    assert "unix_socket_directories = '/tmp/s'" in config["postgresql.conf"]
    assert "archive_mode = off" in config["postgresql.conf"]
    assert config["pg_hba.conf"] == "local all all peer\n"


def test_as_user_only_wraps_when_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_tool.os, "geteuid", lambda: 0)
    assert backup_tool.as_user({"user": "postgres"}, ["psql"]) == ["runuser", "-u", "postgres", "--", "psql"]
    monkeypatch.setattr(backup_tool.os, "geteuid", lambda: 105)
    assert backup_tool.as_user({"user": "postgres"}, ["psql"]) == ["psql"]


def test_run_names_the_command_and_its_error() -> None:
    with pytest.raises(BackupError, match=r"^sh -c echo boom >&2; exit 3\.\.\. exited 3: boom$"):
        backup_tool.run(["sh", "-c", "echo boom >&2; exit 3"])


@pytest.mark.parametrize(
    ("command", "fields"),
    [("state", "state_dir"), ("documents", "documents_dir, documents_bucket, s3_url"), ("config", "config_git_repo")],
)
def test_a_subcommand_refuses_settings_it_needs_unset(tmp_path: Path, command: str, fields: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    settings = backup_tool.load_settings(path)
    with pytest.raises(BackupError, match=f"^{re.escape(str(path))}: {fields} not set"):
        backup_tool.HANDLERS[command](settings, None)
