"""The runtime's Prometheus series, named and labelled exactly as roles/monitoring/README.md's contract.

Each app gets its own registry (tests start several in one process); process and GC collectors are
added to it so that memory per agent process is scraped with the rest.

Request durations use classic buckets on a fine exponential layout: bounds 2^(k/8) s from 2^-10 s (about
1 ms) to 2^6 s (64 s), the boundaries of a Prometheus native histogram of schema 3, each bucket 9.05 %
wider than the one below. A quantile interpolated inside one is off by at most that, at every scale, so
the rollout judge's p95 ratio is good to within 9 % whether a version answers in 2 ms or 20 s
(docs/analysis.md: why not native histograms, and the series it costs).
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


def exponential_bounds(low_exp: int, high_exp: int, per_octave: int) -> tuple[float, ...]:
    """Bucket bounds 2^(k / per_octave) for k from low_exp * per_octave to high_exp * per_octave."""
    return tuple(2.0 ** (k / per_octave) for k in range(low_exp * per_octave, high_exp * per_octave + 1))


REQUEST_BUCKETS = exponential_bounds(-10, 6, 8)  # 129 bounds, 0.98 ms .. 64 s, growth 2^(1/8) = 1.0905
PROVIDER_BUCKETS = exponential_bounds(-10, 6, 2)  # 33 bounds, growth 1.41: per-provider panels only
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
        # The LLM chain: which provider answered each task (tokens per task = tokens / answers), and
        # every call to each provider with its outcome and wall time (a fallback's share of the work).
        self.answers = Counter(
            "chenu_agent_llm_answers", "Tasks answered, by the LLM provider/model that answered.", [*BASE, "provider"],
            registry=r,
        )  # fmt: skip
        self.provider_calls = Counter(
            "chenu_agent_provider_calls",
            "LLM provider calls (retries and fallbacks included) by outcome (ok|error).",
            [*BASE, "provider", "outcome"],
            registry=r,
        )
        self.provider_duration = Histogram(
            "chenu_agent_provider_call_duration_seconds",
            "Wall time of one LLM provider call, whatever its outcome.",
            [*BASE, "provider"],
            buckets=PROVIDER_BUCKETS,
            registry=r,
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
        # Callers still using a version announced for deprecation (or deprecated), by token name.
        self.deprecated_calls = Counter(
            "chenu_agent_deprecated_calls",
            "Task requests to a version announced for deprecation or deprecated, by caller (token name).",
            [*BASE, "caller"],
            registry=r,
        )
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

    def provider_call(self, labels: tuple[str, str, str], provider: str, ok: bool, seconds: float) -> None:
        """One call of the LLM chain to one provider (LoadedAgent.run_task's on_provider_call)."""
        self.provider_calls.labels(*labels, provider, "ok" if ok else "error").inc()
        self.provider_duration.labels(*labels, provider).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
