"""One verified agent version, ready to answer tasks: prompts, few-shot examples, tools and LLM chain.

Loading order: read the bundle's bytes once, verify the signed statement over the file (trust store,
freshness, expected agent, rollback), check that the bytes read hash to the signed digest (so a file
swapped between the two reads is refused), then check the bundle in memory, unpack it and validate it
as an agent folder. The accepted version is recorded last, once the version is really servable: a bundle
that is signed but cannot be loaded must not make the previous version count as a rollback.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from jsonschema import Draft202012Validator

from chenu_agents import bundle as bundle_mod
from chenu_agents import spec as spec_mod
from chenu_agents.errors import (
    BundleError,
    Problem,
    ProviderError,
    SandboxError,
    StatementMismatch,
    TamperedBundle,
    TaskError,
)
from chenu_agents.providers import Chain, ToolCall
from chenu_agents.safeload import load_yaml_data
from chenu_agents.sandbox import Limits, Permissions, SandboxResult
from chenu_agents.signing import Statement, verify_bundle
from chenu_agents.trust import AcceptedVersions, TrustStore

from .config import RuntimeConfig

SYSTEM_PROMPT = "prompts/system.md"
EXAMPLES_DIR = "prompts/examples/"
SCRIPTED = "tests/scripted.yaml"


class ToolRunner(Protocol):
    def run(
        self,
        source: str,
        args: dict[str, Any],
        *,
        entrypoint: str = "handle",
        limits: Limits | None = None,
        permissions: Permissions | None = None,
        workdir: str | Path | None = None,
    ) -> SandboxResult: ...


SpanFactory = Callable[..., AbstractContextManager[Any]]


class Unrecorded:
    """What a span is when tracing is off: attributes set on it go nowhere."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass


UNRECORDED = Unrecorded()


def _no_span(_name: str, **_attributes: Any) -> AbstractContextManager[Any]:
    return nullcontext(UNRECORDED)


@dataclass(frozen=True)
class AgentTool:
    name: str
    description: str
    input_schema: dict
    source: str
    entrypoint: str
    limits: Limits
    permissions: Permissions
    validator: Draft202012Validator = field(repr=False)
    workdir: Path | None = None

    def for_model(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    ok: bool
    outcome: str  # success | error | timeout | denied (the metric contract's values)
    duration_s: float
    result: dict | None = None
    error: str | None = None
    sandbox_s: float | None = None  # wall time inside the sandbox, when the call got that far

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "arguments": self.arguments,
            "ok": self.ok,
            "outcome": self.outcome,
            "duration_s": round(self.duration_s, 6),
        }
        if self.ok:
            out["result"] = self.result
        else:
            out["error"] = self.error
        return out

    def for_model(self) -> dict | str:
        return self.result if self.ok and self.result is not None else {"error": self.error}


@dataclass
class TaskResult:
    output: str
    tool_calls: list[ToolCallRecord]
    input_tokens: int
    output_tokens: int
    provider: str
    fallbacks: int
    rounds: int


