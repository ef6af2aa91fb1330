"""Runtime settings: one YAML or JSON file, each key overridable by a `CHENU_RUNTIME_<KEY>` variable.

Secrets never sit in the file: provider API keys come from the environment (`ANTHROPIC_API_KEY`,
`OPENAI_API_KEY`, or the variable named in `provider_api_key_env`), and the tokens file holds only the
SHA-256 of each bearer token (`python -m chenu_agents.runtime --hash-token` prints it).

    bundle: /var/lib/chenu/slots/legal_info-blue/agent.tar.zst     # signature: <bundle>.sig
    trust_store: /etc/chenu/trust.json
    accepted_versions: /var/lib/chenu/slots/legal_info-blue/accepted.json   # one per slot
    slot: blue
    port: 8101
    tokens_file: /etc/chenu/runtime/tokens.yaml
    state_file: /var/lib/chenu/slots/legal_info-blue/state.json   # written by chenu_agents.reconcile
    memory_limit_mb: 1024
    database_dsn: postgresql://chenu@127.0.0.1/chenu                # readiness only
    rabbitmq_url: amqp://chenu@127.0.0.1:5672/chenu                 # readiness only
    queue: {url: "amqp://runtime@127.0.0.1:5672/chenu", prefetch: 4}  # consume tasks (name: chenu.tasks.<agent>)
    tracing: otlp_http                                              # or console; off by default
    tracing_endpoint: http://127.0.0.1:4318/v1/traces
    llm_chain: [scripted/legal_info]                                # development and sandbox
    provider_base_urls: {openai: "http://127.0.0.1:11434/v1"}
    feature_flag: {file: /etc/chenu-agents/runtime/flags.json,                # release flag (flags.py)
                   redis_url: "redis://127.0.0.1:6379/0", redis_password_env: CHENU_REDIS_PASSWORD}

The accepted-versions file belongs to the slot: two slots of one agent sharing it would see the
older slot's restart as a rollback.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from chenu_agents.errors import Problem, RuntimeConfigError
from chenu_agents.safeload import load_yaml_data

ENV_PREFIX = "CHENU_RUNTIME_"
# Roles of bearer tokens. Rank decides the admin endpoints (operator: status, admin: reload); which roles may
# call a version's tasks depends on its lifecycle state (LifecycleState.visible_to, from the state file).
ROLES = ("caller", "developer", "tester", "operator", "admin")
ROLE_RANK = {"caller": 0, "developer": 0, "tester": 0, "operator": 1, "admin": 2}
STATES = ("draft", "testing", "staged", "active", "paused", "deprecated", "archived")
DEFAULT_API_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
_PATHS = {"bundle", "signature", "trust_store", "accepted_versions", "tokens_file", "state_file", "work_dir"}
_INTS = {"port", "max_rounds", "max_in_flight", "workers", "memory_limit_mb"}
_FLOATS = {"health_timeout_s", "health_cache_s", "shutdown_timeout_s"}
_BOOLS = {"allow_rollback"}
_MAPPINGS = {"provider_base_urls", "provider_api_key_env", "llm_parameters"}
_LISTS = {"llm_chain"}
_JSON_ENV = _MAPPINGS | _LISTS | {"queue", "feature_flag"}
TRACING = ("none", "console", "otlp_http", "otlp")  # otlp: the former name of otlp_http
QUEUE_PREFIX = "chenu.tasks."  # roles/rabbitmq: rabbitmq_task_queue_prefix
FORWARDED_BY_HEADER = "X-Chenu-Forwarded-By"  # a task forwarded by the release flag: never forwarded again
FLAG_ROUTE_HEADER = "X-Chenu-Flag-Route"  # stable | variant | fallback, on answers of a flag-evaluating slot


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class QueueSettings:
    """Tasks from RabbitMQ: the agent's durable queue, declared by roles/rabbitmq, consumed with manual ack.

    The password may stay out of the URL: `password_env` names the variable that holds it.
    """

    url: str
    name: str | None = None  # default: chenu.tasks.<agent>
    prefetch: int = 4  # also the number of queued tasks answered at once
    password_env: str | None = None
    lifecycle_poll_s: float = 1.0  # how soon a pause or deprecation stops the consumer
    reconnect_s: float = 5.0

    @classmethod
    def from_mapping(cls, data: Any) -> QueueSettings:
        if not isinstance(data, Mapping):
            raise TypeError("a mapping {url, name?, prefetch?, password_env?}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {', '.join(sorted(known))}")
        url = data.get("url")
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"url: an amqp:// or amqps:// URL (got {url!r})")
        prefetch = int(data.get("prefetch", cls.prefetch))
        if prefetch < 1:
            raise ValueError(f"prefetch: at least 1 (got {prefetch})")
        return cls(
            url=url,
            name=str(data["name"]) if data.get("name") else None,
            prefetch=prefetch,
            password_env=str(data["password_env"]) if data.get("password_env") else None,
            lifecycle_poll_s=float(data.get("lifecycle_poll_s", cls.lifecycle_poll_s)),
            reconnect_s=float(data.get("reconnect_s", cls.reconnect_s)),
        )

    def queue_name(self, agent: str) -> str:
        return self.name or f"{QUEUE_PREFIX}{agent}"

    def connection_url(self, environ: Mapping[str, str] | None = None) -> str:
        if not self.password_env:
            return self.url
        environ = os.environ if environ is None else environ
        password = environ.get(self.password_env)
        if not password:
            raise RuntimeConfigError(
                f"queue: {self.password_env} is not set", [Problem("runtime config", "queue.password_env", "set")]
            )
        parts = urlsplit(self.url)
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class FeatureFlagSettings:
    """The agent's release flag, evaluated per task request (docs/feature_flags.md).

    `file` is the flags file `chenu.agents.feature_flag` writes; `flag` defaults to `<agent>.release`.
    `variant_url` is used when the flag names no URL. Stickiness lives in Redis when `redis_url` is set
    (password from the variable `redis_password_env`), else in a bounded in-process LRU.
    """

    file: Path
    flag: str | None = None
    variant_url: str | None = None
    redis_url: str | None = None
    redis_password_env: str | None = None
    redis_timeout_s: float = 0.25
    sticky_prefix: str = "chenu:flags:"
    sticky_ttl_s: float = 86_400.0
    sticky_max_sessions: int = 100_000
    internal_groups: tuple[str, ...] = ("internal",)
    beta_groups: tuple[str, ...] = ("beta",)
    check_interval_s: float = 0.1  # how often the flags file is stat'ed at most
    connect_timeout_s: float = 1.0
    forward_timeout_s: float = 120.0

    @classmethod
    def from_mapping(cls, data: Any) -> FeatureFlagSettings:
        if not isinstance(data, Mapping):
            raise TypeError("a mapping {file, flag?, variant_url?, redis_url?, sticky_ttl_s?, ...}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {', '.join(sorted(known))}")
        if not data.get("file"):
            raise ValueError("file: the flags file's path")
        values: dict[str, Any] = {"file": Path(data["file"])}
        for name in ("flag", "variant_url", "redis_url", "redis_password_env", "sticky_prefix"):
            if data.get(name) is not None:
                values[name] = str(data[name])
        for name in ("redis_timeout_s", "sticky_ttl_s", "check_interval_s", "connect_timeout_s", "forward_timeout_s"):
            if data.get(name) is not None:
                values[name] = float(data[name])
                if values[name] < 0:
                    raise ValueError(f"{name}: at least 0 (got {values[name]})")
        if data.get("sticky_max_sessions") is not None:
            values["sticky_max_sessions"] = int(data["sticky_max_sessions"])
            if values["sticky_max_sessions"] < 1:
                raise ValueError("sticky_max_sessions: at least 1")
        for name in ("internal_groups", "beta_groups"):
            groups = data.get(name)
            if groups is not None:
                values[name] = tuple(str(g) for g in ([groups] if isinstance(groups, str) else groups))
        for name in ("variant_url", "redis_url"):
            url = values.get(name)
            schemes = ("http", "https") if name == "variant_url" else ("redis", "rediss", "unix")
            if url is not None and urlsplit(url).scheme not in schemes:
                raise ValueError(f"{name}: a {' or '.join(s + '://' for s in schemes)} URL (got {url!r})")
        return cls(**values)

    def redis_password(self, environ: Mapping[str, str] | None = None) -> str | None:
        if not self.redis_password_env:
            return None
        environ = os.environ if environ is None else environ
        password = environ.get(self.redis_password_env)
        if not password:
            raise RuntimeConfigError(
                f"feature_flag: {self.redis_password_env} is not set",
                [Problem("runtime config", "feature_flag.redis_password_env", "set")],
            )
        return password


@dataclass(frozen=True)
class RuntimeConfig:
    bundle: Path
    trust_store: Path
    accepted_versions: Path
    slot: str
    signature: Path | None = None  # default: <bundle>.sig
    agent: str | None = None  # when set, a bundle signed for another agent is refused
    host: str = "127.0.0.1"
    port: int = 8100
    tokens_file: Path | None = None
    state_file: Path | None = None
    work_dir: Path | None = None  # where the bundle is unpacked; default: a private temporary directory
    memory_limit_mb: int | None = None
    database_dsn: str | None = None
    rabbitmq_url: str | None = None  # readiness only; `queue` consumes
    queue: QueueSettings | None = None
    feature_flag: FeatureFlagSettings | None = None
    allow_rollback: bool = False
    llm_chain: tuple[str, ...] = ()  # replaces the bundle's primary + fallbacks (e.g. scripted only)
    llm_parameters: Mapping[str, Any] = field(default_factory=dict)  # merged over the bundle's
    provider_base_urls: Mapping[str, str] = field(default_factory=dict)
    provider_api_key_env: Mapping[str, str] = field(default_factory=dict)
    max_rounds: int = 4
    max_in_flight: int = 64
    workers: int = 16
    sandbox_mode: str = "pooled"  # pooled (warm interpreter per handler) | per_call (fresh one per call)
    tracing: str = "none"  # none | console | otlp_http
    tracing_endpoint: str | None = None  # otlp_http; default: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or localhost:4318
    health_timeout_s: float = 1.0
    health_cache_s: float = 2.0
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not self.slot or not isinstance(self.slot, str):
            problems.append(Problem("runtime config", "slot", "a non-empty slot name (blue, green, canary...)"))
        if not 0 <= self.port <= 65535:
            problems.append(Problem("runtime config", "port", f"0..65535 (got {self.port})"))
        if self.sandbox_mode not in ("per_call", "pooled"):
            problems.append(
                Problem("runtime config", "sandbox_mode", f"per_call or pooled (got {self.sandbox_mode!r})")
            )
        if self.tracing not in TRACING:
            problems.append(Problem("runtime config", "tracing", f"none, console or otlp_http (got {self.tracing!r})"))
        if self.max_rounds < 1 or self.max_in_flight < 1 or self.workers < 1:
            problems.append(Problem("runtime config", "max_rounds/max_in_flight/workers", "at least 1"))
        if problems:
            raise RuntimeConfigError("invalid runtime configuration", problems)

    @property
    def signature_path(self) -> Path:
        return self.signature or Path(f"{self.bundle}.sig")

    def api_keys(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        environ = os.environ if environ is None else environ
        names = {**DEFAULT_API_KEY_ENV, **self.provider_api_key_env}
        return {provider: environ[name] for provider, name in names.items() if environ.get(name)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "runtime config") -> RuntimeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RuntimeConfigError(
                f"{source}: unknown settings {unknown}", [Problem(source, k, "a known setting") for k in unknown]
            )
        missing = [k for k in ("bundle", "trust_store", "accepted_versions", "slot") if not data.get(k)]
        if missing:
            raise RuntimeConfigError(
                f"{source}: missing settings {missing}", [Problem(source, k, "required") for k in missing]
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            try:
                values[key] = _coerce(key, value)
            except (TypeError, ValueError) as exc:
                raise RuntimeConfigError(f"{source}: {key}: {exc}", [Problem(source, key, str(exc))]) from None
        return cls(**values)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> RuntimeConfig:
        """The file's settings (if any), then `CHENU_RUNTIME_*` variables over them."""
        environ = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        source = "environment"
        if path is not None:
            source = str(path)
            try:
                # Bounded: bytes, nodes with aliases counted expanded, depth, no duplicate key.
                loaded = load_yaml_data(Path(path).read_bytes(), source, error=RuntimeConfigError)
            except OSError as exc:
                raise RuntimeConfigError(
                    f"cannot read {path}", [Problem(source, "(file)", f"a readable file ({exc.strerror})")]
                ) from None
            if loaded is not None and not isinstance(loaded, dict):
                raise RuntimeConfigError(f"{path}: expected a mapping", [Problem(source, "(root)", "a mapping")])
            data.update(loaded or {})
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                data[f.name] = json.loads(raw) if f.name in _JSON_ENV else raw
        return cls.from_mapping(data, source)


