"""The HTTP service of one agent version in one slot.

Framework: aiohttp. Measured on this 2-core host (same load generator, 1 000 to 2 500 requests at
200 and 500 requests/s, JSON body parsed, work handed to a thread pool and answered as JSON):
aiohttp p50 0.41 to 0.79 ms, p95 0.72 to 1.37 ms; starlette 1.10 + uvicorn 0.54 (httptools) p50 0.49
to 0.58 ms, p95 1.06 to 1.18 ms. Neither is measurably faster at these rates, both are far below the
single-digit-millisecond target, so the choice went to the one dependency that is server, client (the
benchmark's load generator) and in-process test server at once, with a graceful shutdown that waits
for handlers in flight and no ASGI or anyio layer in between.

bench/runtime.py, same host, 100 requests/s, scripted provider, no tool: the runtime (verified bundle,
bearer token, rendered prompt, chain, metrics) adds 0.7 to 0.9 ms at p50, 1.0 to 1.9 ms at p95 and
1.2 to 1.7 ms at p99 over a bare aiohttp handler returning a constant.

Task work (LLM chain, sandbox) is blocking code and runs on a bounded thread pool; the event loop only
parses, authenticates and answers. A reload builds the new version off the loop and swaps one
reference: a request keeps the version it started with until it answers.

With `queue` set, tasks also arrive from the agent's RabbitMQ queue (`queue.TaskConsumer`) and take the
same path (`execute_task`), counted in the same request series.

With `feature_flag` set, each HTTP task request is first put to the agent's release flag
(`flagging.FlagRouter`, through OpenFeature); a request the flag gives to the variant is forwarded to the
variant's slot and answered with its answer, counted there, not here. A variant that cannot answer
(connection refused, timeout, 502/503/504) leaves the request to this slot: the flag never fails it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from chenu_agents.errors import ChenuError, Problem, RuntimeConfigError, TaskError

from . import health
from .agent import LoadedAgent, TaskResult, ToolRunner, load_agent
from .config import FLAG_ROUTE_HEADER as ROUTE
from .config import FORWARDED_BY_HEADER as FORWARDED_BY
from .config import LifecycleState, Principal, RuntimeConfig, StateFile, Tokens
from .metrics import Metrics
from .tracing import span_factory

log = logging.getLogger("chenu_agents.runtime")
RUNTIME_KEY = web.AppKey("runtime", "Runtime")


def _sandbox_factory(config: RuntimeConfig) -> ToolRunner:
    from chenu_agents.sandbox import Sandbox

    if config.sandbox_mode == "pooled":
        from chenu_agents.sandbox import PooledSandbox

        return PooledSandbox()
    return Sandbox()


class Runtime:
    """State shared by the handlers: the loaded agent, tokens, lifecycle, metrics, thread pool."""

    def __init__(
        self,
        config: RuntimeConfig,
        agent: LoadedAgent,
        *,
        sandbox: ToolRunner | None = None,
        metrics: Metrics | None = None,
        span_exporter: Any = None,
    ):
        self.config = config
        self.current = agent
        self.tokens = Tokens.load(config.tokens_file)
        self.state = StateFile(config.state_file)
        self.metrics = metrics or Metrics()
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="chenu-task")
        self.started = time.monotonic()
        self.in_flight = 0
        self.last_reload: dict[str, Any] = {"ok": True, "at": None, "error": None}
        self._tracing = span_factory(
            config.tracing,
            f"chenu-agent-{agent.agent}",
            endpoint=config.tracing_endpoint,
            span_exporter=span_exporter,
            resource={"chenu.agent": agent.agent, "chenu.slot": config.slot},
        )
        self.span, self.tracing = self._tracing.span, self._tracing.description
        self.consumer: Any = None  # queue.TaskConsumer when tasks also come from RabbitMQ
        self.flags: Any = None  # flagging.FlagRouter when the release flag routes tasks
        if config.feature_flag is not None:
            try:  # openfeature, redis and the HTTP client only when flagged
                from .flagging import FlagRouter
            except ImportError as exc:
                raise RuntimeConfigError(
                    f"feature_flag needs the openfeature-sdk and redis packages ({exc})",
                    [Problem("runtime config", "feature_flag", "openfeature-sdk and redis installed")],
                ) from None
            self.flags = FlagRouter(config.feature_flag, agent.agent, config.slot, self.metrics)
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._sandbox_lock = threading.Lock()
        self._reload_lock = asyncio.Lock()
        self._external: dict[str, tuple[float, tuple[bool, str]]] = {}
        self._publish_info(None, agent)

    @classmethod
    def start(cls, config: RuntimeConfig, **kwargs: Any) -> Runtime:
        """Verify and load the bundle, or raise the ChenuError that says why it must not be served."""
        return cls(config, load_agent(config), **kwargs)

    # -- pieces -----------------------------------------------------------------------------

    @property
    def sandbox(self) -> ToolRunner:
        # Built on first use: an agent without tools never pays for the interpreter.
        if self._sandbox is None:
            with self._sandbox_lock:
                if self._sandbox is None:
                    self._sandbox = _sandbox_factory(self.config)
        return self._sandbox

    def labels(self, agent: LoadedAgent) -> tuple[str, str, str]:
        return agent.agent, agent.version, self.config.slot

    def _publish_info(self, old: LoadedAgent | None, new: LoadedAgent) -> None:
        if old is not None:
            self.metrics.info.remove(*self.labels(old), old.digest)
        self.metrics.info.labels(*self.labels(new), new.digest).set(1)
        # The version's success and error series exist from its first scrape, at 0: a rollout analysis
        # then sees its first errors as an increase, one scrape sooner than a series that appears.
        for code in ("200", "500", "503"):
            self.metrics.requests.labels(*self.labels(new), code)
        self.metrics.duration.labels(*self.labels(new))  # its buckets too, for the latency comparison

    def authorize(self, request: web.Request, role: str) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _sep, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _error(401, "a bearer token is required", {"WWW-Authenticate": 'Bearer realm="chenu-agent"'})
        principal = self.tokens.lookup(token.strip())
        if principal is None:
            raise _error(401, "unknown token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not principal.allows(role):
            raise _error(403, f"role {principal.role!r} may not do this; {role!r} or above is needed")
        return principal

    async def in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = contextvars.copy_context()  # so that a trace span started here is the parent of the work's
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Load the configured bundle again; swap only if it verifies and loads. Never raises."""
        async with self._reload_lock:
            old = self.current
            at = datetime.now(UTC).isoformat()
            try:
                # Off the task pool: a reload must not queue behind slow tasks.
                new = await asyncio.to_thread(load_agent, self.config)
                tokens = Tokens.load(self.config.tokens_file)
            except ChenuError as exc:
                self.last_reload = {"ok": False, "at": at, "error": str(exc)}
                self.metrics.reloads.labels(self.config.slot, "refused").inc()
                log.error("reload refused, still serving %s %s: %s", old.agent, old.version, exc)
                return {"ok": False, "error": str(exc), "serving": old.describe()}
            self.current, self.tokens = new, tokens
            self._publish_info(old, new)
            retain = getattr(self._sandbox, "retain", None)
            if retain is not None:  # idle interpreters of handlers the new version dropped
                retain([t.source for t in new.tools.values()])
            self.last_reload = {"ok": True, "at": at, "error": None}
            self.metrics.reloads.labels(self.config.slot, "swapped").inc()
            log.info("reloaded: %s %s -> %s %s", old.agent, old.version, new.agent, new.version)
            return {"ok": True, "previous": old.describe(), "serving": new.describe()}

    # -- health -----------------------------------------------------------------------------

    async def _external_check(self, name: str, fn: Any, *args: Any) -> tuple[bool, str]:
        cached = self._external.get(name)
        if cached and time.monotonic() - cached[0] < self.config.health_cache_s:
            return cached[1]
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(fn, *args, self.config.health_timeout_s), self.config.health_timeout_s + 1
            )
        except TimeoutError:
            result = (False, f"no answer within {self.config.health_timeout_s} s")
        self._external[name] = (time.monotonic(), result)
        return result

    async def readiness(self) -> dict[str, Any]:
        agent = self.current
        checks: dict[str, tuple[bool, str]] = {}
        expires = agent.statement.expires_at
        fresh = datetime.now(UTC) <= expires
        detail = (
            f"{agent.agent} {agent.version} {agent.digest[:19]}... verified, statement expires {expires.isoformat()}"
        )
        if not fresh:
            detail = f"{agent.agent} {agent.version}: statement expired at {expires.isoformat()}; re-sign and reload"
        if not self.last_reload["ok"]:
            detail += f"; last reload refused: {self.last_reload['error'].splitlines()[0]}"
        checks["bundle"] = (fresh, detail)
        pending = {"llm": self._external_check("llm", health.check_llm, agent.chain)}
        if self.config.database_dsn:
            pending["database"] = self._external_check("database", health.check_database, self.config.database_dsn)
        queue_url = self.config.rabbitmq_url or (self.config.queue.url if self.config.queue else None)
        if queue_url:
            pending["queue"] = self._external_check("queue", health.check_amqp, queue_url)
        for name, result in zip(pending, await asyncio.gather(*pending.values()), strict=True):
            checks[name] = result
        checks["memory"] = health.check_memory(self.config.memory_limit_mb)
        state = self.state.current().for_version(agent.version)
        checks["lifecycle"] = (state.error is None, state.error or f"state {state.state}")
        ready = all(ok for ok, _detail in checks.values())
        return {
            "status": "ready" if ready else "not_ready",
            "agent": agent.agent,
            "version": agent.version,
            "slot": self.config.slot,
            "state": state.state,
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        }

    def serves_tasks(self) -> bool:
        """Whether the version served takes new tasks (the queue consumer asks): not paused, deprecated, archived."""
        return self.state.current().for_version(self.current.version).state not in ("paused", "deprecated", "archived")

    def record(self, agent: LoadedAgent, code: int, started: float) -> None:
        """One task answered, by HTTP or from the queue: the SLOs count both."""
        labels = self.labels(agent)
        self.metrics.requests.labels(*labels, str(code)).inc()
        self.metrics.duration.labels(*labels).observe(time.perf_counter() - started)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
        self._tracing.shutdown()
        if self._owns_sandbox and self._sandbox is not None:
            close = getattr(self._sandbox, "close", None)
            if close:
                close()


