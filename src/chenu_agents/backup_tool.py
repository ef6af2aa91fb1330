"""chenu-backup: the backups of seed 000 §7.1 and their restore drills, run by cron and by the playbooks.

  chenu-backup database --type full|diff|incr [--manifest-database D]
                                                pgBackRest backup to every repository, then a manifest
  chenu-backup manifest [--host H --port P] [--compare M [--repo N]]
                                                row counts and sample checksums of the databases (JSON),
                                                and what differs from manifest M
  chenu-backup state                            registry dump and Redis RDB snapshot; prune old ones
  chenu-backup documents                        documents directory synced to S3, then a manifest
                                                (key, size, sha256, S3 version id of every document)
  chenu-backup documents-verify --manifest M --target DIR [--sample N]
                                                the manifest's versions downloaded into DIR, sha256
                                                compared; restored, mismatched and missing documents
  chenu-backup documents-fetch --key K [--at T | --version-id V] --out F
                                                one document as it was at time T (or that version)
  chenu-backup config                           configuration committed to a bare git repository
  chenu-backup drill-database [--repo N] [--manifest M]
                                                restore drill: the backup restored into a throwaway
                                                instance, compared with its manifest, result exported
  chenu-backup drill-documents [--manifest M] [--sample N]
                                                restore drill of the documents, result exported

Settings come from /etc/chenu-backup/settings.json (written by the chenu.agents.backup role). Each
command prints one JSON object: what it did, sizes and durations.

The chenu.agents.backup role copies this module with the package's __init__, errors and files to the
database hosts, where the package's dependencies are not installed: it imports only those and the
standard library (tests/unit/test_backup_tool.py keeps it so).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ChenuError, Problem
from .files import atomic_write, file_digests

SETTINGS = "/etc/chenu-backup/settings.json"
SAMPLE_ROWS = 100
# Table names come from the catalog, quoted by PostgreSQL itself (identifier, then as a literal).
TABLES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       quote_literal(quote_ident(n.nspname) || '.' || quote_ident(c.relname))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition
ORDER BY 1
"""
TABLE_SAMPLE = (
    "SELECT {label}, (SELECT count(*) FROM {table}),"
    " (SELECT md5(coalesce(string_agg(s.r, E'\\n' ORDER BY s.r), ''))"
    " FROM (SELECT x::text AS r FROM {table} x ORDER BY x::text LIMIT {limit}) s)"
)
# Each setting and its type; the optional ones with their default.
REQUIRED = {
    "stanza": str,
    "pgbackrest_config": str,
    "repos": list,
    "pg_port": int,
    "pg_socket_dir": str,
    "work_dir": str,
    "manifest_databases": list,
}
OPTIONAL = {
    "user": ("postgres", str),
    "process_max": (1, int),
    "textfile_dir": ("/var/lib/prometheus/node-exporter", str),
    "state_dir": ("", str),
    "state_databases": ([], list),
    "state_retention_days": (7, int),
    "redis_host": ("127.0.0.1", str),
    "redis_port": (6379, int),
    "redis_password_file": ("", str),
    "s3_url": ("", str),
    "s3_region": ("us-east-1", str),
    "s3_ca_file": ("", str),
    "s3_credentials_file": ("", str),
    "documents_dir": ("", str),
    "documents_bucket": ("", str),
    "documents_retention_days": (90, int),
    "config_paths": ([], list),
    "config_git_repo": ("", str),
}


class BackupError(ChenuError):
    """A backup, restore or drill that could not be done, or settings that are not what is expected."""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_settings(path: Path) -> dict:
    """The settings file, every required field present and every field of its type."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BackupError(f"{path}: cannot read the settings: {error.strerror}") from None
    except ValueError as error:
        raise BackupError(f"{path}: not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BackupError(f"{path}: the settings are not a mapping", [Problem(str(path), "(top)", "a JSON object")])
    problems = []
    settings = {name: spec[0] for name, spec in OPTIONAL.items()}
    expected = {**REQUIRED, **{name: spec[1] for name, spec in OPTIONAL.items()}}
    for name, kind in expected.items():
        if name not in data:
            if name in REQUIRED:
                problems.append(Problem(str(path), name, f"present ({kind.__name__})"))
            continue
        value = data[name]
        if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(Problem(str(path), name, f"a {kind.__name__}, not {value!r}"))
            continue
        settings[name] = value
    if "repos" in settings and not settings["repos"]:
        problems.append(Problem(str(path), "repos", "at least one repository number"))
    if problems:
        raise BackupError(f"{path}: settings not as expected", problems)
    return {**data, **settings, "_file": str(path)}


def need(settings: dict, *fields: str) -> None:
    """The settings a subcommand cannot do without (optional for the others) are set."""
    missing = [field for field in fields if not settings.get(field)]
    if missing:
        where = str(settings.get("_file", "the settings"))
        raise BackupError(
            f"{where}: {', '.join(missing)} not set",
            [Problem(where, field, "set for this subcommand") for field in missing],
        )


def run(argv: list[str], env: dict | None = None, cwd: str | None = None, timeout: float | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackupError(f"{' '.join(argv[:3])}... did not end within {timeout} s") from None
    if done.returncode != 0:
        raise BackupError(f"{' '.join(argv[:3])}... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def as_user(settings: dict, argv: list[str]) -> list[str]:
    """argv run as the cluster's owner (runuser needs no sudo) when we are root, else as it is."""
    return ["runuser", "-u", settings["user"], "--", *argv] if os.geteuid() == 0 else argv


