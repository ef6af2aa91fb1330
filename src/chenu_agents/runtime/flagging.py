"""The release flag in the request path: evaluate it through OpenFeature, forward to the variant slot.

Imported only when the `feature_flag` setting is present: a slot without it never loads openfeature,
redis or an HTTP client.

Request attributes, headers first, then the task's JSON body:
  session  X-Chenu-Session, else `session_id`             the OpenFeature targeting key (stickiness)
  user     X-Chenu-User, else `attributes.user`           recorded in the evaluation context
  groups   X-Chenu-Groups (comma-separated), else `attributes.groups` (list or comma-separated)

The slot trusts these as given: the application that holds the caller token authenticates its users and
states their groups. A request forwarded once carries `X-Chenu-Forwarded-By` and is never forwarded again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from openfeature import api
from openfeature.provider.no_op_provider import NoOpProvider

from chenu_agents.flags import (
    STABLE,
    VARIANT,
    FlagSource,
    LruStickyStore,
    RedisStickyStore,
    ReleaseFlagProvider,
    evaluation_context,
    release_flag_key,
)

from .config import FLAG_ROUTE_HEADER as ROUTE
from .config import FORWARDED_BY_HEADER as FORWARDED_BY
from .config import FeatureFlagSettings
from .metrics import Metrics

log = logging.getLogger("chenu_agents.runtime.flags")

SESSION, USER, GROUPS = "X-Chenu-Session", "X-Chenu-User", "X-Chenu-Groups"
_PASSED = ("Authorization", "Content-Type", SESSION, USER, GROUPS, "X-Request-Id", "traceparent", "tracestate")
_UNAVAILABLE = {502, 503, 504}


@dataclass(frozen=True)
class Decision:
    variant: bool
    url: str | None  # where to forward; None: answer here
    detail: Any


class FlagRouter:
    """One slot's release flag: provider, sticky store, OpenFeature client, HTTP client to the variant."""

    def __init__(self, settings: FeatureFlagSettings, agent: str, slot: str, metrics: Metrics):
        self.settings, self.agent, self.slot, self.metrics = settings, agent, slot, metrics
        self.flag = settings.flag or release_flag_key(agent)
        self.source = FlagSource(settings.file, settings.check_interval_s)
        if settings.redis_url:
            self.store: Any = RedisStickyStore(
                settings.redis_url,
                password=settings.redis_password(),
                prefix=settings.sticky_prefix,
                ttl_s=settings.sticky_ttl_s,
                timeout_s=settings.redis_timeout_s,
            )
        else:
            self.store = LruStickyStore(settings.sticky_max_sessions, settings.sticky_ttl_s)
        self.provider = ReleaseFlagProvider(
            self.source, self.store, internal_groups=settings.internal_groups, beta_groups=settings.beta_groups
        )
        # A domain of its own: several runtimes in one process (the tests) must not share a provider.
        self.domain = f"chenu-runtime-{agent}-{slot}-{uuid.uuid4().hex[:8]}"
        api.set_provider_and_wait(self.provider, self.domain)
        self.client = api.get_client(self.domain)
        self._http: aiohttp.ClientSession | None = None
        labels = (agent, slot, self.flag)
        self._routed = {v: metrics.flag_routed.labels(*labels, v) for v in (STABLE, VARIANT)}
        self._sticky_errors = metrics.flag_sticky_errors.labels(*labels)
        self._fallback_labels = labels

    # -- decision ---------------------------------------------------------------------------

    async def decide(self, request: web.Request, data: dict[str, Any]) -> Decision:
        headers = request.headers
        attributes = data.get("attributes") if isinstance(data.get("attributes"), dict) else {}
        session = headers.get(SESSION) or data.get("session_id")
        user = headers.get(USER) or attributes.get("user")
        groups = headers.get(GROUPS) if GROUPS in headers else attributes.get("groups")
        ctx = evaluation_context(
            session if isinstance(session, str) else None, user if isinstance(user, str) else None, groups
        )
        details = await self.client.get_string_details_async(self.flag, STABLE, ctx)
        if details.flag_metadata.get("sticky") == "error":
            self._sticky_errors.inc()
        variant = details.value == VARIANT
        self._routed[VARIANT if variant else STABLE].inc()
        if not variant or details.flag_metadata.get("variant_slot") == self.slot:
            return Decision(variant, None, details)
        return Decision(True, details.flag_metadata.get("variant_url") or self.settings.variant_url, details)

    def fallback(self, reason: str) -> None:
        self.metrics.flag_fallbacks.labels(*self._fallback_labels, reason).inc()

    # -- forwarding -------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            s = self.settings
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=s.forward_timeout_s, sock_connect=s.connect_timeout_s),
                auto_decompress=False,
            )
        return self._http

    async def forward(self, request: web.Request, body: bytes, url: str) -> web.Response | None:
        """The variant's answer, or None (counted) when it cannot give one: the caller answers itself."""
        headers = {name: request.headers[name] for name in _PASSED if name in request.headers}
        headers[FORWARDED_BY] = self.slot
        try:
            async with self._session().post(f"{url}/v1/tasks", data=body, headers=headers) as answer:
                payload = await answer.read()
                if answer.status in _UNAVAILABLE:
                    self.fallback("status")
                    log.warning("variant %s answered %s; answering from %s", url, answer.status, self.slot)
                    return None
                out = {ROUTE: VARIANT, "Content-Type": answer.headers.get("Content-Type", "application/json")}
                if "Retry-After" in answer.headers:
                    out["Retry-After"] = answer.headers["Retry-After"]
                return web.Response(status=answer.status, body=payload, headers=out)
        except TimeoutError:
            self.fallback("timeout")
            log.warning("variant %s did not answer in time; answering from %s", url, self.slot)
        except aiohttp.ClientError as exc:
            self.fallback("connect")
            log.warning("variant %s unreachable (%s); answering from %s", url, exc, self.slot)
        return None

    # -- status and shutdown ----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        flag = self.source.get(self.flag)
        return {
            "flag": self.flag,
            "file": str(self.source.path),
            "file_error": self.source.error,
            "stage": flag.stage if flag else None,
            "variant": flag.variant.to_dict() if flag and flag.variant else None,
            "sticky_store": "redis" if self.settings.redis_url else "lru",
            "sticky_errors": self.provider.stats.sticky_errors,
        }

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        aclose = getattr(self.store, "aclose", None)
        if aclose is not None:
            try:
                await asyncio.wait_for(aclose(), 5)
            except Exception as exc:
                log.debug("sticky store close: %s", exc)
        api.set_provider(NoOpProvider(), self.domain)  # the old one is shut down (store closed) by OpenFeature
