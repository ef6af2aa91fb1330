from __future__ import annotations

import stat

from chenu_agents.files import atomic_write, write_if_changed
from chenu_agents.trust import TrustStore


def test_atomic_write_creates_missing_parents_with_the_mode_asked(tmp_path):
    target = tmp_path / "a" / "b" / "secret.pem"
    atomic_write(target, b"x", 0o600)
    assert target.read_bytes() == b"x"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.pem"]


def test_write_if_changed_reports_only_real_changes(tmp_path):
    target = tmp_path / "new" / "bundle.tar.zst"
    assert write_if_changed(target, b"one") is True
    assert write_if_changed(target, b"one") is False
    assert write_if_changed(target, b"two") is True
    assert target.read_bytes() == b"two"


def test_trust_store_saves_into_a_directory_that_does_not_exist_yet(tmp_path):
    # a fresh checkout: playbooks publish the trust store before any bundle directory exists
    dest = tmp_path / ".cache" / "local" / "bundles" / "trust.json"
    TrustStore(()).save(dest)
    assert TrustStore.load(dest).to_dict() == TrustStore(()).to_dict()
