"""The bundle: a deterministic tar + zstd of an agent folder, with a manifest of every file's sha256.

Building the same folder twice gives the same bytes: entries sorted, one fixed mtime, owner and mode,
single-threaded zstd. Reading a bundle checks everything (sizes, names, types, duplicates, manifest)
in memory, with bounded decompression, before a single byte reaches the disk; extraction writes to a
temporary directory beside the target and renames it into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import zstandard

from .errors import BundleError, Problem
from .files import canonical_json
from .policy import Policy, agent_files, check, load_policy
from .spec import AgentSpec, load_agent

FORMAT = "chenu.agents/bundle/v1"
MANIFEST = "MANIFEST.json"
DEFAULT_LEVEL = 19
FIXED_MTIME = 0
FILE_MODE = 0o644


@dataclass(frozen=True)
class Limits:
    """What a reader accepts. Defaults match the shipped policy's limits, plus room for the manifest."""

    max_compressed_bytes: int = 32 * 1024 * 1024
    max_total_bytes: int = 17 * 1024 * 1024
    max_file_bytes: int = 1024 * 1024 + 256 * 1024
    max_files: int = 501
    max_path_length: int = 200


@dataclass(frozen=True)
class BuildResult:
    agent: str
    version: str
    digest: str
    raw_size: int
    compressed_size: int
    files: int
    data: bytes = field(repr=False)

    @property
    def ratio(self) -> float:
        """Compressed size over raw size (lower is better)."""
        return self.compressed_size / self.raw_size if self.raw_size else 1.0

    @property
    def saving(self) -> float:
        return 1.0 - self.ratio

    def summary(self) -> dict:
        return {
            "agent": self.agent,
            "version": self.version,
            "digest": self.digest,
            "raw_size": self.raw_size,
            "compressed_size": self.compressed_size,
            "compression_ratio": round(self.ratio, 4),
            "saving": round(self.saving, 4),
            "files": self.files,
        }


@dataclass(frozen=True)
class Bundle:
    manifest: dict
    files: dict[str, bytes]

    @property
    def agent(self) -> str:
        return self.manifest["agent"]

    @property
    def version(self) -> str:
        return self.manifest["version"]


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = FILE_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack(spec: AgentSpec, level: int = DEFAULT_LEVEL) -> BuildResult:
    """Bundle bytes of an already checked agent folder."""
    if not 1 <= level <= 22:
        raise BundleError(f"compression level {level} is out of range", [Problem("(argument)", "level", "1..22")])
    root = spec.root
    contents: dict[str, bytes] = {}
    for path in agent_files(root):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            raise BundleError(
                f"{root}: {MANIFEST} is reserved", [Problem(rel, "(file)", "no file named MANIFEST.json at the top")]
            )
        contents[rel] = path.read_bytes()
    manifest = {
        "format": FORMAT,
        "agent": spec.id,
        "version": spec.version,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in contents.items()
        },
    }
    entries = [(MANIFEST, canonical_json(manifest)), *sorted(contents.items())]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    raw_bytes = raw.getvalue()
    compressed = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True).compress(raw_bytes)
    return BuildResult(
        agent=spec.id,
        version=spec.version,
        digest=digest_bytes(compressed),
        raw_size=sum(len(data) for _name, data in entries),
        compressed_size=len(compressed),
        files=len(contents),
        data=compressed,
    )


def build(
    source: str | Path,
    *,
    level: int = DEFAULT_LEVEL,
    policy: Policy | None = None,
) -> BuildResult:
    """Check an agent folder (schema, then policy) and return its bundle in memory."""
    spec = load_agent(source)
    check(spec, policy or load_policy())
    return pack(spec, level)


def _check_name(name: str, limits: Limits) -> str | None:
    """Why a member name is refused, or None."""
    if not name or "\x00" in name or "\\" in name:
        return "a plain relative path"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "a relative path (absolute paths are refused)"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a normalised path without '..', '.' or empty parts (path traversal is refused)"
    if len(name) > limits.max_path_length:
        return f"a path of at most {limits.max_path_length} characters"
    return None


def _decompress(data: bytes, limits: Limits, where: str) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(io.BytesIO(data))
        out = io.BytesIO()
        while chunk := reader.read(1 << 20):
            out.write(chunk)
            if out.tell() > limits.max_total_bytes + 1024 * 1024:
                raise BundleError(
                    f"{where}: decompressed size exceeds the limit",
                    [Problem(where, "(content)", f"at most {limits.max_total_bytes} bytes once decompressed")],
                )
        return out.getvalue()
    except zstandard.ZstdError as exc:
        raise BundleError(
            f"{where} is not a zstd stream", [Problem(where, "(content)", f"zstd data ({exc})")]
        ) from None