class Refused(Exception):
    """Ends a request early with this response (authentication, authorisation)."""

    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Refused:
    return Refused(_respond(status, {"error": message}, headers))


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        return exc.response


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _respond(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(payload, status=status, headers=headers, dumps=_json)


def _parse_task(data: Any) -> tuple[str, str | None, dict[str, Any]]:
    if not isinstance(data, dict):
        raise TaskError("the body must be a JSON object {input, session_id?, attributes?}", status=400)
    text, session_id, attributes = data.get("input"), data.get("session_id"), data.get("attributes")
    if not isinstance(text, str) or not text.strip():
        raise TaskError("input: a non-empty string is required", status=400)
    if session_id is not None and not isinstance(session_id, str):
        raise TaskError("session_id: a string", status=400)
    if attributes is not None and not isinstance(attributes, dict):
        raise TaskError("attributes: an object", status=400)
    unknown = sorted(set(data) - {"input", "session_id", "attributes"})
    if unknown:
        raise TaskError(f"unknown fields {unknown}", status=400)
    return text, session_id, attributes or {}


def _http_date(iso: str) -> str | None:
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return format_datetime((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC), usegmt=True)


def deprecation_headers(state: LifecycleState) -> dict[str, str]:
    """RFC 9745 Deprecation (`@<epoch>`) and RFC 8594 Sunset (an HTTP date) once a deprecation is announced."""
    headers = {}
    if state.deprecation:
        try:
            at = datetime.fromisoformat(state.deprecation)
            headers["Deprecation"] = f"@{int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())}"
        except ValueError:
            pass
    if state.sunset and (sunset := _http_date(state.sunset)):
        headers["Sunset"] = sunset
    return headers


def _lifecycle_refusal(
    state: LifecycleState, agent: LoadedAgent, principal: Principal | None, headers: dict[str, str]
) -> web.Response | None:
    """The answer a version's lifecycle state gives instead of serving the task, if any (seed 000 §1)."""
    what = f"{agent.agent} {agent.version}"
    if state.state == "paused":
        payload = {"error": f"{what} is paused", "state": "paused", "fallback_agent": state.fallback_agent,
                   "reason": state.reason or "paused by its operators"}  # fmt: skip
        return _respond(503, payload, {**headers, "Retry-After": str(state.retry_after)})
    if state.state in ("deprecated", "archived"):
        use = f"; use {agent.agent} {state.replacement}" if state.replacement else ""
        payload = {"error": f"{what} is {state.state}{use}", "state": state.state, "replacement": state.replacement,
                   "sunset": state.sunset, "fallback_agent": state.fallback_agent}  # fmt: skip
        return _respond(410, payload, headers)
    if state.visible_to is not None and principal is not None and principal.role not in state.visible_to:
        return _respond(
            403,
            {"error": f"{what} is {state.state}: its tasks are for {', '.join(state.visible_to)}, "
             f"not {principal.role}", "state": state.state},
        )  # fmt: skip
    return None


async def handle_task(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME_KEY]
    started = time.perf_counter()
    agent = rt.current  # this request is answered by this version, whatever a reload does meanwhile
    response: web.StreamResponse
    try:
        response = await _task(rt, agent, request)
    except Refused as exc:
        response = exc.response
    except TaskError as exc:
        response = _respond(exc.status, {"error": str(exc), "agent": agent.agent, "version": agent.version})
    except Exception:
        log.exception("task failed")
        response = _respond(500, {"error": "internal error", "agent": agent.agent, "version": agent.version})
    if not response.get(_FORWARDED, False):  # the variant counts what it answered
        rt.record(agent, response.status, started)
    return response


_FORWARDED = web.ResponseKey("chenu_forwarded", bool)


async def _task(rt: Runtime, agent: LoadedAgent, request: web.Request) -> web.Response:
    principal = rt.authorize(request, "caller")
    state = rt.state.current().for_version(agent.version)
    headers = deprecation_headers(state)
    if headers or state.state in ("deprecated", "archived"):  # who still calls a version on its way out
        rt.metrics.deprecated_calls.labels(*rt.labels(agent), principal.name).inc()
    refusal = _lifecycle_refusal(state, agent, principal, headers)
    if refusal is not None:
        return refusal
    if rt.in_flight >= rt.config.max_in_flight:
        return _respond(429, {"error": f"{rt.in_flight} tasks in flight; retry later"}, {"Retry-After": "1"})
    body = await request.read()
    try:
        data = json.loads(body)
    except ValueError:
        raise TaskError("the body is not JSON", status=400) from None
    route = None
    if rt.flags is not None and isinstance(data, dict) and FORWARDED_BY not in request.headers:
        route = await _route(rt, request, body, data)
        if isinstance(route, web.Response):
            return route
    status, payload = await execute_task(rt, agent, data)
    return _respond(status, payload, {**headers, ROUTE: route} if route else headers or None)


async def _route(rt: Runtime, request: web.Request, body: bytes, data: dict) -> web.Response | str:
    """The variant's answer, or how this slot's own answer is marked (stable or fallback)."""
    try:
        decision = await rt.flags.decide(request, data)
    except Exception:  # a broken flag never fails a task
        log.exception("release flag evaluation failed; answering from this slot")
        return "stable"
    if not decision.variant:
        return "stable"
    if decision.url is None:
        if decision.detail.flag_metadata.get("variant_slot") == rt.config.slot:
            return "variant"  # this slot is the variant
        rt.flags.fallback("no_url")
        return "fallback"
    answer = await rt.flags.forward(request, body, decision.url)
    if answer is None:
        return "fallback"
    answer[_FORWARDED] = True
    return answer


async def execute_task(rt: Runtime, agent: LoadedAgent, data: Any, *, transport: str = "http") -> tuple[int, dict]:
    """The task path of POST /v1/tasks and of the queue consumer: validate, answer, observe; never raises.

    Returns the HTTP status and the answer (or the error) as a JSON object.
    """
    try:
        text, session_id, attributes = _parse_task(data)
        rt.in_flight += 1
        rt.metrics.in_flight.labels(rt.config.slot).inc()
        try:
            with rt.span("task", agent=agent.agent, version=agent.version, slot=rt.config.slot, transport=transport):
                labels = rt.labels(agent)
                result: TaskResult = await rt.in_thread(
                    agent.run_task, text, rt.sandbox, session_id=session_id, attributes=attributes, span=rt.span,
                    on_provider_call=lambda *call: rt.metrics.provider_call(labels, *call),
                )  # fmt: skip
        finally:
            rt.in_flight -= 1
            rt.metrics.in_flight.labels(rt.config.slot).dec()
    except TaskError as exc:
        return exc.status, {"error": str(exc), "agent": agent.agent, "version": agent.version}
    except Exception:
        log.exception("task failed")
        return 500, {"error": "internal error", "agent": agent.agent, "version": agent.version}
    _observe(rt, agent, result)
    return 200, {
        "output": result.output,
        "tool_calls": [c.to_dict() for c in result.tool_calls],
        "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
        "agent": agent.agent,
        "version": agent.version,
        "slot": rt.config.slot,
        "session_id": session_id,
        "provider": result.provider,
        "fallbacks": result.fallbacks,
        "rounds": result.rounds,
    }


def _observe(rt: Runtime, agent: LoadedAgent, result: TaskResult) -> None:
    m, labels = rt.metrics, rt.labels(agent)
    m.tokens.labels(*labels, "input").inc(result.input_tokens)
    m.tokens.labels(*labels, "output").inc(result.output_tokens)
    m.answers.labels(*labels, result.provider).inc()
    if result.fallbacks:
        prefix = result.provider.partition("/")[0]
        m.fallbacks.labels(*labels, "openai_compatible" if prefix == "openai" else prefix).inc()
    for call in result.tool_calls:
        m.tool_calls.labels(*labels, call.name, call.outcome).inc()
        if call.sandbox_s is not None:
            m.sandbox.labels(*labels, call.name).observe(call.sandbox_s)


async def handle_live(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME_KEY]
    return _respond(200, {"status": "alive", "uptime_s": round(time.monotonic() - rt.started, 3)})


async def handle_ready(request: web.Request) -> web.Response:
    report = await request.app[RUNTIME_KEY].readiness()
    return _respond(200 if report["status"] == "ready" else 503, report)


async def handle_metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME_KEY]
    body = rt.metrics.render()
    return web.Response(body=body, headers={"Content-Type": rt.metrics.content_type})