def psql(settings: dict, dbname: str, sql: str, host: str | None = None, port: int | None = None) -> list[list[str]]:
    argv = [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "--tuples-only",
        "--no-align",
        "--field-separator=\t",
        "--set=ON_ERROR_STOP=1",
        f"host={host or settings['pg_socket_dir']} port={port or settings['pg_port']} dbname={dbname} user=postgres",
        "--command",
        sql,
    ]
    return [line.split("\t") for line in run(as_user(settings, argv), cwd="/").splitlines() if line]


def manifest(settings: dict, host: str | None = None, port: int | None = None) -> dict:
    """Per database and table: row count and the md5 of a sample, read in one snapshot per database."""
    databases = {}
    for dbname in settings["manifest_databases"]:
        tables = psql(settings, dbname, TABLES, host, port)
        if not tables:
            databases[dbname] = {}
            continue
        selects = [TABLE_SAMPLE.format(table=t, label=label, limit=SAMPLE_ROWS) for t, label in tables]
        sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; " + " UNION ALL ".join(selects) + "; COMMIT;"
        rows = psql(settings, dbname, sql, host, port)
        databases[dbname] = {name: {"rows": int(count), "sample_md5": digest} for name, count, digest in rows}
    return {"taken_at": now().isoformat(timespec="seconds"), "databases": databases}


def pgbackrest(settings: dict, *args: str) -> str:
    argv = ["pgbackrest", f"--config={settings['pgbackrest_config']}", f"--stanza={settings['stanza']}", *args]
    return run(as_user(settings, argv), cwd="/")


def info(settings: dict) -> dict:
    stanzas = json.loads(pgbackrest(settings, "--output=json", "info"))
    return stanzas[0] if stanzas else {}


def latest_backups(settings: dict) -> dict:
    """{repo key: the newest backup's label, type, sizes} from `pgbackrest info`."""
    found = {}
    for backup in info(settings).get("backup", []):
        found[backup["database"]["repo-key"]] = {
            "label": backup["label"],
            "type": backup["type"],
            "stop": backup["timestamp"]["stop"],
            "database_bytes": backup["info"]["size"],
            "delta_bytes": backup["info"]["delta"],
            "repo_bytes": backup["info"]["repository"]["size"],
            "repo_delta_bytes": backup["info"]["repository"]["delta"],
        }
    return found


def cmd_database(settings: dict, args: argparse.Namespace) -> dict:
    """Back up to each repository, reading the manifest right after each backup ends.

    A restore stops at its backup's end; writes after it are not in it. Each repository's snapshot is
    read at once, not after the next repository's backup (which may take a minute): the first
    repository's is the manifest's `databases`, the others' are under `repos`.
    """
    databases = settings["manifest_databases"] + [
        d for d in args.manifest_database if d not in settings["manifest_databases"]
    ]
    repos, snapshots = [], {}
    for repo in settings["repos"]:
        started = time.monotonic()
        pgbackrest(settings, f"--repo={repo}", f"--type={args.type}", "backup")
        repos.append({"repo": repo, "seconds": round(time.monotonic() - started, 2)})
        snapshots[str(repo)] = manifest({**settings, "manifest_databases": databases})
    latest = latest_backups(settings)
    for entry in repos:
        entry.update(latest.get(entry["repo"], {}))
    first = str(repos[0]["repo"])
    snapshot = {**snapshots[first], "repos": {repo: taken for repo, taken in snapshots.items() if repo != first}}
    snapshot["backups"] = {str(entry["repo"]): entry["label"] for entry in repos}
    directory = write_manifest(settings, snapshot, f"{repos[0]['label']}.json", "latest.json")
    tables = sum(len(t) for t in snapshot["databases"].values())
    return {
        "command": "database",
        "type": args.type,
        "repos": repos,
        "manifest": str(directory / "latest.json"),
        "tables": tables,
    }


