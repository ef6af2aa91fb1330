"""The release flag in the runtime: two private runtime processes, stable (blue, legal_info 1.2.0, with the
flag, stickiness in the local Redis under a test prefix) and variant (green, 1.3.0)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from chenu_agents import bundle
from chenu_agents.errors import RuntimeConfigError
from chenu_agents.files import write_if_changed
from chenu_agents.flags import set_stage
from chenu_agents.keystore import FileKeyStore
from chenu_agents.runtime import RuntimeConfig, hash_token
from chenu_agents.runtime.config import FeatureFlagSettings
from chenu_agents.signing import sign_bundle

from ..conftest import EXAMPLES, REPO

TOKEN = "tok-flags-caller"
QUESTION = "Comment vérifier la licence RBQ de mon entrepreneur?"
REDIS_SECRET = REPO / ".cache" / "local" / "secrets" / "redis"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def signed_legal(root: Path, store: FileKeyStore, version: str) -> Path:
    src = root / "src" / version / "legal_info"
    shutil.copytree(EXAMPLES / "legal_info", src)
    config = src / "config.yaml"
    text = config.read_text()
    current = text.split("version:", 1)[1].split()[0]
    config.write_text(text.replace(f"version: {current}", f"version: {version}", 1))
    path = root / "bundles" / f"legal_info-{version}.tar.zst"
    write_if_changed(path, bundle.build(src, level=3).data)
    sign_bundle(path, store, agent="legal_info", version=version)
    return path


class Slot:
    def __init__(self, root: Path, name: str, bundle_path: Path, common: dict, env: dict, **settings) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        slot_dir = root / name
        slot_dir.mkdir()
        shutil.copyfile(bundle_path, slot_dir / "agent.tar.zst")
        shutil.copyfile(f"{bundle_path}.sig", slot_dir / "agent.tar.zst.sig")
        self.config = slot_dir / "runtime.json"
        self.config.write_text(
            json.dumps(
                {
                    **common,
                    "bundle": str(slot_dir / "agent.tar.zst"),
                    "accepted_versions": str(slot_dir / "accepted.json"),
                    "work_dir": str(slot_dir / "work"),
                    "slot": name,
                    "port": self.port,
                    **settings,
                }
            )
        )
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chenu_agents.runtime", "--config", str(self.config), "--log-level", "WARNING"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                requests.get(f"{self.url}/health/live", timeout=1)
                return
            except requests.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slot {self.name} exited: {self.proc.stderr.read()}") from None
                time.sleep(0.1)
        raise RuntimeError(f"slot {self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    import redis

    root = tmp_path_factory.mktemp("flags")
    store = FileKeyStore(root / "keys")
    store.ensure_key()
    trust = root / "trust.json"
    store.trust_store().save(trust)
    tokens = root / "tokens.yaml"
    tokens.write_text(json.dumps({"tokens": [{"name": "app", "role": "caller", "sha256": hash_token(TOKEN)}]}))
    common = {"trust_store": str(trust), "tokens_file": str(tokens), "llm_chain": ["scripted/legal_info"]}
    flags = root / "flags.json"
    prefix = f"chenu-test:runtime-flags:{uuid.uuid4().hex[:8]}:"
    password = REDIS_SECRET.read_text().strip() if REDIS_SECRET.exists() else ""
    raw = redis.Redis(host="127.0.0.1", port=6379, password=password or None, socket_timeout=1)
    try:
        raw.ping()
        sticky = {"redis_url": "redis://127.0.0.1:6379/0", "redis_password_env": "TEST_REDIS_PASSWORD"}
    except redis.RedisError:
        sticky = {}  # no local Redis: the in-process LRU
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TEST_REDIS_PASSWORD": password}
    green = Slot(root, "green", signed_legal(root, store, "1.3.0"), common, env)
    flag = {"file": str(flags), "sticky_prefix": prefix, "connect_timeout_s": 0.5, **sticky}
    # Both slots carry the same flag settings, as the role renders them: green never forwards to itself.
    blue = Slot(root, "blue", signed_legal(root, store, "1.2.0"), common, env, feature_flag=flag)
    green_cfg = json.loads(green.config.read_text())
    green.config.write_text(json.dumps({**green_cfg, "feature_flag": flag}))
    variant = {"slot": "green", "version": "1.3.0", "url": green.url}
    set_stage(flags, "legal_info", "off", variant=variant)
    try:
        green.start()
        blue.start()
        yield {"blue": blue, "green": green, "flags": flags, "redis": sticky and raw, "prefix": prefix}
    finally:
        blue.stop()
        green.stop()
        keys = list(raw.scan_iter(match=f"{prefix}*")) if sticky else []
        if keys:
            raw.delete(*keys)
        raw.close()


def ask(slot: Slot, session: str | None = None, groups: str | None = None, **headers: str) -> requests.Response:
    sent = {"Authorization": f"Bearer {TOKEN}", **headers}
    if groups is not None:
        sent["X-Chenu-Groups"] = groups
    body = {"input": QUESTION}
    if session:
        body["session_id"] = session
    return requests.post(f"{slot.url}/v1/tasks", json=body, headers=sent, timeout=30)


def answered_by(answer: requests.Response) -> tuple[str, str, str]:
    assert answer.status_code == 200, answer.text
    data = answer.json()
    return data["version"], data["slot"], answer.headers.get("X-Chenu-Flag-Route", "")


def stage(pair: dict, value: str) -> None:
    set_stage(pair["flags"], "legal_info", value)
    time.sleep(0.25)  # the slot stats the file at most every 0.1 s


def test_internal_users_go_to_the_variant(pair: dict) -> None:
    blue, green = pair["blue"], pair["green"]
    before = blue.metric("chenu_agent_requests_total", slot="blue", code="200")
    assert answered_by(ask(blue, "s-off", "internal")) == ("1.2.0", "blue", "stable")
    stage(pair, "internal")
    assert answered_by(ask(blue, "s-staff", "internal,sales")) == ("1.3.0", "green", "variant")
    assert answered_by(ask(blue, "s-client", "beta")) == ("1.2.0", "blue", "stable")
    assert answered_by(ask(blue, None, "internal")) == ("1.3.0", "green", "variant")
    body = {"input": QUESTION, "session_id": "s-body", "attributes": {"groups": ["internal"], "user": "u-1"}}
    answer = requests.post(
        f"{blue.url}/v1/tasks", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )  # attributes from the body
    assert answered_by(answer) == ("1.3.0", "green", "variant")
    # A forwarded request is never forwarded again, and green, the variant, never forwards to itself.
    assert answered_by(ask(blue, "s-loop", "internal", **{"X-Chenu-Forwarded-By": "x"}))[:2] == ("1.2.0", "blue")
    assert answered_by(ask(green, "s-green", "internal")) == ("1.3.0", "green", "variant")
    # Each version counts its own answers; blue counts decisions.
    labels = {"agent": "legal_info", "slot": "blue", "flag": "legal_info.release"}
    assert blue.metric("chenu_agent_flag_routed_total", **labels, variant="variant") == 3
    assert blue.metric("chenu_agent_requests_total", slot="blue", code="200") - before == 3
    assert green.metric("chenu_agent_requests_total", slot="green", code="200") >= 4
    if pair["redis"]:
        assert any(pair["redis"].scan_iter(match=f"{pair['prefix']}legal_info.release:*:s-staff"))


def test_a_session_keeps_its_version_across_a_stage_change(pair: dict) -> None:
    blue = pair["blue"]
    stage(pair, "internal")
    assert answered_by(ask(blue, "s-conv-1"))[0] == "1.2.0"
    assert answered_by(ask(blue, "s-conv-2", "internal"))[0] == "1.3.0"
    stage(pair, "all")
    assert answered_by(ask(blue, "s-conv-1"))[0] == "1.2.0"  # started on stable: stays
    assert answered_by(ask(blue, "s-conv-new"))[0] == "1.3.0"
    stage(pair, "internal")
    assert answered_by(ask(blue, "s-conv-new"))[0] == "1.3.0"  # flag still on: stays


def test_off_sends_everyone_to_stable_within_a_second(pair: dict) -> None:
    blue = pair["blue"]
    stage(pair, "all")
    assert answered_by(ask(blue, "s-rollback", "internal"))[0] == "1.3.0"
    set_stage(pair["flags"], "legal_info", "off")
    turned = time.monotonic()
    while answered_by(ask(blue, "s-rollback", "internal"))[0] != "1.2.0":
        assert time.monotonic() - turned < 1.0
    for session in ("s-rollback", "s-conv-2", "s-staff", None):
        assert answered_by(ask(blue, session, "internal")) == ("1.2.0", "blue", "stable")


def test_variant_down_is_answered_by_stable(pair: dict) -> None:
    blue, green = pair["blue"], pair["green"]
    stage(pair, "all")
    assert answered_by(ask(blue, "s-down"))[0] == "1.3.0"
    green.stop()
    labels = {"agent": "legal_info", "slot": "blue", "flag": "legal_info.release"}
    for session in ("s-down", "s-down-2", None):
        assert answered_by(ask(blue, session)) == ("1.2.0", "blue", "fallback")
    assert blue.metric("chenu_agent_flag_fallbacks_total", **labels, reason="connect") == 3
    status = requests.get(f"{blue.url}/metrics", timeout=5)
    assert status.ok


def test_feature_flag_settings(tmp_path: Path) -> None:
    base = {"bundle": "b", "trust_store": "t", "accepted_versions": "a", "slot": "blue"}
    config = RuntimeConfig.from_mapping(
        {**base, "feature_flag": {"file": str(tmp_path / "f.json"), "beta_groups": "early", "sticky_ttl_s": 60}}
    )
    ff = config.feature_flag
    assert ff.beta_groups == ("early",) and ff.internal_groups == ("internal",) and ff.sticky_ttl_s == 60
    env = {"CHENU_RUNTIME_FEATURE_FLAG": json.dumps({"file": "/x.json", "redis_url": "redis://h:6379/0"})}
    assert RuntimeConfig.load(None, {**{f"CHENU_RUNTIME_{k.upper()}": v for k, v in base.items()}, **env}).feature_flag
    for bad, word in [
        ({"flag": "x"}, "file"),
        ({"file": "f", "variant_url": "ftp://x"}, "variant_url"),
        ({"file": "f", "redis_url": "http://x"}, "redis_url"),
        ({"file": "f", "sticky_max_sessions": 0}, "sticky_max_sessions"),
        ({"file": "f", "colour": "blue"}, "colour"),
    ]:
        with pytest.raises(RuntimeConfigError, match=word):
            RuntimeConfig.from_mapping({**base, "feature_flag": bad})
    missing = FeatureFlagSettings.from_mapping({"file": "f", "redis_password_env": "NOPE_NOT_SET"})
    with pytest.raises(RuntimeConfigError, match="NOPE_NOT_SET"):
        missing.redis_password({})
