"""eventrouter: route Kubernetes Events to sinks configured by kube-eventer style URL flags.

The names below are the public API for sink plugins; everything else is internal.
"""

from eventrouter.chat import (
    CHAT_OPTIONS,
    ChatFlow,
    ChatLayout,
    ChatStats,
    Digest,
    DigestPart,
    Notice,
    RateLimitedError,
    chat_tz,
    json_size,
    truncate_bytes,
)
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
from eventrouter.options import URL, Duration, HostPort, Option, Options, Secret
from eventrouter.rates import ChatRates, Rate, parse_rates, use_rates
from eventrouter.records import json_line
from eventrouter.sink import Sink
from eventrouter.sinkurl import SinkURL, redact_text
from eventrouter.templates import EventTemplate, parse_tz, template_source

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