def write_manifest(settings: dict, content: dict, *names: str) -> Path:
    """The manifest under each name in the manifests directory (atomically); returns that directory."""
    directory = Path(settings["work_dir"]) / "manifests"
    body = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
    for name in names:
        atomic_write(directory / name, body, 0o640)
    return directory


def prune(directory: Path, days: int, pattern: str = "*") -> list[str]:
    cutoff = time.time() - days * 86400
    removed = []
    for path in sorted(directory.glob(pattern)):
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink()
            removed.append(path.name)
    return removed


def cmd_state(settings: dict, args: argparse.Namespace) -> dict:
    need(settings, "state_dir", "redis_host")
    directory = Path(settings["state_dir"])
    directory.mkdir(parents=True, exist_ok=True)
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    files = []
    for dbname in settings["state_databases"]:
        target = directory / f"{dbname}-{stamp}.dump"
        started = time.monotonic()
        run(
            [
                "pg_dump",
                "--format=custom",
                f"--file={target}",
                f"host={settings['pg_socket_dir']} port={settings['pg_port']} dbname={dbname} user=postgres",
            ]
        )
        files.append(
            {"file": str(target), "bytes": target.stat().st_size, "seconds": round(time.monotonic() - started, 2)}
        )
    target = directory / f"redis-{stamp}.rdb"
    env = {**os.environ}
    password_file = Path(settings["redis_password_file"])
    if settings["redis_password_file"] and password_file.exists():
        env["REDISCLI_AUTH"] = password_file.read_text(encoding="utf-8").strip()
    started = time.monotonic()
    run(["redis-cli", "-h", settings["redis_host"], "-p", str(settings["redis_port"]), "--rdb", str(target)], env=env)
    files.append({"file": str(target), "bytes": target.stat().st_size, "seconds": round(time.monotonic() - started, 2)})
    for entry in files:
        os.chmod(entry["file"], 0o600)
    removed = prune(directory, settings["state_retention_days"])
    return {"command": "state", "files": files, "pruned": removed}


def s3_env(settings: dict) -> dict:
    env = {
        **os.environ,
        "AWS_SHARED_CREDENTIALS_FILE": settings["s3_credentials_file"],
        "AWS_DEFAULT_REGION": settings["s3_region"],
        "AWS_CONFIG_FILE": "/dev/null",
    }
    if settings.get("s3_ca_file"):
        env["AWS_CA_BUNDLE"] = settings["s3_ca_file"]
    return env


def aws(settings: dict, *args: str) -> str:
    return run(["aws", "--endpoint-url", settings["s3_url"], "--output", "json", *args], env=s3_env(settings))


def digests(path: Path) -> dict:
    """Size, sha256 (what the manifest records) and md5 (what a single-part S3 ETag is) in one read."""
    size, hexes = file_digests(path, ("sha256", "md5"))
    return {"size": size, **hexes}


def object_versions(settings: dict, bucket: str, prefix: str = "") -> list[dict]:
    """Every version and delete marker under prefix: {key, version_id, last_modified, size, etag, latest, deleted}."""
    listed = json.loads(aws(settings, "s3api", "list-object-versions", "--bucket", bucket, "--prefix", prefix) or "{}")
    return versions_of(listed)


def versions_of(listed: dict) -> list[dict]:
    """list-object-versions' answer, versions and delete markers alike."""
    found = []
    for kind in ("Versions", "DeleteMarkers"):
        for entry in listed.get(kind) or []:
            found.append(
                {
                    "key": entry["Key"],
                    "version_id": entry["VersionId"],
                    "last_modified": entry["LastModified"],
                    "size": entry.get("Size"),
                    "etag": entry.get("ETag", "").strip('"'),
                    "latest": entry["IsLatest"],
                    "deleted": kind == "DeleteMarkers",
                }
            )
    return found


def matches(local: dict, remote: dict | None) -> bool:
    """The stored object holds these bytes: same size, and same md5 where the ETag is one (not multipart)."""
    if remote is None or remote.get("deleted") or remote.get("size") != local["size"]:
        return False
    etag = remote.get("etag", "")
    return "-" in etag or etag == local["md5"]


