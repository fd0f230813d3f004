"""eventrouter: route Kubernetes Events to sinks configured by kube-eventer style URL flags.

The names below are the public API for sink plugins; everything else is internal.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventrouter.chat import (
        CHAT_OPTIONS,
        ChatFlow,
        ChatStats,
        Digest,
        DigestPart,
        Notice,
        RateLimitedError,
    )
    from eventrouter.chat_layout import ChatLayout, chat_tz, json_size, truncate_bytes
    from eventrouter.chat_transport import ChatSink, ErrorCodes, api_base, chat_endpoint
    from eventrouter.errors import (
        ConfigError,
        PartialError,
        PermanentError,
        RetryableError,
        SinkConfigError,
        SinkError,
    )
    from eventrouter.event import Event, InvolvedObject, format_time
    from eventrouter.http import HTTP_OPTIONS, TLS_OPTIONS, http_client, raise_for_status, transport_error
    from eventrouter.options import URL, Duration, HostPort, Option, Options, Secret, check_authority
    from eventrouter.rates import ChatRates, Rate, parse_rates, use_rates
    from eventrouter.records import json_line
    from eventrouter.sink import Sink
    from eventrouter.sinkurl import SinkURL, redact_text
    from eventrouter.templates import EventTemplate, parse_tz, template_source

# Imported on first use (PEP 562), so that ``import eventrouter`` (every run, every sink) loads no
# client library (httpx, jinja2) that the configured sinks do not need: start-up time is spawn to
# first watch request. Add a public name here and under TYPE_CHECKING above.
_LAZY = {
    "api_base": "eventrouter.chat_transport",
    "chat_endpoint": "eventrouter.chat_transport",
    "CHAT_OPTIONS": "eventrouter.chat",
    "chat_tz": "eventrouter.chat_layout",
    "ChatFlow": "eventrouter.chat",
    "ChatLayout": "eventrouter.chat_layout",
    "ChatRates": "eventrouter.rates",
    "ChatSink": "eventrouter.chat_transport",
    "ChatStats": "eventrouter.chat",
    "ConfigError": "eventrouter.errors",
    "Digest": "eventrouter.chat",
    "DigestPart": "eventrouter.chat",
    "Duration": "eventrouter.options",
    "ErrorCodes": "eventrouter.chat_transport",
    "Event": "eventrouter.event",
    "EventTemplate": "eventrouter.templates",
    "format_time": "eventrouter.event",
    "HostPort": "eventrouter.options",
    "check_authority": "eventrouter.options",
    "http_client": "eventrouter.http",
    "HTTP_OPTIONS": "eventrouter.http",
    "InvolvedObject": "eventrouter.event",
    "json_line": "eventrouter.records",
    "json_size": "eventrouter.chat_layout",
    "Notice": "eventrouter.chat",
    "Option": "eventrouter.options",
    "Options": "eventrouter.options",
    "parse_rates": "eventrouter.rates",
    "parse_tz": "eventrouter.templates",
    "PartialError": "eventrouter.errors",
    "PermanentError": "eventrouter.errors",
    "raise_for_status": "eventrouter.http",
    "Rate": "eventrouter.rates",
    "RateLimitedError": "eventrouter.chat",
    "redact_text": "eventrouter.sinkurl",
    "RetryableError": "eventrouter.errors",
    "Secret": "eventrouter.options",
    "Sink": "eventrouter.sink",
    "SinkConfigError": "eventrouter.errors",
    "SinkError": "eventrouter.errors",
    "SinkURL": "eventrouter.sinkurl",
    "template_source": "eventrouter.templates",
    "TLS_OPTIONS": "eventrouter.http",
    "transport_error": "eventrouter.http",
    "truncate_bytes": "eventrouter.chat_layout",
    "URL": "eventrouter.options",
    "use_rates": "eventrouter.rates",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventrouter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "CHAT_OPTIONS",
    "HTTP_OPTIONS",
    "TLS_OPTIONS",
    "URL",
    "ChatFlow",
    "ChatLayout",
    "ChatRates",
    "ChatSink",
    "ChatStats",
    "ConfigError",
    "Digest",
    "DigestPart",
    "Duration",
    "ErrorCodes",
    "Event",
    "EventTemplate",
    "HostPort",
    "InvolvedObject",
    "Notice",
    "Option",
    "Options",
    "PartialError",
    "PermanentError",
    "Rate",
    "RateLimitedError",
    "RetryableError",
    "Secret",
    "Sink",
    "SinkConfigError",
    "SinkError",
    "SinkURL",
    "__version__",
    "api_base",
    "chat_endpoint",
    "chat_tz",
    "check_authority",
    "format_time",
    "http_client",
    "json_line",
    "json_size",
    "parse_rates",
    "parse_tz",
    "raise_for_status",
    "redact_text",
    "template_source",
    "transport_error",
    "truncate_bytes",
    "use_rates",
]