async def handle_reload(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME_KEY]
    rt.authorize(request, "admin")
    outcome = await rt.reload()
    return _respond(200 if outcome["ok"] else 409, outcome)


async def handle_status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME_KEY]
    rt.authorize(request, "operator")
    raw = rt.state.current()
    state = raw.for_version(rt.current.version)
    return _respond(
        200,
        {
            "slot": rt.config.slot,
            "serving": rt.current.describe(),
            "state": state.state,
            "state_version": raw.version,  # the version the state file speaks of (null: any)
            "state_error": raw.error,
            "fallback_agent": state.fallback_agent,
            "replacement": state.replacement,
            "deprecation": state.deprecation,
            "sunset": state.sunset,
            "visible_to": list(state.visible_to) if state.visible_to is not None else None,
            "in_flight": rt.in_flight,
            "last_reload": rt.last_reload,
            "sandbox_mode": rt.config.sandbox_mode,
            "tracing": rt.tracing,
            "queue": rt.consumer.describe() if rt.consumer is not None else None,
            "feature_flag": rt.flags.describe() if rt.flags is not None else None,
        },
    )


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024, middlewares=[_refusals])
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/v1/tasks", handle_task)
    app.router.add_get("/health/live", handle_live)
    app.router.add_get("/health/ready", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_post("/admin/reload", handle_reload)
    app.router.add_get("/admin/status", handle_status)

    if runtime.config.queue is not None:
        from .queue import TaskConsumer  # aio-pika is imported only when tasks come from a queue

        consumer = runtime.consumer = TaskConsumer(runtime, runtime.config.queue, execute_task)

        async def on_startup(_app: web.Application) -> None:
            consumer.start()

        async def on_shutdown(_app: web.Application) -> None:
            # Before the thread pool closes: queued tasks in flight finish and are acknowledged.
            await consumer.stop(runtime.config.shutdown_timeout_s)

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)

    async def on_cleanup(_app: web.Application) -> None:
        if runtime.flags is not None:
            await runtime.flags.aclose()
        await asyncio.to_thread(runtime.close)

    app.on_cleanup.append(on_cleanup)
    return app