@dataclass
class LoadedAgent:
    statement: Statement
    manifest: dict
    root: Path
    config: dict
    system: Template
    examples: tuple[tuple[str, str], ...]
    tools: dict[str, AgentTool]
    chain: Chain
    parameters: dict[str, Any]
    max_rounds: int
    load_s: float
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def agent(self) -> str:
        return self.statement.agent

    @property
    def version(self) -> str:
        return self.statement.version

    @property
    def digest(self) -> str:
        return self.statement.digest

    def describe(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "version": self.version,
            "digest": self.digest,
            "key_id": self.statement.key_id,
            "expires_at": self.statement.expires_at.isoformat(),
            "loaded_at": self.loaded_at.isoformat(),
            "load_ms": round(self.load_s * 1000, 2),
            "tools": sorted(self.tools),
            "providers": [p.spec for p in self.chain.providers],
        }

    # -- one task ---------------------------------------------------------------------------

    def messages(self, text: str, session_id: str | None, attributes: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            system = self.system.render(
                agent=self.config, session_id=session_id, attributes=attributes, today=datetime.now(UTC).date()
            )
        except TemplateError as exc:
            raise TaskError(f"{SYSTEM_PROMPT}: cannot render: {exc}", status=500) from exc
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for question, answer in self.examples:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": text})
        return messages

    def run_task(
        self,
        text: str,
        runner: ToolRunner,
        *,
        session_id: str | None = None,
        attributes: dict[str, Any] | None = None,
        span: SpanFactory = _no_span,
        on_provider_call: Callable[[str, bool, float], None] | None = None,
    ) -> TaskResult:
        messages = self.messages(text, session_id, attributes or {})
        tools = [t.for_model() for t in self.tools.values()] or None
        records: list[ToolCallRecord] = []
        tokens_in = tokens_out = fallbacks = 0
        for round_no in range(1, self.max_rounds + 1):
            with span("llm.complete", agent=self.agent, version=self.version, round=round_no) as llm_span:
                try:
                    answer = self.chain.complete(messages, tools, self.parameters, on_call=on_provider_call)
                except ProviderError as exc:
                    raise TaskError(f"LLM chain failed: {exc}", status=502) from exc
                llm_span.set_attribute("provider", answer.provider)
                llm_span.set_attribute("fallbacks", answer.fallbacks_taken)
            completion = answer.completion
            tokens_in += completion.usage.input_tokens
            tokens_out += completion.usage.output_tokens
            fallbacks = max(fallbacks, answer.fallbacks_taken)
            if not completion.tool_calls:
                return TaskResult(completion.text, records, tokens_in, tokens_out, answer.provider, fallbacks, round_no)
            messages.append({"role": "assistant", "content": completion.text, "tool_calls": completion.tool_calls})
            for call in completion.tool_calls:
                with span("tool.call", agent=self.agent, version=self.version, tool=call.name) as tool_span:
                    record = self.call_tool(call, runner)
                    tool_span.set_attribute("outcome", record.outcome)
                records.append(record)
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": record.for_model()}
                )
        raise TaskError(f"the model still asked for tools after {self.max_rounds} rounds", status=502)

    def call_tool(self, call: ToolCall, runner: ToolRunner) -> ToolCallRecord:
        started = time.perf_counter()
        arguments = call.arguments if isinstance(call.arguments, dict) else {}

        def refused(outcome: str, error: str) -> ToolCallRecord:
            return ToolCallRecord(call.name, arguments, False, outcome, time.perf_counter() - started, error=error)

        tool = self.tools.get(call.name)
        if tool is None:
            return refused("denied", f"unknown tool {call.name!r}; declared: {', '.join(sorted(self.tools))}")
        problems = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if problems:
            where = "/".join(map(str, problems[0].absolute_path)) or "(arguments)"
            return refused("error", f"invalid arguments: {where}: {problems[0].message}")
        try:
            if tool.permissions.filesystem == "read_write":
                # A scratch directory per call: nothing one call writes is seen by the next.
                with tempfile.TemporaryDirectory(prefix=f"chenu-tool-{tool.name}-") as scratch:
                    run = runner.run(tool.source, arguments, entrypoint=tool.entrypoint, limits=tool.limits,
                                     permissions=tool.permissions, workdir=scratch)  # fmt: skip
            else:
                run = runner.run(tool.source, arguments, entrypoint=tool.entrypoint, limits=tool.limits,
                                 permissions=tool.permissions, workdir=tool.workdir)  # fmt: skip
        except SandboxError as exc:
            return refused("denied", str(exc))
        duration = time.perf_counter() - started
        if run.ok:
            return ToolCallRecord(call.name, arguments, True, "success", duration, result=run.result,
                                  sandbox_s=run.duration_s)  # fmt: skip
        outcome = "timeout" if run.error_kind == "timeout" else "error"
        return ToolCallRecord(call.name, arguments, False, outcome, duration, error=run.error, sandbox_s=run.duration_s)


# -- loading --------------------------------------------------------------------------------------


def _yaml(files: dict[str, bytes], name: str) -> Any:
    if name not in files:
        raise BundleError(f"bundle file {name} is missing", [Problem(name, "(file)", "UTF-8 YAML")])
    return load_yaml_data(files[name], name, error=BundleError)  # bounded: aliases counted expanded


def _examples(files: dict[str, bytes]) -> tuple[tuple[str, str], ...]:
    out = []
    for name in sorted(n for n in files if n.startswith(EXAMPLES_DIR) and n.endswith((".yaml", ".yml"))):
        data = _yaml(files, name)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("input"), str)
            or not isinstance(data.get("output"), str)
        ):
            raise BundleError(f"{name}: not a few-shot example", [Problem(name, "(root)", "{input: str, output: str}")])
        out.append((data["input"], data["output"].strip()))
    return tuple(out)