def cmd_documents(settings: dict, args: argparse.Namespace) -> dict:
    """Sync, then record what the bucket holds for each document: the version id of exactly the bytes hashed.

    `aws s3 sync` decides by size and mtime; a document whose current version does not hold the bytes
    hashed here (changed during the sync, or an older mtime with the same size) is uploaded again with
    put-object, which returns its version id. One still not matching changed while we read it: it is
    listed as unconfirmed and the next run records it.
    """
    need(settings, "documents_dir", "documents_bucket", "s3_url")
    source = Path(settings["documents_dir"])
    bucket = settings["documents_bucket"]
    started = time.monotonic()
    taken_at = now()
    local = {p.relative_to(source).as_posix(): digests(p) for p in sorted(source.rglob("*")) if p.is_file()}
    output = aws(settings, "s3", "sync", "--no-progress", "--sse", "AES256", f"{source}/", f"s3://{bucket}/")
    uploaded = [line for line in output.splitlines() if line.startswith("upload:")]
    current = {v["key"]: v for v in object_versions(settings, bucket) if v["latest"]}
    documents, unconfirmed, reuploaded = {}, {}, []
    for key, numbers in local.items():
        remote = current.get(key)
        if not matches(numbers, remote):
            put = json.loads(
                aws(settings, "s3api", "put-object", "--bucket", bucket, "--key", key,
                    "--body", str(source / key), "--server-side-encryption", "AES256")
            )  # fmt: skip
            reuploaded.append(key)
            remote = {"version_id": put["VersionId"], "etag": put["ETag"].strip('"'), "size": numbers["size"]}
            if not matches(numbers, remote):
                unconfirmed[key] = "changed while it was backed up"
                continue
        documents[key] = {"size": numbers["size"], "sha256": numbers["sha256"], "version_id": remote["version_id"]}
    manifest_body = {
        "kind": "documents",
        "taken_at": taken_at.isoformat(timespec="seconds"),
        "source": str(source),
        "bucket": bucket,
        "documents": documents,
        "unconfirmed": unconfirmed,
    }
    stamp = taken_at.strftime("%Y%m%dT%H%M%SZ")
    directory = write_manifest(settings, manifest_body, f"documents-{stamp}.json", "documents-latest.json")
    # A manifest older than the bucket's retention names versions the lifecycle rule has expired.
    pruned = prune(directory, settings["documents_retention_days"], "documents-2*.json")
    return {
        "command": "documents",
        "source": str(source),
        "bucket": bucket,
        "uploaded": len(uploaded) + len(reuploaded),
        "reuploaded": reuploaded,
        "documents": len(documents),
        "unconfirmed": sorted(unconfirmed),
        "source_bytes": sum(n["size"] for n in local.values()),
        "manifest": str(directory / "documents-latest.json"),
        "manifests_pruned": pruned,
        "seconds": round(time.monotonic() - started, 2),
    }


def inside(target: Path, key: str) -> Path:
    path = (target / key).resolve()
    if not path.is_relative_to(target.resolve()) or path == target.resolve():
        raise BackupError(f"{key}: not a relative path inside {target}")
    return path


