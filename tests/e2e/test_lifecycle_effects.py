"""playbooks/lifecycle.yml reaches what serves, on the local stack, as an operator runs it (issue 12).

A fresh version of legal_info (slow on purpose: each LLM call takes SLOW_MS, so that a task can be in
flight while the playbook runs) is registered active and deployed into both slots, blue taking the
traffic; estimator, legal_info's fallback agent on the local inventory, serves in its own slot. Then:
pause (no fallback: 503; with the fallback: its answers through the frontend) and resume; the
deprecation announced (Deprecation and Sunset headers, callers counted), then deprecate with a task in
flight (it finishes, new tasks get 410, the slots stop once drained), then restore; deprecate and
archive (slots stopped, bundle kept 5 years in the archive), clone, purge. Each test leaves legal_info
served, as the other e2e tests expect it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chenu_agents import bundle as bundles
from chenu_agents import deploy, lifecycle, reconcile
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.signing import sign_bundle
from chenu_agents.traffic import HAProxyRuntime
from tests.e2e.ansible_run import REPO, local_secret, run_playbook
from tests.e2e.release_support import (
    FRONTEND,
    HAPROXY_SOCKET,
    local_registry,
    make_version,
    next_version,
    registry_audit,
    set_weights,
    stack_serving,  # noqa: F401  # the fixture, used below
    supervisor_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack_serving")]

SLOW_MS = 6000  # per LLM call of the test's version; a question with a tool call makes two
KEYS = Path("/var/lib/chenu-agents/local-keys")  # inventories/local: chenu_keystore_dir
SETTINGS = Path("/etc/chenu-agents/runtime")  # roles/sandbox_runtime: sandbox_runtime_config_dir
TRUST = Path("/etc/chenu-agents/trust.json")  # roles/sandbox_runtime: sandbox_runtime_trust_store
MAPS = (Path("/etc/haproxy/lifecycle_fallback.map"), Path("/etc/haproxy/lifecycle_gone.map"))
ARCHIVE = Path("/var/lib/chenu-agents/documents/bundle-archive")  # inventories/local: chenu_archive_dir
RUNTIME_PYTHON = "/opt/chenu-agents/venv/bin/python"
SLOTS = {"blue": 8101, "green": 8102}
ESTIMATOR = 8111
WITH_TOOL = "Comment vérifier la licence RBQ de mon entrepreneur?"


def caller() -> dict[str, str]:
    return {"Authorization": f"Bearer {local_secret('runtime_caller')}"}


def admin_token() -> str:
    return local_secret("runtime_admin")


def task(url: str = FRONTEND, text: str = "Bonjour", timeout: float = 60) -> requests.Response:
    return requests.post(f"{url}/v1/tasks", json={"input": text}, headers=caller(), timeout=timeout)


def frontend_version() -> str | None:
    """The version that answers a task through the frontend (None: an error answer or none)."""
    try:
        answer = task(timeout=90)
        return answer.json().get("version") if answer.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def status(port: int) -> dict | None:
    try:
        answer = requests.get(
            f"http://127.0.0.1:{port}/admin/status", headers={"Authorization": f"Bearer {admin_token()}"}, timeout=5
        )
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def run_lifecycle(version: str, action: str, **extra) -> tuple[float, str]:
    started = time.monotonic()
    run = run_playbook(
        "playbooks/lifecycle.yml",
        "-e",
        json.dumps({"agent": "legal_info", "version": version, "action": action, **extra}),
    )
    assert run.returncode == 0, f"lifecycle.yml {action} {version} failed:\n{run.tail()}"
    return time.monotonic() - started, run.output


def until(what: str, check, timeout: float = 30.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(every)


def build(folder: Path, out: Path, agent: str, version: str) -> Path:
    """Build and sign with the stack's key store; its trust store published to the slots if it lags (as
    deploy.yml's signing_key and sandbox_runtime steps would)."""
    path = out / f"{agent}-{version}.tar.zst"
    write_if_changed(path, bundles.build(folder, level=3).data)
    store = FileKeyStore(KEYS)
    statement = sign_bundle(path, store, agent=agent, version=version)
    trusted = json.loads(TRUST.read_text()) if TRUST.exists() else {"keys": []}
    if statement.key_id not in {k["key_id"] for k in trusted["keys"]}:
        store.trust_store().save(TRUST)
    return path


def put(slot: str, path: Path, agent: str = "legal_info") -> None:
    """Deploy a signed bundle into a slot, starting it if it does not run (what agent_deploy does)."""
    service = f"chenu-agent-{agent}-{slot}"
    deploy.deploy(
        SETTINGS / f"{agent}-{slot}.yaml",
        path,
        agent=agent,
        admin_token=admin_token(),
        control=deploy.select_control("supervisor", service),
        timeout_s=90,
    )


