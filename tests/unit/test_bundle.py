from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard

from chenu_agents import bundle
from chenu_agents.errors import BundleError, PolicyViolation, SpecError
from chenu_agents.files import write_if_changed
from tests.conftest import write_agent


def test_same_source_same_bytes_whatever_the_mtimes_and_modes(tmp_path, agent_dir):
    first = bundle.build(agent_dir)
    copy = tmp_path / "copy" / "sample_agent"
    shutil.copytree(agent_dir, copy)
    for i, path in enumerate(sorted(copy.rglob("*"))):
        os.utime(path, (1_000_000 + i, 2_000_000 + i))
        if path.is_file():
            path.chmod(0o600 if i % 2 else 0o755)
    (copy / "tools" / "handlers" / "__pycache__").mkdir()
    (copy / "tools" / "handlers" / "__pycache__" / "area.cpython-311.pyc").write_bytes(b"junk")
    second = bundle.build(copy)
    assert first.data == second.data
    assert first.digest == second.digest == bundle.digest_bytes(first.data)


def test_content_change_changes_digest(agent_dir):
    before = bundle.build(agent_dir)
    (agent_dir / "docs" / "README.md").write_text("# Sample, edited\n")
    assert bundle.build(agent_dir).digest != before.digest


def test_manifest_and_round_trip(tmp_path, agent_dir):
    result = bundle.build(agent_dir, level=3)
    read = bundle.read_bytes(result.data)
    assert (read.agent, read.version) == ("sample_agent", "1.0.0")
    source = (agent_dir / "tools" / "handlers" / "area.py").read_bytes()
    assert read.files["tools/handlers/area.py"] == source
    assert read.manifest["files"]["tools/handlers/area.py"]["sha256"] == hashlib.sha256(source).hexdigest()
    dest = bundle.extract(read, tmp_path / "out" / "sample_agent-1.0.0")
    assert (dest / "tools" / "handlers" / "area.py").read_bytes() == source
    assert json.loads((dest / "MANIFEST.json").read_bytes())["agent"] == "sample_agent"
    assert result.files == len(read.files) and 0 < result.ratio < 1


def test_tar_entries_are_normalised(agent_dir):
    data = zstandard.ZstdDecompressor().decompress(bundle.build(agent_dir).data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert members[0].name == "MANIFEST.json"
    assert [m.name for m in members[1:]] == sorted(m.name for m in members[1:])
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.type) for m in members} == {
        (0, 0o644, 0, 0, "", "", tarfile.REGTYPE)
    }


def test_build_refuses_bad_spec_and_policy(tmp_path):
    with pytest.raises(SpecError):
        bundle.build(write_agent(tmp_path / "a", files={"config.yaml": "agent: {}\n"}))
    with pytest.raises(PolicyViolation):
        bundle.build(write_agent(tmp_path / "b", files={"tools/handlers/area.py": "import os\n"}))


