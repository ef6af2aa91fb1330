"""The bundle: a deterministic tar + zstd of an agent folder, with a manifest of every file's sha256.

Building the same folder twice gives the same bytes: entries sorted, one fixed mtime, owner and mode,
single-threaded zstd. Reading a bundle checks everything (sizes, names, types, duplicates, manifest)
in memory, with bounded decompression, before a single byte reaches the disk; extraction writes to a
temporary directory beside the target and renames it into place.

What two readers could see differently is refused rather than interpreted: one zstd frame with its
checksum and nothing after it, nothing but zeros after the tar's end, MANIFEST.json first, no two names
equal after Unicode normalisation and case folding, no name both a file and a directory, a manifest
without duplicate keys whose every sha256 and size is checked.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import zstandard

from .errors import BundleError, Problem
from .files import canonical_json
from .policy import Policy, agent_files, check, load_policy
from .safeload import Budget, check_agent_name, fold_path, has_control, load_json
from .semver import VersionError
from .semver import parse as semver_parse
from .spec import AgentSpec, load_agent

FORMAT = "chenu.agents/bundle/v1"
MANIFEST = "MANIFEST.json"
DEFAULT_LEVEL = 19
FIXED_MTIME = 0
FILE_MODE = 0o644
# Compressed bytes fed to zstd at a time: at most ~4 MiB come out of one feed, so the output bound holds.
_FEED = 128
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Limits:
    """What a reader accepts. Defaults match the shipped policy's limits, plus room for the manifest."""

    max_compressed_bytes: int = 32 * 1024 * 1024
    max_total_bytes: int = 17 * 1024 * 1024
    max_file_bytes: int = 1024 * 1024 + 256 * 1024
    max_files: int = 501
    max_path_length: int = 200
    max_manifest_bytes: int = 1024 * 1024
    max_manifest_depth: int = 8


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
    if has_control(name):
        return "a path without control, format or undecodable characters"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "a relative path (absolute paths are refused)"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a normalised path without '..', '.' or empty parts (path traversal is refused)"
    if len(name) > limits.max_path_length:
        return f"a path of at most {limits.max_path_length} characters"
    return None


def _decompress(data: bytes, limits: Limits, where: str) -> bytes:
    """One zstd frame, with its checksum, nothing after it, decompressed within the size bound."""

    def refuse(expected: str) -> BundleError:
        return BundleError(f"{where} is refused: {expected}", [Problem(where, "(content)", expected, rule="zstd")])

    bound = limits.max_total_bytes + 1024 * 1024
    out = io.BytesIO()
    try:
        params = zstandard.get_frame_parameters(data)
        if not params.has_checksum:
            raise refuse("a zstd frame with its content checksum")
        declared = params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR)
        if declared and params.content_size > bound:
            raise refuse(f"at most {limits.max_total_bytes} bytes once decompressed (the frame declares more)")
        dobj = zstandard.ZstdDecompressor(max_window_size=1 << 27).decompressobj()
        pos = 0
        while pos < len(data) and not dobj.eof:
            out.write(dobj.decompress(data[pos : pos + _FEED]))
            pos += _FEED
            if out.tell() > bound:
                raise BundleError(
                    f"{where}: decompressed size exceeds the limit",
                    [Problem(where, "(content)", f"at most {limits.max_total_bytes} bytes once decompressed")],
                )
        trailing = dobj.unused_data if dobj.eof else b""
    except zstandard.ZstdError as exc:
        raise BundleError(
            f"{where} is not a zstd stream", [Problem(where, "(content)", f"zstd data ({exc})")]
        ) from None
    if not dobj.eof:
        raise refuse("a complete zstd frame (the stream is truncated)")
    if trailing or pos < len(data):
        raise refuse("one zstd frame and nothing after it (a second frame or trailing bytes follow)")
    return out.getvalue()


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
    folded: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            end = tar.offset
            if len(members) > limits.max_files:
                raise BundleError(
                    f"{where} holds too many entries",
                    [Problem(where, "(entries)", f"at most {limits.max_files} entries (got {len(members)})")],
                )
            if members and members[0].name != MANIFEST and any(m.name == MANIFEST for m in members):
                problems.append(Problem(where, members[0].name, f"{MANIFEST} as the first entry", rule="manifest"))
            for m in members:
                why = _check_name(m.name, limits)
                if why:
                    problems.append(Problem(where, repr(m.name)[1:-1][:120], why, rule="name"))
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
                key = fold_path(m.name)
                if key in folded:
                    problems.append(
                        Problem(
                            where,
                            m.name,
                            f"a name distinct from {folded[key]!r} after Unicode normalisation and case folding",
                            rule="duplicate",
                        )
                    )
                    continue
                if m.size > limits.max_file_bytes:
                    problems.append(
                        Problem(where, m.name, f"at most {limits.max_file_bytes} bytes (got {m.size})", rule="size")
                    )
                    continue
                total += m.size
                if total > limits.max_total_bytes:
                    break
                folded[key] = m.name
                fh = tar.extractfile(m)
                files[m.name] = fh.read() if fh else b""
    except tarfile.TarError as exc:
        raise BundleError(
            f"{where} is not a valid tar stream", [Problem(where, "(content)", f"a tar archive ({exc})")]
        ) from None
    except (ValueError, UnicodeError, OverflowError, EOFError) as exc:
        raise BundleError(
            f"{where} is not a valid tar stream", [Problem(where, "(content)", f"a tar archive ({exc})")]
        ) from None
    if raw[end:].strip(b"\0"):
        problems.append(Problem(where, "(content)", "nothing but zeros after the tar's end", rule="trailing"))
    if total > limits.max_total_bytes:
        problems.append(
            Problem(where, "(content)", f"at most {limits.max_total_bytes} bytes in all (got {total})", rule="size")
        )
    for name in sorted(folded.values()):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = fold_path("/".join(parts[:i]))
            if parent in folded:
                problems.append(
                    Problem(where, name, f"no entry under {folded[parent]!r}, which is a file", rule="file_and_dir")
                )
                break
    if problems:
        raise BundleError(f"{where} is refused", problems)
    return Bundle(
        manifest=_check_manifest(files, where, limits), files={k: v for k, v in files.items() if k != MANIFEST}
    )