def register_active(version: str, path: Path) -> None:
    """The registry says `version` is active, as a release would leave it (the gates are not under test)."""
    statement = json.loads(Path(f"{path}.sig").read_text())["statement"]
    with local_registry(migrate=True) as registry:
        for action in ("register", "validate", "approve", "deploy"):
            request = lifecycle.Request("legal_info", version, action=action, actor="e2e-lifecycle",
                                        digest=statement["digest"], key_id=statement.get("key_id"), bundle=str(path))  # fmt: skip
            lifecycle.apply(registry, request)


def clear_maps() -> None:
    """Leftovers of an interrupted run: the frontend goes back to its slots."""
    maps = reconcile.FrontendMaps(HAProxyRuntime(HAPROXY_SOCKET), *MAPS)
    maps.apply(reconcile.FrontendPlan("legal_info"))


def serve_fresh(tmp: Path, *, slow: bool) -> str:
    """A new version of legal_info, registered active, in both slots, blue taking the traffic."""
    version = next_version()
    folder = make_version(tmp, version)
    if slow:
        script = folder / "tests" / "scripted.yaml"
        data = yaml.safe_load(script.read_text(encoding="utf-8"))
        data["fault_profile"] = {"error_rate": 0.0, "added_latency_ms": SLOW_MS}
        script.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    path = build(folder, tmp, "legal_info", version)
    register_active(version, path)
    for slot in SLOTS:
        put(slot, path)
    set_weights({"blue": 100, "green": 0})
    clear_maps()
    until(f"{version} served through the frontend", lambda: frontend_version() == version, timeout=120, every=1)
    return version


