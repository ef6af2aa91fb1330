"""An agent's own tests, run against a sandbox runtime of one version, and the lifecycle gates.

The tests are the bundle's `tests/scenarios/*.yaml` and `tests/integration/*.yaml` (seed 000 §3:
scenario, prompt and security tests; format in docs/agent_format.md). `run()` starts
`python -m chenu_agents.runtime` on a free loopback port with the signed bundle and the scripted
provider, POSTs each test's input to /v1/tasks, judges the answer with `judge()` (the one evaluator;
tests/unit/test_examples.py uses it too), and stops the runtime.

`gates()` gives the lifecycle its gates (data/lifecycle.yaml names them): `validate` (draft to testing:
the bundle verifies and hashes to the registered digest, the tests run and their report is recorded),
`approve` (testing to staged: the same, every test passes, and each capability or tool that the
previous registered version did not have is approved by name) and `test` (the report alone).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ChenuError, Problem

KINDS = ("scenarios", "integration")
CATEGORIES = ("happy_path", "edge_cases", "error_handling", "security")
# Checked on every answer of an agent that declares the constraint (seed 000 §3.1, prompt_tests).
CONSTRAINT_PHRASES = {"must_include_disclaimer": ("pas de conseil juridique", "consultant un avocat")}
DISCLAIMER = CONSTRAINT_PHRASES["must_include_disclaimer"]
START_TIMEOUT_S = 60.0


class AgentTestError(ChenuError):
    """The agent's tests could not be run (no tests, the sandbox runtime refused the bundle or did not serve)."""


def _yaml(data: bytes | str, where: str) -> Any:
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise AgentTestError(f"{where}: not YAML", [Problem(where, "(file)", f"YAML ({exc})")]) from None


def cases(files: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """The tests of a bundle (or folder) given as {relative path: bytes}, in file order, each with its path."""
    found = []
    for path in sorted(files):
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "tests" and parts[1] in KINDS and parts[2].endswith(".yaml"):
            case = _yaml(files[path], path)
            problems = [
                Problem(path, key, "present")
                for key, ok in (
                    ("scenario", isinstance(case, dict) and "scenario" in case),
                    ("when.input", isinstance(case, dict) and isinstance((case.get("when") or {}).get("input"), str)),
                    ("then", isinstance(case, dict) and isinstance(case.get("then"), dict)),
                )
                if not ok
            ]
            if problems:
                raise AgentTestError(f"{path}: malformed test", problems)
            found.append({**case, "path": path, "kind": parts[1]})
    return found


def folder_files(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "tests").rglob("*.yaml") if p.is_file()}


