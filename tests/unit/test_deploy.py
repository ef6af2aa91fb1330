"""chenu_agents.deploy against a real runtime process: install, reload, refusals, put back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from chenu_agents import bundle
from chenu_agents.deploy import DeployError, NotServing, ServiceControl, Slot, deploy
from chenu_agents.errors import RollbackRefused, StatementMismatch, TamperedBundle
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.runtime import hash_token
from chenu_agents.signing import sign_bundle

from ..conftest import EXAMPLES, REPO

ADMIN = "deploy-admin-token"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("deploy")
    store = FileKeyStore(root / "keys")
    store.ensure_key()
    trust = root / "trust.json"
    store.trust_store().save(trust)

    def signed(version: str) -> Path:
        src = root / "src" / version / "legal_info"
        shutil.copytree(EXAMPLES / "legal_info", src)
        config = src / "config.yaml"
        config.write_text(config.read_text().replace("version: 1.2.0", f"version: {version}", 1))
        path = root / "staging" / f"legal_info-{version}.tar.zst"
        write_if_changed(path, bundle.build(src, level=3).data)
        sign_bundle(path, store, agent="legal_info", version=version)
        return path

    slot = root / "slots" / "legal_info" / "blue"
    (slot / "runtime").mkdir(parents=True)
    tokens = root / "tokens.yaml"
    tokens.write_text(json.dumps({"tokens": [{"name": "admin", "role": "admin", "sha256": hash_token(ADMIN)}]}))
    settings = root / "legal_info-blue.yaml"
    settings.write_text(
        json.dumps(
            {
                "agent": "legal_info",
                "slot": "blue",
                "port": _free_port(),
                "bundle": str(slot / "current" / "agent.tar.zst"),
                "trust_store": str(trust),
                "accepted_versions": str(slot / "runtime" / "accepted_versions.json"),
                "tokens_file": str(tokens),
                "work_dir": str(slot / "runtime" / "work"),
                "llm_chain": ["scripted/legal_info"],
            }
        )
    )
    return {"settings": settings, "slot": slot, "store": store, **{v: signed(v) for v in ("1.2.0", "1.3.0", "1.4.0")}}


@pytest.fixture(scope="module")
def runtime(world: dict):
    """Deploy 1.2.0 into the empty slot (install only), then start the runtime on it."""
    first = deploy(world["settings"], world["1.2.0"], wait=False)
    assert first.changed and first.reload is None and not first.running
    assert deploy(world["settings"], world["1.2.0"], wait=False).changed is False
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chenu_agents.runtime", "--config", str(world["settings"])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    slot = Slot.load(world["settings"])
    deadline = time.monotonic() + 30
    while (served := slot.probe()) is None or not served.ready:
        assert proc.poll() is None and time.monotonic() < deadline, "runtime did not come up"
        time.sleep(0.1)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _serving(world: dict) -> str:
    served = Slot.load(world["settings"]).probe()
    assert served is not None
    return served.version


def _current(world: dict) -> str:
    return os.readlink(world["slot"] / "current")


class Hup(ServiceControl):
    """A service manager stand-in: SIGHUP straight to the test's process."""

    can_start = True

    def __init__(self, proc: subprocess.Popen | None):
        super().__init__("test")
        self.proc = proc

    def signal_reload(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)


def test_install_reload_and_idempotence(world: dict, runtime: subprocess.Popen) -> None:
    assert _serving(world) == "1.2.0"
    check = deploy(world["settings"], world["1.3.0"], admin_token=ADMIN, check_mode=True)
    assert check.changed and check.release is None and _serving(world) == "1.2.0"
    assert check.before["serving"]["version"] == "1.2.0" and check.after["serving"]["version"] == "1.3.0"

    done = deploy(world["settings"], world["1.3.0"], admin_token=ADMIN, version="1.3.0")
    assert done.changed and done.reload == "http"
    assert done.serving["version"] == "1.3.0" and done.serving["ready"]
    assert _serving(world) == "1.3.0" and _current(world).startswith("releases/1.3.0-")
    assert json.loads((world["slot"] / "runtime" / "accepted_versions.json").read_text()) == {"legal_info": "1.3.0"}

    again = deploy(world["settings"], world["1.3.0"], admin_token=ADMIN)
    assert not again.changed and again.reload is None
    assert not deploy(world["settings"], world["1.3.0"], admin_token=ADMIN, check_mode=True).changed