_private_dirs: dict[str, Path] = {}


def _unpack_dir(config: RuntimeConfig, statement: Statement) -> Path:
    # Never a predictable path in a shared /tmp: whoever created it first would choose what we load.
    base = config.work_dir or _private_dirs.setdefault(
        config.slot, Path(tempfile.mkdtemp(prefix=f"chenu-runtime-{config.slot}-"))
    )
    # One directory per digest: a reload never rewrites files that the serving version still uses.
    return base / f"{statement.version}-{statement.digest.removeprefix('sha256:')[:16]}" / statement.agent


def load_agent(config: RuntimeConfig, *, now: datetime | None = None) -> LoadedAgent:
    """Verify, check and prepare the configured bundle; raise a ChenuError saying why it is refused."""
    started = time.perf_counter()
    try:
        data = config.bundle.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read bundle {config.bundle}", [Problem(str(config.bundle), "(file)", f"readable ({exc.strerror})")]
        ) from None
    trust = TrustStore.load(config.trust_store)
    accepted = AcceptedVersions(config.accepted_versions)
    statement = verify_bundle(
        config.bundle,
        trust,
        signature_path=config.signature_path,
        agent=config.agent,
        now=now,
        accepted=accepted,
        allow_rollback=config.allow_rollback,
        record=False,
    )
    if bundle_mod.digest_bytes(data) != statement.digest:
        raise TamperedBundle(f"{config.bundle}: the file changed while it was being verified")
    bundle = bundle_mod.read_bytes(data, str(config.bundle))
    for name in ("agent", "version"):
        if bundle.manifest[name] != getattr(statement, name):
            raise StatementMismatch(
                f"{config.bundle}: manifest {name} {bundle.manifest[name]!r}, statement {getattr(statement, name)!r}"
            )
    root = _unpack_dir(config, statement)
    # Unpacked afresh at every load (an atomic rename): what is on disk is what was just verified.
    bundle_mod.extract(bundle, root, replace=True)
    spec = spec_mod.load_agent(root)
    if (spec.id, spec.version) != (statement.agent, statement.version):
        raise StatementMismatch(f"{config.bundle}: config.yaml says {spec.id} {spec.version}")

    env = SandboxedEnvironment(autoescape=False)
    try:
        system = env.from_string(bundle.files.get(SYSTEM_PROMPT, b"").decode("utf-8"))
    except (UnicodeDecodeError, TemplateError) as exc:
        raise BundleError(
            f"{SYSTEM_PROMPT} is not a Jinja2 template", [Problem(SYSTEM_PROMPT, "(file)", str(exc))]
        ) from None

    tools: dict[str, AgentTool] = {}
    for tool in spec.tools:
        permissions = Permissions.from_definition(tool.permissions)
        tools[tool.name] = AgentTool(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            source=bundle.files[f"tools/{tool.handler}"].decode("utf-8"),
            entrypoint=tool.entrypoint,
            limits=Limits.from_definition(tool.limits),
            permissions=permissions,
            validator=Draft202012Validator(tool.input_schema),
            # A read grant sees the bundle's own tools/ folder: data shipped and signed with the handler.
            workdir=root / "tools" if permissions.filesystem == "read_only" else None,
        )

    llm = dict(spec.agent["llm"])
    if config.llm_chain:
        llm["primary"], llm["fallback"] = config.llm_chain[0], list(config.llm_chain[1:])
    llm["parameters"] = {**(llm.get("parameters") or {}), **config.llm_parameters}
    scripted = _yaml(bundle.files, SCRIPTED) if SCRIPTED in bundle.files else None
    chain = Chain.from_config(
        llm, scripted=scripted, base_urls=dict(config.provider_base_urls), api_keys=config.api_keys()
    )
    parameters = {k: v for k, v in llm["parameters"].items() if k not in ("retries",)}

    loaded = LoadedAgent(
        statement=statement,
        manifest=bundle.manifest,
        root=root,
        config=json.loads(json.dumps(spec.agent)),
        system=system,
        examples=_examples(bundle.files),
        tools=tools,
        chain=chain,
        parameters=parameters,
        max_rounds=config.max_rounds,
        load_s=time.perf_counter() - started,
    )
    accepted.record(statement.agent, statement.version, digest=statement.digest)
    return loaded