def _coerce(key: str, value: Any) -> Any:
    if key == "queue":
        return QueueSettings.from_mapping(value)
    if key == "feature_flag":
        return FeatureFlagSettings.from_mapping(value)
    if key in _PATHS:
        return Path(value)
    if key in _INTS:
        return int(value)
    if key in _FLOATS:
        return float(value)
    if key in _BOOLS:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"a boolean (got {value!r})")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if key in _MAPPINGS:
        if not isinstance(value, Mapping):
            raise TypeError("a mapping")
        return dict(value)
    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        return tuple(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class Tokens:
    """Bearer tokens by their SHA-256; ranks: caller = developer = tester < operator < admin.

    File: `{tokens: [{name: ci, role: caller, sha256: <hex>}]}` (YAML or JSON).
    """

    def __init__(self, by_digest: Mapping[str, Principal] | None = None):
        self._by_digest = dict(by_digest or {})

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> Principal | None:
        return self._by_digest.get(hash_token(token))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Tokens:
        if path is None:
            return cls()
        where = str(path)
        try:
            data = load_yaml_data(Path(path).read_bytes(), where, error=RuntimeConfigError) or {}
        except OSError as exc:
            raise RuntimeConfigError(f"cannot read tokens file {path}", [Problem(where, "(file)", str(exc))]) from None
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise RuntimeConfigError(f"{path}: malformed", [Problem(where, "tokens", "a list")])
        out: dict[str, Principal] = {}
        problems = []
        for i, entry in enumerate(entries):
            digest = str((entry or {}).get("sha256", "")).lower()
            role = (entry or {}).get("role")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                problems.append(Problem(where, f"tokens[{i}].sha256", "64 hex digits (the token's SHA-256)"))
            if role not in ROLES:
                problems.append(Problem(where, f"tokens[{i}].role", f"one of {', '.join(ROLES)} (got {role!r})"))
            out[digest] = Principal(str(entry.get("name") or f"token{i}"), str(role))
        if problems:
            raise RuntimeConfigError(f"{path}: malformed tokens", problems)
        return cls(out)


@dataclass(frozen=True)
class LifecycleState:
    """What the registry says of the version a slot serves (chenu_agents.reconcile writes the file)."""

    state: str = "active"
    fallback_agent: str | None = None
    error: str | None = None  # the state file could not be read: the last good state stays in force
    version: str | None = None  # the version the state is about; another version in the slot ignores it
    replacement: str | None = None  # deprecated: the version callers should use instead
    deprecation: str | None = None  # ISO 8601: when the deprecation was announced (Deprecation header)
    sunset: str | None = None  # ISO 8601: when the version stops answering (Sunset header, RFC 8594)
    reason: str | None = None
    retry_after: int = 30  # paused with no fallback: seconds in Retry-After
    visible_to: tuple[str, ...] | None = None  # roles that may call its tasks; None: every role

    def for_version(self, version: str) -> LifecycleState:
        """The state as it applies to `version`: a state written for another version does not."""
        if self.version is None or self.version == version:
            return self
        return LifecycleState(error=self.error)


_STATE_KEYS = {"state", "fallback_agent", "version", "replacement", "deprecation", "sunset", "reason",
               "retry_after", "visible_to", "registry_state", "written_at", "run_id", "note"}  # fmt: skip


class StateFile:
    """The lifecycle state the registry (chenu_agents.reconcile) writes; re-read only when the file changes.

    `{"state": "paused", "version": "1.2.0", "fallback_agent": "estimator", ...}`: every key but `state` is
    optional; a file that cannot be read or says something unknown leaves the last good state in force.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._state = LifecycleState()

    def current(self) -> LifecycleState:
        if self.path is None:
            return self._state
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._state = None, LifecycleState()
            return self._state
        except OSError as exc:
            return replace(self._state, error=str(exc))
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._state = self._read()
            if self._state.error is None:
                self._stamp = stamp
        return self._state

    def _read(self) -> LifecycleState:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return parse_state(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return replace(self._state, error=f"{self.path}: {exc}")


def parse_state(data: Mapping[str, Any]) -> LifecycleState:
    """A state file's object as a LifecycleState; ValueError naming the field otherwise."""
    state = data["state"]
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    unknown = sorted(set(data) - _STATE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}")
    visible = data.get("visible_to")
    if visible is not None:
        if not isinstance(visible, list) or any(role not in ROLES for role in visible):
            raise ValueError(f"visible_to: a list of roles among {', '.join(ROLES)} (got {visible!r})")
        visible = tuple(visible)
    retry_after = data.get("retry_after", 30)
    if not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after: a whole number of seconds (got {retry_after!r})")

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value) if value not in (None, "") else None

    return LifecycleState(
        state,
        text("fallback_agent"),
        None,
        text("version"),
        text("replacement"),
        text("deprecation"),
        text("sunset"),
        text("reason"),
        retry_after,
        visible,
    )
