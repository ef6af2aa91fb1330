"""Release flags: an agent's new version shown to internal users, then beta users, then everyone.

Seed 000 §4.1 `feature_flag`: deploy with the flag off, enable it for internal users, then beta users,
then all; a rollback turns the flag off. The flag of agent `A` is `A.release` by default; its value is
`stable` (the slot that received the request answers) or `variant` (the slot named in the flag answers).

The flags file (JSON, one per runtime host, written whole by `set_stage`, read by every slot):

    {"format": 1,
     "flags": {"legal_info.release": {
         "agent": "legal_info", "stage": "beta",                       # off | internal | beta | all
         "variant": {"slot": "green", "version": "1.3.0", "url": "http://127.0.0.1:8102"},
         "internal_groups": ["internal"], "beta_groups": ["beta"],     # optional; else the runtime's
         "epoch": "9f1c2a7e4b3d", "updated": "2025-01-01T00:00:00+00:00"}}}

Evaluation goes through OpenFeature: `ReleaseFlagProvider` is a provider of our own; the caller passes
an `EvaluationContext` whose targeting key is the session id and whose attributes are `user` and
`groups`. Stage rules: off gives stable to everyone; internal gives the variant to members of an
internal group; beta to members of an internal or a beta group; all to everyone.

Sticky per session: the first answer a session gets while the flag is on is remembered (under the
flag's epoch) and given again for as long as the flag stays on, whatever the stage does meanwhile, so a
conversation never changes version midway. Turning the flag off answers stable at once without looking
at the store, and the next time it goes on (or its variant changes) it gets a new epoch, so no earlier
assignment comes back. The price: after `all`, sessions that started on stable finish on stable, until
their stickiness expires (`ttl_s`, sliding).

Sticky stores: `LruStickyStore` (this process only; bounded; nothing to run, nothing to fail; but two
processes that serve one session may disagree and a restart forgets) and `RedisStickyStore` (shared by
every process and host that reads the same Redis, survives restarts; one round trip per request, and a
store error falls back to the stage rule for that request, never to a failure).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from chenu_agents.errors import ChenuError, Problem
from chenu_agents.files import atomic_write

STAGES = ("off", "internal", "beta", "all")
STABLE, VARIANT = "stable", "variant"
FORMAT = 1
DEFAULT_INTERNAL_GROUPS = ("internal",)
DEFAULT_BETA_GROUPS = ("beta",)
DEFAULT_PREFIX = "chenu:flags:"


class FlagError(ChenuError):
    """A flags file or a flag change is unusable."""


def release_flag_key(agent: str) -> str:
    return f"{agent}.release"


@dataclass(frozen=True)
class Variant:
    slot: str
    version: str | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "version": self.version, "url": self.url}

    @classmethod
    def from_mapping(cls, data: Any, where: str, at: str) -> Variant:
        problems = []
        if not isinstance(data, Mapping):
            raise FlagError(f"{where}: {at}", [Problem(where, at, "a mapping {slot, version, url}")])
        unknown = sorted(set(data) - {"slot", "version", "url"})
        if unknown:
            problems.append(Problem(where, f"{at}.{unknown[0]}", "one of slot, version, url"))
        slot, version, url = data.get("slot"), data.get("version"), data.get("url")
        if not isinstance(slot, str) or not slot:
            problems.append(Problem(where, f"{at}.slot", f"the variant's slot name (got {slot!r})"))
        if version is not None and not isinstance(version, str):
            problems.append(Problem(where, f"{at}.version", f"a version string (got {version!r})"))
        if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https")):
            problems.append(Problem(where, f"{at}.url", f"the variant slot's http(s):// base URL (got {url!r})"))
        if problems:
            raise FlagError(f"{where}: invalid variant", problems)
        return cls(slot, version, url.rstrip("/") if url else None)


@dataclass(frozen=True)
class ReleaseFlag:
    key: str
    agent: str
    stage: str = "off"
    variant: Variant | None = None
    internal_groups: tuple[str, ...] | None = None  # None: the evaluator's defaults
    beta_groups: tuple[str, ...] | None = None
    epoch: str = ""
    updated: str | None = None

    def decide(self, groups: frozenset[str], internal: Sequence[str], beta: Sequence[str]) -> str:
        """The stage rule alone (no stickiness): `variant` or `stable`."""
        if self.stage == "all":
            return VARIANT
        if self.stage == "off" or not groups:
            return STABLE
        allowed = set(self.internal_groups if self.internal_groups is not None else internal)
        if self.stage == "beta":
            allowed |= set(self.beta_groups if self.beta_groups is not None else beta)
        return VARIANT if allowed & groups else STABLE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent": self.agent, "stage": self.stage, "epoch": self.epoch, "updated": self.updated}
        out["variant"] = self.variant.to_dict() if self.variant else None
        if self.internal_groups is not None:
            out["internal_groups"] = list(self.internal_groups)
        if self.beta_groups is not None:
            out["beta_groups"] = list(self.beta_groups)
        return out

    @classmethod
    def from_mapping(cls, key: str, data: Any, where: str) -> ReleaseFlag:
        at = f"flags.{key}"
        if not isinstance(data, Mapping):
            raise FlagError(f"{where}: {at}", [Problem(where, at, "a mapping")])
        problems = []
        known = {"agent", "stage", "variant", "internal_groups", "beta_groups", "epoch", "updated"}
        for name in sorted(set(data) - known):
            problems.append(Problem(where, f"{at}.{name}", f"one of {', '.join(sorted(known))}"))
        stage = data.get("stage", "off")
        if stage not in STAGES:
            problems.append(Problem(where, f"{at}.stage", f"one of {', '.join(STAGES)} (got {stage!r})"))
        agent = data.get("agent") or key.rsplit(".", 1)[0]
        groups: dict[str, tuple[str, ...] | None] = {}
        for name in ("internal_groups", "beta_groups"):
            value = data.get(name)
            if value is not None and (not isinstance(value, list) or not all(isinstance(g, str) for g in value)):
                problems.append(Problem(where, f"{at}.{name}", "a list of group names"))
                value = None
            groups[name] = tuple(value) if value is not None else None
        variant = None
        try:
            if data.get("variant") is not None:
                variant = Variant.from_mapping(data["variant"], where, f"{at}.variant")
        except FlagError as exc:
            problems.extend(exc.problems)
        if stage != "off" and stage in STAGES and variant is None:
            problems.append(Problem(where, f"{at}.variant", f"a variant {{slot, version, url}} for stage {stage}"))
        if problems:
            raise FlagError(f"{where}: invalid flag {key}", problems)
        return cls(
            key=key,
            agent=str(agent),
            stage=stage,
            variant=variant,
            internal_groups=groups["internal_groups"],
            beta_groups=groups["beta_groups"],
            epoch=str(data.get("epoch") or ""),
            updated=data.get("updated"),
        )


def parse_flags(data: Any, where: str) -> dict[str, ReleaseFlag]:
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not isinstance(data.get("flags", {}), Mapping):
        raise FlagError(f"{where}: malformed", [Problem(where, "flags", "a mapping of flag key to flag")])
    if data.get("format", FORMAT) != FORMAT:
        raise FlagError(f"{where}: format", [Problem(where, "format", f"{FORMAT} (got {data.get('format')!r})")])
    flags, problems = {}, []
    for key, value in data.get("flags", {}).items():
        try:
            flags[str(key)] = ReleaseFlag.from_mapping(str(key), value, where)
        except FlagError as exc:
            problems.extend(exc.problems)
    if problems:
        raise FlagError(f"{where}: invalid flags", problems)
    return flags


def read_flags(path: str | os.PathLike[str]) -> dict[str, ReleaseFlag]:
    """The flags of a file; a missing file holds none."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise FlagError(
            f"cannot read {where}", [Problem(where, "(file)", f"a readable file ({exc.strerror})")]
        ) from None
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        raise FlagError(f"{where} is not JSON", [Problem(where, "(file)", f"JSON ({exc})")]) from None
    return parse_flags(data, where)


