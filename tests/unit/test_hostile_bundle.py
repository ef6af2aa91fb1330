"""Issue 13, classes 5 and 6: bundles a lax reader would accept, or two readers would see differently.

Each is refused by `bundle.read_bytes` with a BundleError naming the entry (or the manifest field) and
what was expected, in memory, so nothing is extracted."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import zstandard

from chenu_agents import bundle
from chenu_agents.errors import BundleError


def _tar(entries: list[tuple[str, bytes]], *, trailer: bytes = b"") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue() + trailer


def _manifest(files: dict[str, bytes], **extra) -> bytes:
    body = {
        "format": bundle.FORMAT,
        "agent": "evil_agent",
        "version": "1.0.0",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
        **extra,
    }
    return json.dumps(body).encode()


def _zstd(raw: bytes, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(raw)


def _bundle(files: dict[str, bytes], *, manifest: bytes | None = None, first: bool = True, **kw) -> bytes:
    entries = list(files.items())
    m = (bundle.MANIFEST, manifest if manifest is not None else _manifest(files))
    entries = [m, *entries] if first else [*entries, m]
    return _zstd(_tar(entries, **kw))


GOOD = {"config.yaml": b"agent: {}\n", "prompts/system.md": b"hello\n"}


def test_the_helper_builds_an_acceptable_bundle():
    read = bundle.read_bytes(_bundle(GOOD), "b")
    assert read.agent == "evil_agent" and set(read.files) == set(GOOD)


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _raw_manifest(text: bytes) -> bytes:
    return _bundle(GOOD, manifest=text)


CASES = {
    # class 5: wrong shapes reach no traceback
    "files is a list": (_raw_manifest(_manifest(GOOD).replace(b'"files": {', b'"files": [{', 1)[:-1] + b"]}"), None),
    "files entry is a string": (
        _raw_manifest(
            json.dumps(
                {"format": bundle.FORMAT, "agent": "evil_agent", "version": "1.0.0", "files": {"config.yaml": "abc"}}
            ).encode()
        ),
        "files.config.yaml",
    ),
    "manifest is a list": (_raw_manifest(b"[1, 2]"), "(root)"),
    "manifest nested deeply": (_raw_manifest(b'{"files": ' + _deep(5000) + b"}"), "(document)"),
    "file and directory of one name": (
        _bundle({"config.yaml": b"x", "docs": b"file", "docs/readme.md": b"under it"}),
        "docs/readme.md",
    ),
    # class 6: parser differentials
    "duplicate manifest key": (_raw_manifest(_manifest(GOOD)[:-1] + b', "agent": "other_agent"}'), "agent"),
    "second zstd frame": (_bundle(GOOD) + _zstd(_tar([("prompts/extra.md", b"hidden")])), "(content)"),
    "trailing bytes after the frame": (_bundle(GOOD) + b"junk", "(content)"),
    "data after the tar's end": (_bundle(GOOD, trailer=b"\0" * 1024 + b"hidden data" + b"\0" * 501), "(content)"),
    "manifest not first": (_bundle(GOOD, first=False), "config.yaml"),
    "size field lies": (
        _raw_manifest(_manifest(GOOD).replace(b'"size": 10', b'"size": 99', 1)),
        "config.yaml",
    ),
    "no zstd checksum": (_zstd(_tar([(bundle.MANIFEST, _manifest(GOOD)), *GOOD.items()]), checksum=False), "(content)"),
    "names equal after NFC": (
        _bundle({"config.yaml": b"x", "docs/caf\u00e9.md": b"a", "docs/cafe\u0301.md": b"b"}),
        "docs/cafe\u0301.md",
    ),
    "names equal after case folding": (_bundle({"config.yaml": b"x", "README.md": b"a", "readme.md": b"b"}), None),
    "control character in a name": (_bundle({"config.yaml": b"x", "docs/a\x1b[2Jb.md": b"a"}), None),
    "bidi override in a name": (_bundle({"config.yaml": b"x", "docs/gpj.\u202eexe": b"a"}), None),
    "manifest agent is a path": (_raw_manifest(_manifest(GOOD, agent="../../etc")), "agent"),
    "manifest agent with a lookalike letter": (_raw_manifest(_manifest(GOOD, agent="\u0435vil_agent")), "agent"),
    "manifest version is a float": (_raw_manifest(_manifest(GOOD, version=1.2)), "version"),
    "manifest version with a newline": (_raw_manifest(_manifest(GOOD, version="1.0.0\n")), "version"),
    "manifest with an extra field": (_raw_manifest(_manifest(GOOD, note="hi")), "note"),
    "truncated stream": (_bundle(GOOD)[:-20], None),
    "empty tar": (_zstd(b"\0" * 10240), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_bundle_refused_in_memory(tmp_path, case):
    data, field = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError) as info:
        bundle.extract(bundle.read_bytes(data, "evil.tar.zst"), out / "slot")
    assert list(out.iterdir()) == []
    assert info.value.problems, str(info.value)
    if field is not None:
        fields = [p.field for p in info.value.problems]
        assert any(f == field or f.endswith(field) for f in fields), (fields, str(info.value))
    for problem in info.value.problems:
        assert "evil.tar.zst" in problem.file
        assert problem.expected


def test_declared_content_size_over_the_limit_refused_before_decompressing():
    raw = _tar([(bundle.MANIFEST, _manifest({"big": b"\0" * (3 << 20)})), ("big", b"\0" * (3 << 20))])
    data = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(raw)
    with pytest.raises(BundleError, match="declares more"):
        bundle.read_bytes(data, "b", bundle.Limits(max_total_bytes=1 << 20, max_file_bytes=4 << 20))


def test_a_real_bundle_still_reads(agent_dir):
    built = bundle.build(agent_dir)
    read = bundle.read_bytes(built.data)
    assert read.manifest["files"]["config.yaml"]["size"] == len(read.files["config.yaml"])