def get_version(settings: dict, bucket: str, key: str, version_id: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    aws(settings, "s3api", "get-object", "--bucket", bucket, "--key", key, "--version-id", version_id, str(out))


def read_json(path: str | Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise BackupError(f"{path}: cannot read the {what}: {error.strerror}") from None
    except ValueError as error:
        raise BackupError(f"{path}: the {what} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BackupError(f"{path}: the {what} is not a JSON object")
    return data


def documents_manifest(path: str | Path) -> dict:
    expected = read_json(path, "documents manifest")
    if expected.get("kind") != "documents":
        raise BackupError(f"{path} is not a documents manifest")
    for field in ("bucket", "documents", "taken_at"):
        if field not in expected:
            raise BackupError(f"{path}: field {field} missing", [Problem(str(path), field, "present")])
    return expected


def verify_documents(settings: dict, manifest_path: str, target: Path, sample: int, workers: int) -> dict:
    """Download the manifest's version of each document into an empty directory and compare its sha256."""
    expected = documents_manifest(manifest_path)
    if any(target.iterdir()):
        raise BackupError(f"{target} is not empty")
    documents = expected["documents"]
    keys = sorted(documents)
    if 0 < sample < len(keys):
        keys = sorted(random.sample(keys, sample))
    started = time.monotonic()

    def restore(key: str) -> tuple[str, str, str]:
        wanted = documents[key]
        try:
            out = inside(target, key)
            get_version(settings, expected["bucket"], key, wanted["version_id"], out)
        except BackupError as error:
            return key, "missing", f"{key}: version {wanted['version_id']} not restored: {str(error)[-300:]}"
        found = digests(out)
        return (key, *judge_document(key, wanted, found))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(restore, keys))
    by_result = {
        name: [entry[0] for entry in results if entry[1] == name] for name in ("restored", "mismatched", "missing")
    }
    return {
        "command": "documents-verify",
        "manifest": manifest_path,
        "bucket": expected["bucket"],
        "taken_at": expected["taken_at"],
        "documents": len(documents),
        "checked": len(keys),
        "restored": len(by_result["restored"]),
        "mismatched": len(by_result["mismatched"]),
        "missing": len(by_result["missing"]),
        "problems": [entry[2] for entry in results if entry[2]],
        "restored_bytes": sum(documents[key]["size"] for key in by_result["restored"]),
        "seconds": round(time.monotonic() - started, 2),
    }


def judge_document(key: str, wanted: dict, found: dict) -> tuple[str, str]:
    """'restored' when size and sha256 are the manifest's, else 'mismatched' and what differs."""
    if (found["size"], found["sha256"]) == (wanted["size"], wanted["sha256"]):
        return "restored", ""
    return "mismatched", (
        f"{key}: expected {wanted['size']} bytes sha256 {wanted['sha256']},"
        f" restored {found['size']} bytes sha256 {found['sha256']}"
    )


def cmd_documents_verify(settings: dict, args: argparse.Namespace) -> dict:
    return verify_documents(settings, args.manifest, Path(args.target), args.sample, args.workers)


def parse_time(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(f"{text!r}: not an ISO time (for example 2026-11-21T16:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def choose_version(
    versions: list[dict], key: str, bucket: str, at: datetime.datetime, version_id: str | None = None
) -> dict:
    """The version given, or the newest stored at or before `at`; a document deleted then is refused."""
    if not versions:
        raise BackupError(f"{key}: no version in bucket {bucket}")
    versions = sorted(versions, key=lambda v: parse_time(v["last_modified"]))
    if version_id:
        chosen = next((v for v in versions if v["version_id"] == version_id), None)
        if chosen is None:
            raise BackupError(f"{key}: no version {version_id} in bucket {bucket}")
    else:
        before = [v for v in versions if parse_time(v["last_modified"]) <= at]
        if not before:
            raise BackupError(
                f"{key}: no version at or before {at.isoformat()} (first: {versions[0]['last_modified']})"
            )
        chosen = before[-1]
    if chosen["deleted"]:
        raise BackupError(f"{key}: deleted at {chosen['last_modified']} (version {chosen['version_id']}), absent then")
    return chosen


def cmd_documents_fetch(settings: dict, args: argparse.Namespace) -> dict:
    """One document as it was at a time (the newest version stored at or before it), or a given version."""
    bucket = args.bucket or settings["documents_bucket"]
    versions = [v for v in object_versions(settings, bucket, args.key) if v["key"] == args.key]
    at = parse_time(args.at) if args.at else now()
    chosen = choose_version(versions, args.key, bucket, at, args.version_id)
    out = Path(args.out)
    get_version(settings, bucket, args.key, chosen["version_id"], out)
    found = digests(out)
    return {
        "command": "documents-fetch",
        "bucket": bucket,
        "key": args.key,
        "at": args.at,
        "version_id": chosen["version_id"],
        "last_modified": chosen["last_modified"],
        "size": found["size"],
        "sha256": found["sha256"],
        "out": str(out),
        "versions": len(versions),
    }


def cmd_config(settings: dict, args: argparse.Namespace) -> dict:
    need(settings, "config_git_repo")
    repo = Path(settings["config_git_repo"])
    if not (repo / "HEAD").exists():
        run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo)])
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        git = ["git", "-C", work, "-c", "user.name=chenu-backup", "-c", "user.email=chenu-backup@localhost"]
        run(["git", "clone", "--quiet", str(repo), work])
        for child in Path(work).iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        for source in settings["config_paths"]:
            source = Path(source).resolve()
            target = Path(work) / source.name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns(".cache", "*.retry", "__pycache__"))
            elif source.is_file():
                shutil.copy2(source, target)
        run([*git, "add", "--all"])
        if not run([*git, "status", "--porcelain"]).strip():
            return {
                "command": "config",
                "repository": str(repo),
                "committed": False,
                "seconds": round(time.monotonic() - started, 2),
            }
        run([*git, "commit", "--quiet", "-m", f"Configuration at {now().isoformat(timespec='seconds')}"])
        run([*git, "push", "--quiet", "origin", "HEAD:main"])
        commit = run([*git, "rev-parse", "HEAD"]).strip()
    return {
        "command": "config",
        "repository": str(repo),
        "committed": True,
        "commit": commit,
        "seconds": round(time.monotonic() - started, 2),
    }


