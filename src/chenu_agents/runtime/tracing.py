"""OpenTelemetry traces, off by default.

`opentelemetry-sdk` is not a dependency of the package: when a trace exporter is configured and the SDK
is absent, the runtime logs it and uses a no-op span factory. With the SDK, `console` prints spans and
`otlp` sends them with the OTLP/HTTP exporter (endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from .agent import SpanFactory

log = logging.getLogger("chenu_agents.runtime")


def no_span(_name: str, **_attributes: Any) -> AbstractContextManager[Any]:
    return nullcontext()


def span_factory(exporter: str, service_name: str) -> tuple[SpanFactory, str]:
    """A span factory and a line saying what tracing does."""
    if exporter == "none":
        return no_span, "off"
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("tracing %r asked for, but opentelemetry-sdk is not installed: traces are off", exporter)
        return no_span, "off (opentelemetry-sdk not installed)"
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("tracing 'otlp' needs opentelemetry-exporter-otlp-proto-http: traces are off")
            return no_span, "off (OTLP exporter not installed)"
        span_exporter: Any = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    tracer = provider.get_tracer("chenu_agents.runtime")

    def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
        return tracer.start_as_current_span(name, attributes=attributes)

    return span, exporter