def judge(
    case: Mapping[str, Any],
    reply: str,
    called: Iterable[str],
    *,
    ok: bool = True,
    constraints: Iterable[str] = (),
) -> list[str]:
    """Problems of one answer against its test; an empty list means it passes.

    `then`: status (ok, or anything else for an expected refusal), contains / not_contains
    (case-insensitive), tools_called (each must be called; [] means none may be). The agent's
    constraints add their own phrases (must_include_disclaimer: the disclaimer).
    """
    then, low, called = case["then"], reply.lower(), list(called)
    problems = []
    expected_ok = then.get("status", "ok") == "ok"
    if expected_ok != ok:
        problems.append(f"status {'ok' if ok else 'error'}, expected {then.get('status', 'ok')!r}")
    problems += [f"missing {s!r}" for s in then.get("contains", []) if s.lower() not in low]
    problems += [f"forbidden {s!r}" for s in then.get("not_contains", []) if s.lower() in low]
    expected = then.get("tools_called")
    if expected is not None:
        problems += [f"tool {t} not called" for t in expected if t not in called]
        if not expected and called:
            problems.append(f"no tool expected, called {called}")
    for constraint in constraints:
        problems += [f"disclaimer lacks {s!r}" for s in CONSTRAINT_PHRASES.get(constraint, ()) if s not in low]
    return [f"{p} in reply: {reply!r}" for p in problems]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SandboxRuntime:
    """`python -m chenu_agents.runtime` serving one signed bundle on loopback, scripted provider only."""

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        trust_store: str | os.PathLike[str],
        *,
        agent: str,
        signature: str | os.PathLike[str] | None = None,
        timeout: float = START_TIMEOUT_S,
    ):
        self.bundle, self.trust_store, self.agent = Path(bundle), Path(trust_store), agent
        self.signature = Path(signature) if signature else None
        self.timeout = timeout
        self.token = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.url = ""
        self.ready: dict[str, Any] = {}

    def __enter__(self) -> SandboxRuntime:
        from .runtime.config import hash_token

        self.tmp = tempfile.TemporaryDirectory(prefix="chenu-gate-")
        tmp = Path(self.tmp.name)
        (tmp / "tokens.json").write_text(
            json.dumps({"tokens": [{"name": "gate", "role": "caller", "sha256": hash_token(self.token)}]})
        )
        for attempt in range(3):
            port = free_port()
            settings = {
                "bundle": str(self.bundle),
                "trust_store": str(self.trust_store),
                "accepted_versions": str(tmp / "accepted.json"),
                "tokens_file": str(tmp / "tokens.json"),
                "work_dir": str(tmp / "work"),
                "agent": self.agent,
                "slot": "gate",
                "host": "127.0.0.1",
                "port": port,
                "llm_chain": [f"scripted/{self.agent}"],
                "shutdown_timeout_s": 2,
            }
            if self.signature:
                settings["signature"] = str(self.signature)
            (tmp / "runtime.json").write_text(json.dumps(settings))
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHENU_RUNTIME_")}
            self.log = open(tmp / f"runtime-{attempt}.log", "w+b")  # closed in __exit__
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chenu_agents.runtime", "--config", str(tmp / "runtime.json")],
                stdout=self.log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            self.url = f"http://127.0.0.1:{port}"
            if self._wait_ready():
                return self
            output = self._stop()
            if "address already in use" not in output.lower():
                self._cleanup()
                raise AgentTestError(
                    f"the sandbox runtime did not serve {self.bundle.name}: {output.strip()[-1500:]}",
                    [Problem(str(self.bundle), "(runtime)", "a bundle the runtime verifies, loads and serves")],
                )
        self._cleanup()
        raise AgentTestError("the sandbox runtime found no free port after 3 attempts")

    def _wait_ready(self) -> bool:
        import requests

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                answer = requests.get(f"{self.url}/health/ready", timeout=2)
                if answer.status_code == 200:
                    self.ready = answer.json()
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def task(self, text: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
        return post_task(self.url, self.token, text, timeout)

    def _stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")
        self.log.close()
        return output

    def _cleanup(self) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self._cleanup()


def run(
    bundle: str | os.PathLike[str],
    trust_store: str | os.PathLike[str],
    *,
    signature: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> dict[str, Any]:
    """Run the bundle's own tests against a sandbox runtime of it; the report, one entry per test."""
    from . import bundle as bundle_mod

    started = time.monotonic()
    loaded = bundle_mod.read(bundle)
    agent = loaded.agent
    config = _yaml(loaded.files["config.yaml"], "config.yaml")["agent"]
    constraints = list(config.get("constraints") or [])
    tests = cases(loaded.files)
    if not tests:
        raise AgentTestError(
            f"{agent} {loaded.version} has no tests",
            [Problem(str(bundle), "tests/scenarios", "at least one scenario (*.yaml)")],
        )
    results = []
    with SandboxRuntime(bundle, trust_store, agent=agent, signature=signature, timeout=timeout) as runtime:
        for case in tests:
            t0 = time.monotonic()
            status, answer = runtime.task(case["when"]["input"])
            results.append(check_answer(case, status, answer, constraints, time.monotonic() - t0))
        served = {k: runtime.ready.get(k) for k in ("agent", "version")}
    return {**summarise(results), "agent": agent, "version": loaded.version, "served": served,
            "constraints": constraints, "duration_s": round(time.monotonic() - started, 2)}  # fmt: skip


def post_task(
    url: str, token: str, text: str, timeout: float = 30, *, answer_errors: bool = False
) -> tuple[int, dict[str, Any]]:
    """POST one task to a runtime: (HTTP status, JSON body). With `answer_errors`, a runtime that does not
    answer gives (-1, {"error": ...}) instead of raising (a smoke test judges it like any failure)."""
    import requests

    try:
        answer = requests.post(
            f"{url.rstrip('/')}/v1/tasks",
            json={"input": text},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        if not answer_errors:
            raise
        return -1, {"error": f"no answer ({exc})"}
    try:
        body = answer.json()
    except ValueError:
        return answer.status_code, {"error": answer.text}
    return answer.status_code, body if isinstance(body, dict) else {}


def check_answer(
    case: Mapping[str, Any], status: int, answer: Mapping[str, Any], constraints: Iterable[str], seconds: float
) -> dict[str, Any]:
    """One test's result from the runtime's answer to its input (HTTP status and JSON body)."""
    reply = answer.get("output") if status == 200 else answer.get("error", "")
    called = [c["name"] for c in answer.get("tool_calls", []) if isinstance(c, Mapping) and "name" in c]
    problems = judge(case, str(reply or ""), called, ok=status == 200, constraints=constraints)
    return {
        "test": case["path"],
        "kind": case["kind"],
        "scenario": case["scenario"],
        "category": case.get("category", "integration" if case["kind"] == "integration" else "unknown"),
        "input": case["when"]["input"],
        "passed": not problems,
        "problems": problems,
        "http_status": status,
        "tools_called": called,
        "duration_ms": round(seconds * 1000, 1),
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's totals over `results` (check_answer's)."""
    failed = [r for r in results if not r["passed"]]
    by_category: dict[str, dict[str, int]] = {}
    for r in results:
        entry = by_category.setdefault(r["category"], {"passed": 0, "failed": 0})
        entry["passed" if r["passed"] else "failed"] += 1
    summary = f"{len(results) - len(failed)}/{len(results)} tests passed"
    if failed:
        summary += "; failed: " + ", ".join(f"{r['test']} ({r['scenario']})" for r in failed)
    return {
        "passed": not failed,
        "summary": summary,
        "total": len(results),
        "failed": len(failed),
        "by_category": by_category,
        "results": results,
    }


def smoke(
    bundle: str | os.PathLike[str],
    url: str,
    token: str,
    *,
    categories: Iterable[str] = ("happy_path", "security"),
    timeout: float = 30,
) -> dict[str, Any]:
    """The bundle's tests of `categories` sent to a runtime already serving it at `url` (a release's
    candidate slot, straight to its port), judged as `run` judges them."""
    from . import bundle as bundle_mod

    started = time.monotonic()
    loaded = bundle_mod.read(bundle)
    config = _yaml(loaded.files["config.yaml"], "config.yaml")["agent"]
    constraints = list(config.get("constraints") or [])
    wanted = set(categories)
    results = []
    for case in (c for c in cases(loaded.files) if c.get("category") in wanted):
        t0 = time.monotonic()
        status, parsed = post_task(url, token, case["when"]["input"], timeout, answer_errors=True)
        results.append(check_answer(case, status, parsed, constraints, time.monotonic() - t0))
    return {**summarise(results), "agent": loaded.agent, "version": loaded.version, "url": url,
            "duration_s": round(time.monotonic() - started, 2)}  # fmt: skip


def bundle_surface(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """What registration records of a bundle: its agent, version, capabilities and tool names."""
    from . import bundle as bundle_mod

    loaded = bundle_mod.read(bundle)
    config = _yaml(loaded.files["config.yaml"], "config.yaml")["agent"]
    tools = []
    if "tools/definitions.yaml" in loaded.files:
        definitions = _yaml(loaded.files["tools/definitions.yaml"], "tools/definitions.yaml") or {}
        tools = sorted(t["name"] for t in definitions.get("tools") or [])
    return {
        "agent": loaded.agent,
        "version": loaded.version,
        "capabilities": sorted(config.get("capabilities") or []),
        "tools": tools,
    }


def registration_facts(
    bundle: str | os.PathLike[str],
    *,
    agent: str,
    version: str,
    signature: str | os.PathLike[str] | None = None,
    trust_store: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """digest and key_id from the bundle's signed statement, capabilities and tools from its config.

    With a trust store the statement is verified in full; without, the bundle must at least hash to
    the digest its statement names, for the agent and version asked.
    """
    from .errors import StatementMismatch, TamperedBundle
    from .signing import Statement, file_digest, signature_path_for, verify_bundle
    from .trust import TrustStore

    sig = Path(signature) if signature else signature_path_for(bundle)
    if trust_store:
        statement = verify_bundle(
            bundle, TrustStore.load(trust_store), signature_path=sig, agent=agent, version=version
        )
    else:
        try:
            statement = Statement.from_dict(json.loads(sig.read_bytes())["statement"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AgentTestError(
                f"{sig}: no readable signed statement", [Problem(str(sig), "statement", f"a signed statement ({exc})")]
            ) from None
        if (statement.agent, statement.version) != (agent, version):
            raise StatementMismatch(
                f"{sig}: statement is for {statement.agent} {statement.version}, not {agent} {version}"
            )
        digest = file_digest(bundle)
        if digest != statement.digest:
            raise TamperedBundle(f"{bundle}: hashes to {digest}, the statement signed {statement.digest}")
    surface = bundle_surface(bundle)
    return {
        "digest": statement.digest,
        "key_id": statement.key_id,
        "bundle": str(Path(bundle).resolve()),
        "capabilities": surface["capabilities"],
        "tools": surface["tools"],
    }


def new_surface(registry: Any, agent: str, version: str, surface: Mapping[str, Any]) -> dict[str, list[str]]:
    """Capabilities and tools of `surface` that the previous registered version of the agent did not have."""
    previous = registry.previous_version(agent, version)
    before: dict[str, list[str]] = {"capabilities": [], "tools": []}
    if previous is not None:
        for key in before:
            known = getattr(previous, key)
            if known is None and previous.bundle and Path(previous.bundle).is_file():
                known = bundle_surface(previous.bundle)[key]
            before[key] = list(known or [])
    return {key: sorted(set(surface[key]) - set(before[key])) for key in before}


def approval_extra_vars(capabilities: list[str], tools: list[str], missing: Mapping[str, list[str]]) -> str:
    """The extra vars (JSON) an operator adds to approve what is missing on top of what was approved already."""
    return json.dumps(
        {
            "approved_capabilities": sorted({*capabilities, *missing.get("capabilities", [])}),
            "approved_tools": sorted({*tools, *missing.get("tools", [])}),
        }
    )


def recorded_report(registry: Any, agent: str, version: str, digest: str) -> dict[str, Any] | None:
    """The latest test report in the version's audit trail for this digest (validate or test), if any."""
    for entry in reversed(registry.audit(agent, version)):
        gate = entry.details.get("gate") or {}
        tests = gate.get("tests")
        if isinstance(tests, dict) and (gate.get("verified") or {}).get("digest") == digest:
            return {**tests, "results": [], "recorded_in_audit_id": entry.id}
    return None


def gates(
    *,
    trust_store: str | os.PathLike[str] | None,
    signature: str | os.PathLike[str] | None = None,
    run_tests: bool = True,
    timeout: float = START_TIMEOUT_S,
) -> dict[str, Any]:
    """The lifecycle's gates, keyed by the names data/lifecycle.yaml gives them."""

    def check(registry: Any, request: Any, record: Any, check_mode: bool, *, kind: str) -> dict[str, Any]:
        from .errors import VerificationError
        from .signing import verify_bundle
        from .trust import TrustStore

        problems: list[dict[str, str]] = []
        report: dict[str, Any] = {"gate": kind}
        bundle = request.bundle or record.bundle
        if not bundle:
            problems.append({"field": "bundle", "expected": "the version's bundle (given, or registered with it)"})
        elif not trust_store:
            problems.append({"field": "trust_store", "expected": "the trust store the bundle must verify against"})
        else:
            try:
                statement = verify_bundle(
                    bundle,
                    TrustStore.load(trust_store),
                    signature_path=signature,
                    agent=request.agent,
                    version=request.version,
                )
                report["verified"] = {"digest": statement.digest, "key_id": statement.key_id}
                if statement.digest != record.digest:
                    problems.append(
                        {
                            "field": "digest",
                            "expected": f"the registered {record.digest}, the bundle is {statement.digest}",
                        }
                    )
            except (VerificationError, OSError) as exc:
                problems.append(
                    {"field": "bundle", "expected": f"a bundle that verifies ({type(exc).__name__}: {exc})"}
                )
        if kind == "approve" and bundle and not problems:
            surface = bundle_surface(bundle)
            new = new_surface(registry, request.agent, request.version, surface)
            approved = {"capabilities": set(request.approved_capabilities), "tools": set(request.approved_tools)}
            report["new"] = new
            missing = {key: [n for n in names if n not in approved[key]] for key, names in new.items()}
            for key, names in missing.items():
                if names:
                    problems.append(
                        {
                            "field": f"approved_{key}",
                            "expected": f"an explicit approval of the new {key} {', '.join(names)}",
                        }
                    )
            if any(missing.values()):
                report["approve_with"] = approval_extra_vars(
                    request.approved_capabilities, request.approved_tools, missing
                )
        if not problems and run_tests:
            if check_mode:
                report["tests"] = "not run in check mode"
            else:
                try:
                    tests = run(bundle, trust_store, signature=signature, timeout=timeout)
                except AgentTestError as exc:
                    problems.append({"field": "tests", "expected": f"tests that run in a sandbox runtime ({exc})"})
                else:
                    report["tests"] = tests
                    if kind == "approve" and not tests["passed"]:
                        problems.append({"field": "tests", "expected": f"every test passing: {tests['summary']}"})
        elif not problems and kind == "approve":
            recorded = recorded_report(registry, request.agent, request.version, record.digest)
            if recorded is None or not recorded["passed"]:
                problems.append(
                    {
                        "field": "tests",
                        "expected": "a passing test report recorded for this digest "
                        "(validate or test with run_tests), or run_tests",
                    }
                )
            else:
                report["tests"] = recorded
        report["problems"] = problems
        report["passed"] = not problems
        report["summary"] = "; ".join(f"{p['field']}: {p['expected']}" for p in problems) or "passed"
        if report.get("approve_with"):
            report["summary"] += f". To approve them, add: -e '{report['approve_with']}'"
        return report

    return {
        kind: (
            lambda registry, request, record, check_mode, _k=kind: check(registry, request, record, check_mode, kind=_k)
        )
        for kind in ("validate", "approve", "test")
    }