def compare(expected: dict, found: dict) -> list[str]:
    """What differs between two manifests' databases, one line per table."""
    mismatches = []
    for dbname, tables in sorted(expected.items()):
        restored = found.get(dbname, {})
        for table, numbers in sorted(tables.items()):
            got = restored.get(table)
            if got is None:
                mismatches.append(f"{dbname}.{table}: missing")
            elif got != numbers:
                mismatches.append(f"{dbname}.{table}: expected {numbers}, found {got}")
    return mismatches


def expected_for(expected: dict, repo: int | None) -> dict:
    """The snapshot to compare a restore from `repo` with: the one read right after that repository's backup."""
    if repo and str(repo) in expected.get("repos", {}):
        return expected["repos"][str(repo)]
    return expected


def compare_with(settings: dict, manifest_path: str, repo: int | None, host: str | None, port: int | None) -> dict:
    expected = expected_for(read_json(manifest_path, "manifest"), repo)
    if not isinstance(expected.get("databases"), dict):
        raise BackupError(
            f"{manifest_path}: no databases to compare with",
            [Problem(manifest_path, "databases", "a mapping of database to tables")],
        )
    settings = {**settings, "manifest_databases": sorted(expected["databases"])}
    found = manifest(settings, host, port)
    found["compared_with"] = manifest_path
    found["tables"] = sum(len(t) for t in expected["databases"].values())
    found["rows"] = sum(n["rows"] for t in expected["databases"].values() for n in t.values())
    found["mismatches"] = compare(expected["databases"], found["databases"])
    return found


def cmd_manifest(settings: dict, args: argparse.Namespace) -> dict:
    if not args.compare:
        return manifest(settings, args.host, args.port)
    return compare_with(settings, args.compare, args.repo, args.host, args.port)


# The restore drills (seed 000 §7.1: restore to a sandbox, check the data), each exporting its result to
# node exporter's textfile collector. A failed drill keeps the last good time of the file it replaces.


def previous_value(path: Path, name: str) -> float:
    """A metric's value in an earlier textfile, 0 when there is none."""
    with contextlib.suppress(OSError):
        found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.eE+-]+)$", path.read_text(encoding="utf-8"), re.M)
        if found:
            return float(found.group(1))
    return 0.0