def test_write_if_changed_is_idempotent(tmp_path, agent_dir):
    data = bundle.build(agent_dir).data
    dest = tmp_path / "out" / "b.tar.zst"
    assert write_if_changed(dest, data) is True
    assert write_if_changed(dest, data) is False
    assert dest.read_bytes() == data and oct(dest.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b.tar.zst"]


# --- refusals: hand-made hostile bundles ------------------------------------------------------


def _entry(name, data=b"x", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _hostile(entries, manifest_extra=None, with_manifest=True) -> bytes:
    files = {i.name: d for i, d in entries if i.type == tarfile.REGTYPE}
    manifest = {
        "format": bundle.FORMAT,
        "agent": "evil",
        "version": "1.0.0",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
        **(manifest_extra or {}),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if with_manifest:
            m = json.dumps(manifest).encode()
            info = tarfile.TarInfo("MANIFEST.json")
            info.size = len(m)
            tar.addfile(info, io.BytesIO(m))
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue())


HOSTILE = {
    "path traversal": ([_entry("prompts/../../../etc/cron.d/x")], "path traversal"),
    "absolute path": ([_entry("/etc/passwd")], "absolute"),
    "symlink": ([_entry("prompts/system.md", kind=tarfile.SYMTYPE, linkname="/etc/shadow")], "link"),
    "hard link": ([_entry("prompts/system.md", kind=tarfile.LNKTYPE, linkname="config.yaml")], "link"),
    "device": ([_entry("dev/sda", kind=tarfile.BLKTYPE)], "device"),
    "fifo": ([_entry("pipe", kind=tarfile.FIFOTYPE)], "device or special"),
    "duplicate": ([_entry("config.yaml", b"a"), _entry("config.yaml", b"b")], "duplicate"),
    "oversized entry": ([_entry("docs/big.md", b"x" * 4096)], "at most 2048 bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundle_refused_before_anything_is_written(tmp_path, case):
    entries, message = HOSTILE[case]
    path = tmp_path / "in" / "evil.tar.zst"
    path.parent.mkdir()
    path.write_bytes(_hostile(entries))
    out = tmp_path / "out"
    out.mkdir()
    limits = bundle.Limits(max_file_bytes=2048)
    with pytest.raises(BundleError, match=message):
        bundle.extract(bundle.read(path, limits), out / "evil")
    assert list(out.iterdir()) == []
    assert not Path("/etc/cron.d/x").exists()


def test_decompression_bomb_is_bounded(tmp_path):
    # 64 MiB of zeros compresses to a few KiB; reading must stop near the limit, not inflate it all
    bomb = zstandard.ZstdCompressor(level=19, write_checksum=True, write_content_size=False).compress(
        b"\0" * (64 << 20)
    )
    assert len(bomb) < 64 << 10
    with pytest.raises(BundleError, match="decompressed size exceeds"):
        bundle.read_bytes(bomb, "bomb", bundle.Limits(max_total_bytes=1 << 20))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda e: ([_entry("config.yaml", b"good")], {"files": {"config.yaml": {"sha256": "0" * 64, "size": 4}}}),
            "sha256",
        ),
        (
            lambda e: (
                [_entry("config.yaml"), _entry("extra.py")],
                {"files": {"config.yaml": {"sha256": hashlib.sha256(b"x").hexdigest(), "size": 1}}},
            ),
            "listed in the manifest",
        ),
        (lambda e: ([], {"files": {"gone.md": {"sha256": "0" * 64, "size": 1}}}), "missing"),
        (lambda e: ([_entry("a")], {"format": "other/v9"}), "format"),
    ],
)
def test_manifest_mismatch_refused(tmp_path, mutate, message):
    entries, extra = mutate(None)
    with pytest.raises(BundleError, match=message):
        bundle.read_bytes(_hostile(entries, extra), "b")


def test_no_manifest_and_garbage_refused():
    with pytest.raises(BundleError, match="no manifest"):
        bundle.read_bytes(_hostile([_entry("a")], with_manifest=False), "b")
    with pytest.raises(BundleError, match="not a zstd stream"):
        bundle.read_bytes(b"PK\x03\x04 not zstd", "b")


def test_extraction_failure_leaves_nothing(tmp_path, agent_dir, monkeypatch):
    read = bundle.read_bytes(bundle.build(agent_dir).data)
    calls = {"n": 0}
    real = Path.write_bytes

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        bundle.extract(read, out / "slot")
    assert list(out.iterdir()) == []


def test_extract_replace_swaps_whole_tree(tmp_path, agent_dir):
    read = bundle.read_bytes(bundle.build(agent_dir).data)
    dest = bundle.extract(read, tmp_path / "out" / "slot")
    (dest / "stale.txt").write_text("old")
    with pytest.raises(BundleError, match="already exists"):
        bundle.extract(read, dest)
    bundle.extract(read, dest, replace=True)
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["slot"]