def test_same_bundle_re_signed_is_installed_and_loaded(world: dict, runtime: subprocess.Popen) -> None:
    # After a key rotation or a revocation the bytes stay, the statement changes: the slot must load it.
    sign_bundle(world["1.3.0"], world["store"], agent="legal_info", version="1.3.0")
    installed_sig = world["slot"] / "current" / "agent.tar.zst.sig"
    assert installed_sig.read_bytes() != Path(f"{world['1.3.0']}.sig").read_bytes()
    resigned = deploy(world["settings"], world["1.3.0"], admin_token=ADMIN)
    assert resigned.changed and resigned.reload == "http" and _serving(world) == "1.3.0"
    assert installed_sig.read_bytes() == Path(f"{world['1.3.0']}.sig").read_bytes()
    assert not deploy(world["settings"], world["1.3.0"], admin_token=ADMIN).changed


def test_tampered_bundle_is_refused_and_the_slot_keeps_serving(world: dict, runtime, tmp_path: Path) -> None:
    before = _current(world)
    bad = tmp_path / "legal_info-1.4.0.tar.zst"
    data = bytearray(world["1.4.0"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    shutil.copyfile(f"{world['1.4.0']}.sig", f"{bad}.sig")
    with pytest.raises(TamperedBundle):
        deploy(world["settings"], bad, admin_token=ADMIN)
    assert _current(world) == before and _serving(world) == "1.3.0"


def test_wrong_version_and_rollback(world: dict, runtime) -> None:
    with pytest.raises(StatementMismatch, match="version"):
        deploy(world["settings"], world["1.4.0"], version="1.5.0", admin_token=ADMIN)
    with pytest.raises(RollbackRefused):
        deploy(world["settings"], world["1.2.0"], admin_token=ADMIN)
    assert _serving(world) == "1.3.0"
    done = deploy(world["settings"], world["1.2.0"], admin_token=ADMIN, allow_rollback=True)
    assert done.changed and _serving(world) == "1.2.0"


def test_reload_by_signal_and_put_back_on_timeout(world: dict, runtime: subprocess.Popen) -> None:
    start = _serving(world)
    before = _current(world)
    accepted = (world["slot"] / "runtime" / "accepted_versions.json").read_bytes()
    # A manager that never delivers the signal: the deploy times out and puts everything back.
    with pytest.raises(NotServing):
        deploy(world["settings"], world["1.4.0"], control=Hup(None), timeout_s=1)
    assert _current(world) == before and _serving(world) == start
    assert (world["slot"] / "runtime" / "accepted_versions.json").read_bytes() == accepted

    done = deploy(world["settings"], world["1.4.0"], control=Hup(runtime), timeout_s=30)
    assert done.changed and done.reload == "signal" and _serving(world) == "1.4.0"
    releases = sorted(p.name for p in (world["slot"] / "releases").iterdir())
    assert len(releases) <= 3 + 2


def test_the_answer_comes_from_the_deployed_version(world: dict, runtime) -> None:
    slot = Slot.load(world["settings"])
    answer = requests.get(f"{slot.url}/health/ready", timeout=5).json()
    assert answer["version"] == _serving(world)


def test_a_slot_not_laid_out_for_deployment_is_refused(tmp_path: Path, world: dict) -> None:
    settings = tmp_path / "s.yaml"
    data = json.loads(world["settings"].read_text())
    settings.write_text(json.dumps({**data, "bundle": str(tmp_path / "agent.tar.zst")}))
    with pytest.raises(DeployError, match=r"current/agent\.tar\.zst"):
        deploy(settings, world["1.2.0"])
    stopped = json.loads(world["settings"].read_text())
    settings.write_text(json.dumps({**stopped, "port": _free_port()}))
    with pytest.raises(DeployError, match="not running"):
        deploy(settings, world["1.4.0"])