def textfile(metrics: list[tuple[str, str, list[tuple[str, float | int | str]]]]) -> str:
    """Prometheus text format: (name, help, [(labels, value)]) for each gauge."""
    lines = []
    for name, help_text, samples in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def drill_metrics(
    prefix: str, what: str, labels: str, success: bool, seconds: float, ended: float, last: float
) -> list:
    return [
        (
            f"{prefix}_success",
            f"1 if the last {what} succeeded, 0 otherwise.",
            [(labels, 1 if success else 0)],
        ),
        (f"{prefix}_duration_seconds", f"Duration of the last {what}.", [(labels, f"{seconds:.1f}")]),
        (f"{prefix}_last_run_timestamp_seconds", f"When the last {what} ended.", [(labels, f"{ended:.0f}")]),
        (
            f"{prefix}_last_success_timestamp_seconds",
            f"When the last good {what} ended.",
            [(labels, f"{(ended if success else last):.0f}")],
        ),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def throwaway_config(port: int, socket_dir: str) -> dict[str, str]:
    """postgresql.conf, pg_hba.conf and pg_ident.conf of the throwaway instance.

    Debian keeps them in /etc: the restored data directory gets its own, which keep the instance on
    its socket alone, small, and out of the WAL archive.
    """
    return {
        "postgresql.conf": (
            f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{socket_dir}'\n"
            "shared_buffers = 32MB\narchive_mode = off\narchive_command = ''\nlogging_collector = off\n"
        ),
        "pg_hba.conf": "local all all peer\n",
        "pg_ident.conf": "",
    }


def own(settings: dict, path: Path, mode: int) -> None:
    path.mkdir(mode=mode, exist_ok=True)
    path.chmod(mode)
    if os.geteuid() == 0:
        shutil.chown(path, settings["user"], settings["user"])


def log_tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


def wait_recovery_end(settings: dict, socket_dir: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = psql(settings, "postgres", "SELECT pg_is_in_recovery()", socket_dir, port)
        if state and state[0][0] == "f":
            return
        if time.monotonic() > deadline:
            raise BackupError(f"the throwaway instance was still in recovery after {timeout:.0f} s")
        time.sleep(1)


def drill_database(settings: dict, repo: int, manifest_path: str, pg_bin_dir: str, start_timeout: int) -> dict:
    """Restore the backup the manifest names into a throwaway instance, compare, stop and remove it.

    The instance has a temporary data directory, a free port, a private socket directory and WAL
    archiving off; it is stopped and removed whatever happened.
    """
    started = time.monotonic()
    metrics_file = Path(settings["textfile_dir"]) / f"chenu_backup_restore_repo{repo}.prom"
    last_success = previous_value(metrics_file, "chenu_backup_restore_last_success_timestamp_seconds")
    result: dict = {"command": "drill-database", "repo": repo, "manifest": manifest_path, "success": False}
    scratch = Path(tempfile.mkdtemp(prefix="chenu-restore-"))
    data, sockets, logs = scratch / "data", scratch / "socket", scratch / "log"
    pg_ctl = f"{pg_bin_dir}/pg_ctl"
    step = "read the manifest"
    try:
        backups = read_json(manifest_path, "manifest").get("backups") or {}
        if str(repo) not in backups:
            raise BackupError(
                f"{manifest_path}: no backup of repository {repo}",
                [Problem(manifest_path, f"backups.{repo}", "the label of that repository's backup")],
            )
        result["backup"] = label = backups[str(repo)]
        scratch.chmod(0o755)
        for path in (data, sockets, logs):
            own(settings, path, 0o700)
        step = "restore the backup into the scratch data directory"
        begun = time.monotonic()
        pgbackrest(
            settings,
            f"--repo={repo}",
            f"--set={label}",
            f"--pg1-path={data}",
            "--type=immediate",
            "--target-action=promote",
            "--archive-mode=off",
            f"--process-max={settings['process_max']}",
            "restore",
        )
        result["restore_seconds"] = round(time.monotonic() - begun, 2)
        port = free_port()
        for name, body in throwaway_config(port, str(sockets)).items():
            atomic_write(data / name, body.encode(), 0o600)
            if os.geteuid() == 0:
                shutil.chown(data / name, settings["user"], settings["user"])
        step = "start the throwaway instance"
        run(
            as_user(settings, [pg_ctl, "-D", str(data), "-l", str(logs / "postgresql.log"), "-w",
                               "-t", str(start_timeout), "start"]),
            cwd="/",
        )  # fmt: skip
        step = "wait for recovery to end (promoted at the backup's consistent point)"
        wait_recovery_end(settings, str(sockets), port, 120)
        step = "compare the restored databases with the manifest"
        compared = compare_with(settings, manifest_path, repo, str(sockets), port)
        result.update(tables=compared["tables"], rows=compared["rows"], mismatches=compared["mismatches"])
        if compared["mismatches"]:
            raise BackupError(f"The restore of {label} differs from its manifest: {compared['mismatches']}")
        result["success"] = True
    except (ChenuError, OSError) as error:
        log = log_tail(logs / "postgresql.log") if step.startswith(("start", "wait")) else ""
        result["error"] = f"{step}: {error}" + (f"\n{log}" if log else "")
    finally:
        with contextlib.suppress(ChenuError, OSError):
            if (data / "postmaster.pid").exists():
                run(as_user(settings, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), cwd="/")
        shutil.rmtree(scratch, ignore_errors=True)
    ended = time.time()
    result["seconds"] = round(time.monotonic() - started, 2)
    labels = f'stanza="{settings["stanza"]}",repo="{repo}"'
    metrics = drill_metrics(
        "chenu_backup_restore", "restore drill", labels, result["success"], result["seconds"], ended, last_success
    )
    atomic_write(metrics_file, textfile(metrics).encode(), 0o644)
    result["metrics"] = str(metrics_file)
    return result


def drill_documents(settings: dict, manifest_path: str, sample: int, workers: int) -> dict:
    """Restore the documents manifest's versions into a throwaway directory and compare each sha256."""
    started = time.monotonic()
    bucket = settings["documents_bucket"]
    result: dict = {"command": "drill-documents", "manifest": manifest_path, "bucket": bucket, "success": False}
    with contextlib.suppress(ChenuError):
        result["bucket"] = bucket = documents_manifest(manifest_path)["bucket"]
    metrics_file = Path(settings["textfile_dir"]) / f"chenu_backup_documents_restore_{bucket}.prom"
    last_success = previous_value(metrics_file, "chenu_backup_documents_restore_last_success_timestamp_seconds")
    scratch = Path(tempfile.mkdtemp(prefix="chenu-restore-documents-"))
    try:
        if not Path(manifest_path).exists():
            raise BackupError(f"No documents manifest at {manifest_path}: run `chenu-backup documents` first.")
        result.update(verify_documents(settings, manifest_path, scratch, sample, workers))
        result["command"] = "drill-documents"
        if result["mismatched"] or result["missing"] or result["restored"] != result["checked"]:
            raise BackupError(
                f"The documents backed up at {result['taken_at']} did not all restore"
                f" ({result['mismatched']} mismatched, {result['missing']} missing): {result['problems']}"
            )
        result["success"] = True
    except (ChenuError, OSError) as error:
        result["error"] = str(error)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ended = time.time()
    result["seconds"] = round(time.monotonic() - started, 2)
    labels = f'bucket="{bucket}"'
    metrics = drill_metrics(
        "chenu_backup_documents_restore",
        "documents restore drill",
        labels,
        result["success"],
        result["seconds"],
        ended,
        last_success,
    )
    counts = [(f'{labels},result="{name}"', result.get(name, 0)) for name in ("restored", "mismatched", "missing")]
    metrics.insert(2, ("chenu_backup_documents_restore_documents", "Documents of the last drill by result.", counts))
    atomic_write(metrics_file, textfile(metrics).encode(), 0o644)
    result["metrics"] = str(metrics_file)
    return result


def cmd_drill_database(settings: dict, args: argparse.Namespace) -> dict:
    manifest_path = args.manifest or str(Path(settings["work_dir"]) / "manifests" / "latest.json")
    return drill_database(settings, args.repo, manifest_path, args.pg_bin_dir, args.start_timeout)


def cmd_drill_documents(settings: dict, args: argparse.Namespace) -> dict:
    manifest_path = args.manifest or str(Path(settings["work_dir"]) / "manifests" / "documents-latest.json")
    return drill_documents(settings, manifest_path, args.sample, args.workers)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chenu-backup", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    database = sub.add_parser("database", help="pgBackRest backup to every repository, then a manifest")
    database.add_argument("--type", choices=["full", "diff", "incr"], default="incr")
    database.add_argument("--manifest-database", action="append", default=[], help="also record this database")
    manifest_parser = sub.add_parser("manifest", help="row counts and sample checksums")
    manifest_parser.add_argument("--host")
    manifest_parser.add_argument("--port", type=int)
    manifest_parser.add_argument("--compare", help="a manifest to compare with (its databases are read)")
    manifest_parser.add_argument("--repo", type=int, help="compare with what was read after that backup")
    sub.add_parser("state", help="registry dump and Redis RDB")
    sub.add_parser("documents", help="documents to S3, then a manifest")
    verify = sub.add_parser("documents-verify", help="restore a documents manifest's versions and compare")
    verify.add_argument("--manifest", required=True)
    verify.add_argument("--target", required=True, help="an empty directory")
    verify.add_argument("--sample", type=int, default=0, help="restore this many documents at random (0: all)")
    verify.add_argument("--workers", type=int, default=4)
    fetch = sub.add_parser("documents-fetch", help="one document at a time or version")
    fetch.add_argument("--key", required=True)
    fetch.add_argument("--bucket", help="default: the documents bucket")
    when = fetch.add_mutually_exclusive_group()
    when.add_argument("--at", help="ISO time (UTC unless given); default: now")
    when.add_argument("--version-id")
    fetch.add_argument("--out", required=True)
    sub.add_parser("config", help="configuration to git")
    drill = sub.add_parser("drill-database", help="restore drill of the latest database backup, result exported")
    drill.add_argument("--repo", type=int, default=1)
    drill.add_argument("--manifest", help="default: the work directory's manifests/latest.json")
    drill.add_argument("--pg-bin-dir", default="/usr/lib/postgresql/15/bin")
    drill.add_argument("--start-timeout", type=int, default=300)
    drills = sub.add_parser("drill-documents", help="restore drill of the documents backup, result exported")
    drills.add_argument("--manifest", help="default: the work directory's manifests/documents-latest.json")
    drills.add_argument("--sample", type=int, default=0, help="restore this many documents at random (0: all)")
    drills.add_argument("--workers", type=int, default=4)
    return top


HANDLERS = {
    "database": cmd_database,
    "manifest": cmd_manifest,
    "state": cmd_state,
    "documents": cmd_documents,
    "documents-verify": cmd_documents_verify,
    "documents-fetch": cmd_documents_fetch,
    "config": cmd_config,
    "drill-database": cmd_drill_database,
    "drill-documents": cmd_drill_documents,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()
    try:
        settings = load_settings(Path(os.environ.get("CHENU_BACKUP_SETTINGS", SETTINGS)))
        result = HANDLERS[args.command](settings, args)
    except (ChenuError, OSError, ValueError, KeyError) as error:
        print(json.dumps({"command": args.command, "failed": True, "error": str(error)}), file=sys.stderr)
        return 1
    result.setdefault("total_seconds", round(time.monotonic() - started, 2))
    print(json.dumps(result, sort_keys=True))
    # A drill prints its result either way (the playbook reports it), and says by its status whether it passed.
    return 0 if result.get("success", True) else 1


if __name__ == "__main__":
    sys.exit(main())