@pytest.fixture(scope="module")
def served(site_run, tmp_path_factory):
    """The stack wired for the lifecycle (runtime package, maps, estimator's slot), and a slow version serving."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    wired = (
        subprocess.run([RUNTIME_PYTHON, "-c", "import chenu_agents.reconcile"], capture_output=True).returncode == 0
        and all(m.exists() for m in MAPS)
        and (SETTINGS / "estimator-blue.yaml").exists()
        and "be_estimator" in HAProxyRuntime(HAPROXY_SOCKET).command("show backend")
    )
    if not wired:
        run = run_playbook("playbooks/site.yml", "--tags", "runtime,load_balancer")
        assert run.returncode == 0, f"site.yml --tags runtime,load_balancer failed:\n{run.tail()}"
    if supervisor_status().get("chenu-agent-estimator-blue") != "RUNNING" or status(ESTIMATOR) is None:
        estimator = REPO / "examples" / "agents" / "estimator"
        version = yaml.safe_load((estimator / "config.yaml").read_text())["agent"]["version"]
        put("blue", build(estimator, tmp, "estimator", version), agent="estimator")
    version = serve_fresh(tmp, slow=True)
    return {"version": version, "tmp": tmp}


def test_pause_redirects_to_the_fallback_and_resume_restores(served):
    version = served["version"]

    # No fallback named: the paused version answers 503 itself, with Retry-After and the reason.
    seconds, output = run_lifecycle(version, "pause", reason="e2e: incident drill", chenu_lifecycle_fallback_agents={})
    answer = task()
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "30"
    assert answer.json()["reason"] == "e2e: incident drill" and answer.json()["fallback_agent"] is None
    assert all(status(port)["state"] == "paused" for port in SLOTS.values())

    # The local inventory's fallback: the same (already paused) version, now routed to estimator.
    run_lifecycle(version, "pause")
    answer = task()
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Chenu-Fallback-For"] == "legal_info"
    assert answer.json()["agent"] == "estimator"
    direct = task(f"http://127.0.0.1:{SLOTS['blue']}")  # the slot itself still refuses, naming the fallback
    assert direct.status_code == 503 and direct.json()["fallback_agent"] == "estimator"
    print(f"pause: lifecycle.yml took {seconds:.1f} s; the first task after it reached the fallback")

    seconds, output = run_lifecycle(version, "resume")
    answer = task()
    assert answer.status_code == 200 and answer.json()["version"] == version, answer.text
    assert "X-Chenu-Fallback-For" not in answer.headers
    assert "resume paused -> active" in " ".join(output.split())
    print(f"resume: lifecycle.yml took {seconds:.1f} s; the next task was served by {version}")

    # Out-of-band drift: green's state file says paused, the registry says active. Any run for the agent
    # (here asking for the state it is in) reports it and puts it back.
    green = Path("/var/lib/chenu-agents/slots/legal_info/green/state.json")
    green.write_text(json.dumps({"state": "paused", "version": version}))
    assert until("green reads its file", lambda: status(SLOTS["green"])["state"] == "paused", timeout=10)
    _seconds, output = run_lifecycle(version, "deploy")
    assert f"drift: legal_info-green on localhost serves {version} as paused; the registry says active" in (
        " ".join(output.split())
    )
    assert status(SLOTS["green"])["state"] == "active"


def test_deprecate_lets_a_task_in_flight_finish_then_restore(served):
    version = served["version"]
    sunset = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    run_lifecycle(version, "announce_deprecation", details={"sunset": sunset.isoformat()})

    # A task with a tool call (two slow LLM calls) is in flight when the deprecation comes.
    answers: dict = {}

    def ask() -> None:
        answers["first"] = task(text=WITH_TOOL)
        answers["done_at"] = time.monotonic()

    in_flight = threading.Thread(target=ask)
    in_flight.start()
    until("the task in flight", lambda: (status(SLOTS["blue"]) or {}).get("in_flight", 0) >= 1, timeout=10, every=0.1)
    metrics = requests.get(f"http://127.0.0.1:{SLOTS['blue']}/metrics", timeout=5).text
    counted = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "chenu_agent_deprecated_calls_total"
        and sample.labels == {"agent": "legal_info", "version": version, "slot": "blue", "caller": "caller"}
    ]
    assert counted and counted[0] >= 1, "the callers of an announced version are counted"
    seconds, output = run_lifecycle(version, "deprecate", reason="e2e: end of life")
    ended = time.monotonic()
    in_flight.join(60)
    first = answers["first"]
    assert first.status_code == 200 and first.json()["version"] == version, first.text
    # Announced: RFC 9745 Deprecation and RFC 8594 Sunset on its answers.
    assert first.headers["Deprecation"].startswith("@")
    assert first.headers["Sunset"] == sunset.strftime("%a, %d %b %Y %H:%M:%S GMT")
    # The slots stopped only once drained: the task in flight ended before the playbook did.
    assert answers["done_at"] <= ended
    assert (
        f"legal_info-blue on localhost: {version} deprecated, state file written, stopped after its tasks in flight"
        in (" ".join(output.split()))
    )
    status_now = supervisor_status()
    assert all(status_now[f"chenu-agent-legal_info-{s}"] == "STOPPED" for s in SLOTS), status_now
    gone = task()
    assert gone.status_code == 410 and f"legal_info {version} deprecated" in gone.json()["error"], gone.text
    entry = registry_audit("legal_info", version)[-1]
    assert (entry["action"], entry["to_state"], entry["reason"]) == ("deprecate", "deprecated", "e2e: end of life")

    seconds, _output = run_lifecycle(version, "restore")
    status_now = supervisor_status()
    assert all(status_now[f"chenu-agent-legal_info-{s}"] == "RUNNING" for s in SLOTS), status_now
    back = until("served again through the frontend", lambda: (a := task()).status_code == 200 and a, timeout=60)
    assert back.json()["version"] == version
    assert "Deprecation" not in back.headers  # a restored version starts afresh
    print(f"restore: lifecycle.yml took {seconds:.1f} s")


def test_archive_frees_the_slots_keeps_the_bundle_clone_and_purge(served):
    version, tmp = served["version"], served["tmp"]
    try:
        run_lifecycle(version, "deprecate")
        run_lifecycle(version, "archive", reason="e2e: archived")
        status_now = supervisor_status()
        assert all(status_now[f"chenu-agent-legal_info-{s}"] == "STOPPED" for s in SLOTS), status_now
        for slot in SLOTS:
            state = json.loads(Path(f"/var/lib/chenu-agents/slots/legal_info/{slot}/state.json").read_text())
            assert (state["state"], state["version"], state["visible_to"]) == ("archived", version, ["admin"])
        gone = task()
        assert gone.status_code == 410 and "archived" in gone.json()["error"]
        kept = ARCHIVE / "legal_info" / version
        manifest = json.loads((kept / "manifest.json").read_text())
        assert set(manifest["files"]) == {"agent.tar.zst", "agent.tar.zst.sig", "audit.json"}
        expires = datetime.fromisoformat(manifest["expires_at"]) - datetime.fromisoformat(manifest["archived_at"])
        assert expires == timedelta(days=5 * 365)
        trail = json.loads((kept / "audit.json").read_text())
        assert [e["action"] for e in trail][-1] == "deprecate"  # kept before the archive transition

        clone = f"{version}-clone"
        run_lifecycle(version, "clone", new_version=clone)
        with local_registry() as registry:
            assert registry.version("legal_info", clone).state == "draft"

        as_of = (datetime.now(UTC) + timedelta(days=5 * 365 + 1)).isoformat()
        run = run_playbook("playbooks/archive_purge.yml", "-e", f"archive_purge_as_of={as_of}")
        assert run.returncode == 0, run.tail()
        assert not kept.exists()
        with local_registry() as registry:
            assert registry.version("legal_info", version) is None
        purge = registry_audit("legal_info", version)[-1]
        assert (purge["action"], purge["from_state"], purge["reason"]) == ("purge", "archived", "retention ran out")
    finally:
        # legal_info served again, by a new active version in both slots, for the tests that follow.
        fresh = serve_fresh(tmp, slow=False)
        run_lifecycle(fresh, "deploy")  # already active: a no-op that reconciles the slots and the frontend
        answer = until("the frontend serves the new version", lambda: (a := task()).status_code == 200 and a)
        assert answer.json()["version"] == fresh
