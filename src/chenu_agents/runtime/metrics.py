"""The runtime's Prometheus series, named and labelled exactly as roles/monitoring/README.md's contract.

Each app gets its own registry (tests start several in one process); process and GC collectors are
added to it so that memory per agent process is scraped with the rest.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30)
SANDBOX_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
BASE = ("agent", "version", "slot")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "chenu_agent_requests", "Task requests answered, by HTTP status code.", [*BASE, "code"], registry=r
        )
        self.duration = Histogram(
            "chenu_agent_request_duration_seconds",
            "Wall time from task request received to response sent.",
            BASE,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("chenu_agent_tokens", "LLM tokens, input or output.", [*BASE, "kind"], registry=r)
        self.fallbacks = Counter(
            "chenu_agent_fallbacks", "Requests served by a fallback LLM provider.", [*BASE, "provider"], registry=r
        )
        self.tool_calls = Counter(
            "chenu_agent_tool_calls", "Tool handler calls by outcome.", [*BASE, "tool", "outcome"], registry=r
        )
        self.sandbox = Histogram(
            "chenu_agent_sandbox_seconds",
            "Wall time of one tool call inside the WASI sandbox.",
            [*BASE, "tool"],
            buckets=SANDBOX_BUCKETS,
            registry=r,
        )
        # Beyond the contract: what is loaded, and how reloads went.
        self.info = Gauge("chenu_agent_info", "The agent version this slot serves (1).", [*BASE, "digest"], registry=r)
        self.reloads = Counter("chenu_agent_reloads", "Bundle reloads by outcome.", ["slot", "outcome"], registry=r)
        self.in_flight = Gauge("chenu_agent_in_flight_requests", "Tasks being answered.", ["slot"], registry=r)
        # Release flag (feature_flag setting): what the slot that evaluates it decided, and what it had to
        # answer itself because the variant could not. Forwarded tasks are counted by the variant's own
        # chenu_agent_requests, not here, so that each version's series hold only its own answers.
        flag = ("agent", "slot", "flag")
        self.flag_routed = Counter(
            "chenu_agent_flag_routed", "Task requests by release-flag decision (stable|variant).", [*flag, "variant"],
            registry=r,
        )  # fmt: skip
        self.flag_fallbacks = Counter(
            "chenu_agent_flag_fallbacks",
            "Requests the flag gave to the variant but this slot answered (connect|timeout|status|no_url).",
            [*flag, "reason"],
            registry=r,
        )
        self.flag_sticky_errors = Counter(
            "chenu_agent_flag_sticky_errors", "Sticky store errors (decided by the stage rule alone).", flag, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