def _check_manifest(files: dict[str, bytes], where: str, limits: Limits | None = None) -> dict:
    limits = limits or Limits()
    if MANIFEST not in files:
        raise BundleError(f"{where} has no manifest", [Problem(where, MANIFEST, "a manifest entry")])
    budget = Budget(max_bytes=limits.max_manifest_bytes, max_depth=limits.max_manifest_depth)
    try:
        manifest = load_json(files[MANIFEST], f"{where}: {MANIFEST}", error=BundleError, budget=budget)
    except BundleError as exc:
        raise BundleError(f"{where}: manifest is malformed", exc.problems) from None

    def malformed(field: str, expected: str) -> BundleError:
        return BundleError(f"{where}: manifest is malformed", [Problem(f"{where}: {MANIFEST}", field, expected)])

    if not isinstance(manifest, dict):
        raise malformed("(root)", "a JSON object with format, agent, version and files")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: unknown format", [Problem(where, f"{MANIFEST}.format", FORMAT)])
    extra = sorted(set(manifest) - {"format", "agent", "version", "files"})
    if extra:
        raise malformed(extra[0], "only format, agent, version and files")
    check_agent_name(
        manifest.get("agent"),
        file=f"{where}: {MANIFEST}",
        field="agent",
        error=BundleError,
        message=f"{where}: manifest is malformed",
    )
    version = manifest.get("version")
    try:
        if not isinstance(version, str) or version != version.strip():
            raise VersionError("not a string")
        semver_parse(version)
    except VersionError:
        got = repr(version[:40]) if isinstance(version, str) else f"{type(version).__name__} {version!r:.40}"
        raise malformed("version", f"a semantic version string such as 1.2.0 (got {got})") from None
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise malformed("files", "an object of path -> {sha256, size}")
    for name, entry in listed.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "size"}
            or not isinstance(entry["sha256"], str)
            or not _SHA256_HEX.match(entry["sha256"])
            or not isinstance(entry["size"], int)
            or isinstance(entry["size"], bool)
            or entry["size"] < 0
        ):
            raise malformed(f"files.{name[:120]}", "{sha256: 64 lowercase hex digits, size: a whole number of bytes}")
    problems = []
    present = set(files) - {MANIFEST}
    for name in sorted(present - set(listed)):
        problems.append(Problem(where, name, "an entry listed in the manifest", rule="manifest"))
    for name in sorted(set(listed) - present):
        problems.append(Problem(where, name[:120], "the entry the manifest lists (missing)", rule="manifest"))
    for name in sorted(present & set(listed)):
        if len(files[name]) != listed[name]["size"]:
            problems.append(
                Problem(
                    where,
                    name,
                    f"the manifest's size, {listed[name]['size']} bytes (got {len(files[name])})",
                    rule="manifest",
                )
            )
        if hashlib.sha256(files[name]).hexdigest() != listed[name]["sha256"]:
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