def read_bytes(data: bytes, where: str = "bundle", limits: Limits | None = None) -> Bundle:
    """Check a bundle completely in memory and return its manifest and files; nothing touches the disk."""
    limits = limits or Limits()
    if len(data) > limits.max_compressed_bytes:
        raise BundleError(
            f"{where} is too large", [Problem(where, "(size)", f"at most {limits.max_compressed_bytes} bytes")]
        )
    raw = _decompress(data, limits, where)
    problems: list[Problem] = []
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > limits.max_files:
                raise BundleError(
                    f"{where} holds too many entries",
                    [Problem(where, "(entries)", f"at most {limits.max_files} entries (got {len(members)})")],
                )
            for m in members:
                why = _check_name(m.name, limits)
                if why:
                    problems.append(Problem(where, m.name, why, rule="name"))
                    continue
                if not m.isreg():
                    kind = (
                        "link"
                        if (m.issym() or m.islnk())
                        else "device or special file"
                        if (m.ischr() or m.isblk() or m.isfifo())
                        else "directory or other entry"
                    )
                    problems.append(Problem(where, m.name, f"a regular file (got a {kind})", rule="type"))
                    continue
                if m.name in files:
                    problems.append(Problem(where, m.name, "a unique entry name (duplicate)", rule="duplicate"))
                    continue
                if m.size > limits.max_file_bytes:
                    problems.append(
                        Problem(where, m.name, f"at most {limits.max_file_bytes} bytes (got {m.size})", rule="size")
                    )
                    continue
                total += m.size
                fh = tar.extractfile(m)
                files[m.name] = fh.read() if fh else b""
    except tarfile.TarError as exc:
        raise BundleError(
            f"{where} is not a valid tar stream", [Problem(where, "(content)", f"a tar archive ({exc})")]
        ) from None
    if total > limits.max_total_bytes:
        problems.append(
            Problem(where, "(content)", f"at most {limits.max_total_bytes} bytes in all (got {total})", rule="size")
        )
    if problems:
        raise BundleError(f"{where} is refused", problems)
    return Bundle(manifest=_check_manifest(files, where), files={k: v for k, v in files.items() if k != MANIFEST})


def _check_manifest(files: dict[str, bytes], where: str) -> dict:
    if MANIFEST not in files:
        raise BundleError(f"{where} has no manifest", [Problem(where, MANIFEST, "a manifest entry")])
    try:
        manifest = json.loads(files[MANIFEST])
        listed = manifest["files"]
        manifest["agent"], manifest["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{where}: manifest is malformed", [Problem(where, MANIFEST, f"valid manifest JSON ({exc})")]
        ) from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: unknown format", [Problem(where, f"{MANIFEST}.format", FORMAT)])
    problems = []
    present = set(files) - {MANIFEST}
    for name in sorted(present - set(listed)):
        problems.append(Problem(where, name, "an entry listed in the manifest", rule="manifest"))
    for name in sorted(set(listed) - present):
        problems.append(Problem(where, name, "the entry the manifest lists (missing)", rule="manifest"))
    for name in sorted(present & set(listed)):
        if hashlib.sha256(files[name]).hexdigest() != listed[name].get("sha256"):
            problems.append(Problem(where, name, "content matching the manifest's sha256", rule="manifest"))
    if problems:
        raise BundleError(f"{where} does not match its manifest", problems)
    return manifest


def read(path: str | Path, limits: Limits | None = None) -> Bundle:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read {path}", [Problem(str(path), "(file)", f"a readable file ({exc.strerror})")]
        ) from None
    return read_bytes(data, str(path), limits)


def extract(bundle: Bundle, dest: str | Path, *, replace: bool = False) -> Path:
    """Write a checked bundle to dest atomically: a temporary sibling directory, then a rename."""
    dest = Path(dest)
    if dest.exists() and not replace:
        raise BundleError(f"{dest} already exists", [Problem(str(dest), "(dest)", "a path that does not exist yet")])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        for name, data in sorted(bundle.files.items()):
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(FILE_MODE)
        (tmp / MANIFEST).write_bytes(canonical_json(bundle.manifest))
        tmp.chmod(0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
