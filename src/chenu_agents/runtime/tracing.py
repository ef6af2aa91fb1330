"""OpenTelemetry traces, off by default.

One span `task` per task (agent, version, slot, transport), with a child `llm.complete` per call of the
LLM chain (provider that answered, fallbacks taken) and a child `tool.call` per tool call (tool,
outcome). Exporters: `console` prints spans; `otlp_http` sends them with the OTLP/HTTP exporter to
`tracing_endpoint`, or where `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` says. The SDK is imported only when
tracing is on: a runtime without it still serves, and says that traces are off.

The runtime owns its own TracerProvider rather than the process-wide one: tests start several
runtimes in one process, and each must export only its own spans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from .agent import UNRECORDED, SpanFactory

log = logging.getLogger("chenu_agents.runtime")


class Tracing:
    """A span factory, what it does (for /admin/status), and how to flush it at shutdown."""

    def __init__(self, span: SpanFactory, description: str, shutdown: Callable[[], None] | None = None):
        self.span = span
        self.description = description
        self._shutdown = shutdown

    def shutdown(self) -> None:
        if self._shutdown is not None:
            self._shutdown()
            self._shutdown = None


def no_span(_name: str, **_attributes: Any) -> AbstractContextManager[Any]:
    return nullcontext(UNRECORDED)


def _off(description: str) -> Tracing:
    return Tracing(no_span, description)


def span_factory(
    exporter: str,
    service_name: str,
    *,
    endpoint: str | None = None,
    span_exporter: Any = None,
    resource: dict[str, str] | None = None,
) -> Tracing:
    """Tracing as configured; `span_exporter` replaces the configured one (tests: InMemorySpanExporter)."""
    if exporter == "none" and span_exporter is None:
        return _off("off")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        log.warning("tracing %r asked for, but opentelemetry-sdk is not installed: traces are off", exporter)
        return _off("off (opentelemetry-sdk not installed)")
    # An injected exporter is read right after the task: export synchronously. Otherwise in batches,
    # off the task's thread.
    processor: Any = BatchSpanProcessor
    if span_exporter is not None:
        description, processor = type(span_exporter).__name__, SimpleSpanProcessor
    elif exporter in ("otlp_http", "otlp"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("tracing 'otlp_http' needs opentelemetry-exporter-otlp-proto-http: traces are off")
            return _off("off (OTLP exporter not installed)")
        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        description = f"otlp_http {endpoint or '(OTEL_EXPORTER_OTLP_ENDPOINT)'}"
    else:
        span_exporter, description = ConsoleSpanExporter(), "console"
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, **(resource or {})}))
    provider.add_span_processor(processor(span_exporter))
    tracer = provider.get_tracer("chenu_agents.runtime")

    def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
        return tracer.start_as_current_span(name, attributes={k: v for k, v in attributes.items() if v is not None})

    return Tracing(span, description, provider.shutdown)
