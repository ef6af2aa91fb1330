"""pgBackRest against pg_basebackup: backup and restore of the same generated database, same run.

    sudo .venv/bin/python bench/backup.py [--scale 130] [--process-max 2] [--compress-type lz4]
    sudo .venv/bin/python bench/backup.py --scale 400      # about 6 GB

A throwaway PostgreSQL 15 cluster (initdb in a scratch directory, a free port, its own socket) is
filled by `pgbench -i -s SCALE` (scale 130 is about 2 GB), with WAL archived by pgBackRest into its
own stanza and repository in the scratch directory, so the host's clusters and backups are not
touched. Then, each timed: pgBackRest full backup, pgBackRest restore into an empty directory,
pg_basebackup (plain format, WAL streamed, fast checkpoint), and its "restore", a copy of that
directory into place. Throughput is the database size over the time. Everything is removed at the
end, even on failure. Runs as root (the cluster runs as postgres through runuser).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
STANZA = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*argv: str, timeout: int = 3600) -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def timed(*argv: str) -> float:
    started = time.monotonic()
    as_postgres(*argv)
    return time.monotonic() - started


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def run(args: argparse.Namespace, work: Path) -> dict:
    data, sock, repo = work / "data", work / "socket", work / "repo"
    port = free_port()
    config = work / "pgbackrest.conf"
    for path in (data, sock, repo, work / "log", work / "spool"):
        path.mkdir(mode=0o700)
        shutil.chown(path, "postgres", "postgres")
    config.write_text(
        "[global]\n"
        f"repo1-path={repo}\nlog-path={work / 'log'}\nspool-path={work / 'spool'}\n"
        f"process-max={args.process_max}\ncompress-type={args.compress_type}\ncompress-level=1\n"
        "start-fast=y\nlog-level-console=warn\n\n"
        f"[{STANZA}]\npg1-path={data}\npg1-port={port}\npg1-socket-path={sock}\n",
        encoding="utf-8",
    )
    as_postgres(
        str(BIN / "initdb"), "-D", str(data), "--auth=peer", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8"
    )
    archive = f"pgbackrest --config={config} --stanza={STANZA} archive-push %p"
    with (data / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\n"
            f"archive_mode = on\narchive_command = '{archive}'\nmax_wal_size = '4GB'\n"
            "shared_buffers = '256MB'\ncheckpoint_timeout = '30min'\nlogging_collector = off\n"
        )
    as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "log" / "postgresql.log"), "-w", "start")
    conninfo = f"host={sock} port={port} dbname=postgres"
    started = time.monotonic()
    as_postgres("pgbench", "-i", "-q", "-I", "dtGvp", "-s", str(args.scale), conninfo)
    generate = time.monotonic() - started
    size = int(as_postgres("psql", conninfo, "-Atc", "SELECT sum(pg_database_size(datname)) FROM pg_database"))
    cluster = du(data)
    as_postgres("pgbackrest", f"--config={config}", f"--stanza={STANZA}", "stanza-create")

    results = {}
    seconds = timed("pgbackrest", f"--config={config}", f"--stanza={STANZA}", "--type=full", "backup")
    results["pgbackrest_backup"] = {"seconds": seconds, "stored_bytes": du(repo / "backup")}
    target = work / "restore-pgbackrest"
    target.mkdir(mode=0o700)
    shutil.chown(target, "postgres", "postgres")
    seconds = timed("pgbackrest", f"--config={config}", f"--stanza={STANZA}", f"--pg1-path={target}", "restore")
    results["pgbackrest_restore"] = {"seconds": seconds, "restored_bytes": du(target)}
    shutil.rmtree(target)

    base = work / "basebackup"
    seconds = timed("pg_basebackup", "-d", conninfo, "-D", str(base), "-Fp", "-X", "stream", "-c", "fast", "--no-sync")
    results["pg_basebackup_backup"] = {"seconds": seconds, "stored_bytes": du(base)}
    target = work / "restore-basebackup"
    seconds = timed("cp", "-a", str(base), str(target))
    results["pg_basebackup_restore"] = {"seconds": seconds, "restored_bytes": du(target)}

    mb = size / 1e6
    for entry in results.values():
        entry["seconds"] = round(entry["seconds"], 2)
        entry["mb_per_s"] = round(mb / entry["seconds"], 1)
    ratios = {
        "backup": round(results["pgbackrest_backup"]["mb_per_s"] / results["pg_basebackup_backup"]["mb_per_s"], 2),
        "restore": round(results["pgbackrest_restore"]["mb_per_s"] / results["pg_basebackup_restore"]["mb_per_s"], 2),
        "stored_size": round(
            results["pgbackrest_backup"]["stored_bytes"] / results["pg_basebackup_backup"]["stored_bytes"], 3
        ),
    }
    return {
        "scale": args.scale,
        "database_bytes": size,
        "cluster_bytes": cluster,
        "generate_seconds": round(generate, 1),
        "process_max": args.process_max,
        "compress_type": args.compress_type,
        "results": results,
        "pgbackrest_over_pg_basebackup": ratios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=130, help="pgbench scale (130 is about 2 GB)")
    parser.add_argument("--process-max", type=int, default=2)
    parser.add_argument("--compress-type", default="lz4", choices=["none", "lz4", "zst", "gz"])
    parser.add_argument("--work-dir", default="/var/tmp", help="where the scratch directory goes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chenu-bench-backup-", dir=args.work_dir))
    shutil.chown(work, "postgres", "postgres")
    try:
        report = run(args, work)
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(work / "data"), "-m", "immediate", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    r = report["results"]
    print(f"\ndatabase {report['database_bytes'] / 1e9:.2f} GB (pgbench scale {report['scale']})", file=sys.stderr)
    for name, entry in r.items():
        print(f"  {name:24} {entry['seconds']:8.1f} s {entry['mb_per_s']:8.1f} MB/s", file=sys.stderr)
    ratios = report["pgbackrest_over_pg_basebackup"]
    print(
        f"  pgBackRest / pg_basebackup throughput: backup {ratios['backup']}x, restore {ratios['restore']}x",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