def render_flags(flags: Mapping[str, ReleaseFlag]) -> bytes:
    body = {"format": FORMAT, "flags": {key: flags[key].to_dict() for key in sorted(flags)}}
    return (json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise writers of one flags file (read, change, write) on a lock file next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_stage(
    path: str | os.PathLike[str],
    agent: str,
    stage: str,
    *,
    flag: str | None = None,
    variant: Mapping[str, Any] | None = None,
    internal_groups: Sequence[str] | None = None,
    beta_groups: Sequence[str] | None = None,
    check_mode: bool = False,
    mode: int = 0o644,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Put an agent's release flag at `stage`; returns {flag, previous_stage, stage, changed, before, after}.

    Omitted `variant` and groups keep what the file holds. The epoch changes when the flag goes on from
    off or its variant changes: sessions remembered under the old epoch are forgotten.
    """
    path = Path(path)
    where = "(task)"
    key = flag or release_flag_key(agent)
    problems = []
    if not agent:
        problems.append(Problem(where, "agent", "the agent's id"))
    if stage not in STAGES:
        problems.append(Problem(where, "stage", f"one of {', '.join(STAGES)} (got {stage!r})"))
    new_variant = None
    if variant is not None:
        try:
            new_variant = Variant.from_mapping({k: v for k, v in variant.items() if v is not None}, where, "variant")
        except FlagError as exc:
            problems.extend(exc.problems)
    if problems:
        raise FlagError("invalid flag change", problems)
    with _locked(path):
        flags = read_flags(path)
        old = flags.get(key)
        base = old or ReleaseFlag(key=key, agent=agent)
        new = replace(
            base,
            agent=agent,
            stage=stage,
            variant=new_variant or base.variant,
            internal_groups=tuple(internal_groups) if internal_groups is not None else base.internal_groups,
            beta_groups=tuple(beta_groups) if beta_groups is not None else base.beta_groups,
        )
        if stage != "off" and new.variant is None:
            raise FlagError(
                f"{key}: no variant", [Problem(where, "variant", f"{{slot, version, url}} for stage {stage}")]
            )
        if stage != "off" and new.variant is not None and not new.variant.url:
            raise FlagError(
                f"{key}: no variant URL", [Problem(where, "variant.url", "the variant slot's http(s):// base URL")]
            )
        was_on = old is not None and old.stage != "off"
        if stage != "off" and (not was_on or not old.epoch or old.variant != new.variant):
            new = replace(new, epoch=secrets.token_hex(6))
        changed = old is None or replace(new, updated=None, epoch="") != replace(old, updated=None, epoch="")
        changed = changed or (old is not None and new.epoch != old.epoch)
        if changed:
            new = replace(new, updated=now().isoformat(timespec="seconds"))
            if not check_mode:
                flags[key] = new
                atomic_write(path, render_flags(flags), mode)
        else:
            new = old  # type: ignore[assignment]
    return {
        "flag": key,
        "previous_stage": old.stage if old else None,
        "stage": stage,
        "changed": changed,
        "before": old.to_dict() if old else None,
        "after": new.to_dict(),
    }


class FlagSource:
    """The flags of one file, re-read when its mtime or size changes; stat at most every `check_interval_s`.

    An unreadable or invalid file keeps the last good flags in force (`error` says why).
    """

    def __init__(self, path: str | os.PathLike[str], check_interval_s: float = 0.1):
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self.error: str | None = None
        self._flags: dict[str, ReleaseFlag] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def flags(self) -> dict[str, ReleaseFlag]:
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return self._flags
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._flags, self._stamp, self.error = {}, None, None
                return self._flags
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror}"
                return self._flags
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    self._flags, self.error = read_flags(self.path), None
                    self._stamp = stamp
                except FlagError as exc:
                    self.error = str(exc)
            return self._flags

    def get(self, key: str) -> ReleaseFlag | None:
        return self.flags().get(key)


# -- sticky stores ------------------------------------------------------------------------------


class StickyStore(Protocol):
    def get_or_set(self, key: str, value: str) -> tuple[str, bool]:
        """The value remembered under `key` (and True), or `value` now remembered (and False)."""

    async def aget_or_set(self, key: str, value: str) -> tuple[str, bool]: ...

    def close(self) -> None: ...


class LruStickyStore:
    """In this process: at most `max_entries` sessions, least recently used evicted, each for `ttl_s`."""

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 86_400.0):
        if max_entries < 1:
            raise ValueError("max_entries: at least 1")
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_set(self, key: str, value: str) -> tuple[str, bool]:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                self._entries[key] = (entry[0], now + self.ttl_s)  # sliding
                self._entries.move_to_end(key)
                return entry[0], True
            self._entries[key] = (value, now + self.ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return value, False

    async def aget_or_set(self, key: str, value: str) -> tuple[str, bool]:
        return self.get_or_set(key, value)

    def close(self) -> None:
        self._entries.clear()


class RedisStickyStore:
    """In Redis, under `prefix`, each key for `ttl_s` (sliding): one round trip when the session is known
    (GETEX), two the first time (GETEX, then SET NX GET, which settles a race between two processes)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: float = 86_400.0,
        timeout_s: float = 0.25,
    ):
        import redis

        self.url, self.prefix, self.ttl = url, prefix, max(1, int(ttl_s))
        self._kwargs = {"password": password, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        self._sync = redis.Redis.from_url(url, decode_responses=True, **self._kwargs)
        self._async: Any = None

    def _async_client(self) -> Any:
        if self._async is None:
            import redis.asyncio

            self._async = redis.asyncio.Redis.from_url(self.url, decode_responses=True, **self._kwargs)
        return self._async

    def get_or_set(self, key: str, value: str) -> tuple[str, bool]:
        name = self.prefix + key
        known = self._sync.getex(name, ex=self.ttl)
        if known is not None:
            return known, True
        raced = self._sync.set(name, value, ex=self.ttl, nx=True, get=True)
        return (raced, True) if raced is not None else (value, False)

    async def aget_or_set(self, key: str, value: str) -> tuple[str, bool]:
        client, name = self._async_client(), self.prefix + key
        known = await client.getex(name, ex=self.ttl)
        if known is not None:
            return known, True
        raced = await client.set(name, value, ex=self.ttl, nx=True, get=True)
        return (raced, True) if raced is not None else (value, False)

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None


# -- the OpenFeature provider -------------------------------------------------------------------


def groups_of(value: Any) -> frozenset[str]:
    """`groups` as a list or a comma-separated string."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(g.strip() for g in value.split(",") if g.strip())
    if isinstance(value, Sequence):
        return frozenset(str(g).strip() for g in value if str(g).strip())
    return frozenset()


def evaluation_context(session: str | None, user: str | None = None, groups: Any = None) -> EvaluationContext:
    attributes: dict[str, Any] = {"groups": sorted(groups_of(groups))}
    if user:
        attributes["user"] = user
    return EvaluationContext(targeting_key=session or None, attributes=attributes)


@dataclass
class ProviderStats:
    sticky_errors: int = 0
    last_sticky_error: str | None = None
    by_sticky: dict[str, int] = field(default_factory=dict)


class ReleaseFlagProvider(AbstractProvider):
    """String flags `stable`/`variant` from a `FlagSource`, sticky per targeting key in a `StickyStore`.

    Boolean evaluation answers whether the variant is chosen. Flag metadata carries the stage, epoch,
    the variant's slot, version and URL, and `sticky` (hit, new, none or error).
    """

    def __init__(
        self,
        source: FlagSource,
        store: StickyStore | None = None,
        *,
        internal_groups: Sequence[str] = DEFAULT_INTERNAL_GROUPS,
        beta_groups: Sequence[str] = DEFAULT_BETA_GROUPS,
    ):
        super().__init__()
        self.source = source
        self.store: StickyStore = store if store is not None else LruStickyStore()
        self.internal_groups, self.beta_groups = tuple(internal_groups), tuple(beta_groups)
        self.stats = ProviderStats()

    def get_metadata(self) -> Metadata:
        return Metadata(name="chenu-release-flags")

    def shutdown(self) -> None:
        self.store.close()

    # One decision, split around the store call so that the sync and async paths share it.
    def _prepare(
        self, key: str, ctx: EvaluationContext | None
    ) -> tuple[ReleaseFlag | None, str | None, str, FlagResolutionDetails[str] | None]:
        flag = self.source.get(key)
        if flag is None:
            detail = f"no flag {key} in {self.source.path}" + (f" ({self.source.error})" if self.source.error else "")
            return (
                None,
                None,
                STABLE,
                FlagResolutionDetails(
                    value=STABLE, reason=Reason.ERROR, error_code=ErrorCode.FLAG_NOT_FOUND, error_message=detail
                ),
            )
        meta = self._metadata(flag, "none")
        if flag.stage == "off":
            return (
                flag,
                None,
                STABLE,
                FlagResolutionDetails(value=STABLE, variant=STABLE, reason=Reason.DISABLED, flag_metadata=meta),
            )
        attrs = ctx.attributes if ctx is not None else {}
        candidate = flag.decide(groups_of(attrs.get("groups")), self.internal_groups, self.beta_groups)
        target = ctx.targeting_key if ctx is not None else None
        if not target:
            return flag, None, candidate, self._details(flag, candidate, "none")
        return flag, f"{key}:{flag.epoch}:{target}", candidate, None

    def _details(self, flag: ReleaseFlag, value: str, sticky: str) -> FlagResolutionDetails[str]:
        self.stats.by_sticky[sticky] = self.stats.by_sticky.get(sticky, 0) + 1
        reason = Reason.CACHED if sticky == "hit" else Reason.TARGETING_MATCH
        return FlagResolutionDetails(
            value=value, variant=value, reason=reason, flag_metadata=self._metadata(flag, sticky)
        )

    @staticmethod
    def _metadata(flag: ReleaseFlag, sticky: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"stage": flag.stage, "epoch": flag.epoch, "sticky": sticky}
        if flag.variant is not None:
            meta["variant_slot"] = flag.variant.slot
            if flag.variant.version:
                meta["variant_version"] = flag.variant.version
            if flag.variant.url:
                meta["variant_url"] = flag.variant.url
        return meta

    def _store_failed(self, flag: ReleaseFlag, candidate: str, exc: Exception) -> FlagResolutionDetails[str]:
        self.stats.sticky_errors += 1
        self.stats.last_sticky_error = f"{type(exc).__name__}: {exc}"
        return self._details(flag, candidate, "error")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        flag, sticky_key, candidate, done = self._prepare(flag_key, evaluation_context)
        if done is not None:
            return done
        assert flag is not None and sticky_key is not None
        try:
            value, hit = self.store.get_or_set(sticky_key, candidate)
        except Exception as exc:  # a store outage must not decide the answer
            return self._store_failed(flag, candidate, exc)
        return self._details(flag, value, "hit" if hit else "new")

    async def resolve_string_details_async(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        flag, sticky_key, candidate, done = self._prepare(flag_key, evaluation_context)
        if done is not None:
            return done
        assert flag is not None and sticky_key is not None
        try:
            value, hit = await self.store.aget_or_set(sticky_key, candidate)
        except Exception as exc:
            return self._store_failed(flag, candidate, exc)
        return self._details(flag, value, "hit" if hit else "new")

    @staticmethod
    def _as_bool(details: FlagResolutionDetails[str], default: bool) -> FlagResolutionDetails[bool]:
        if details.error_code:
            return FlagResolutionDetails(
                value=default, reason=details.reason, error_code=details.error_code, error_message=details.error_message
            )
        return FlagResolutionDetails(
            value=details.value == VARIANT,
            variant=details.variant,
            reason=details.reason,
            flag_metadata=details.flag_metadata,
        )

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._as_bool(self.resolve_string_details(flag_key, STABLE, evaluation_context), default_value)

    async def resolve_boolean_details_async(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        details = await self.resolve_string_details_async(flag_key, STABLE, evaluation_context)
        return self._as_bool(details, default_value)

    def _mismatch(self, default: Any) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(
            value=default,
            reason=Reason.ERROR,
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message="release flags are strings (stable|variant) or booleans",
        )

    def resolve_integer_details(self, flag_key, default_value, evaluation_context=None):  # type: ignore[no-untyped-def]
        return self._mismatch(default_value)

    def resolve_float_details(self, flag_key, default_value, evaluation_context=None):  # type: ignore[no-untyped-def]
        return self._mismatch(default_value)

    def resolve_object_details(self, flag_key, default_value, evaluation_context=None):  # type: ignore[no-untyped-def]
        return self._mismatch(default_value)
