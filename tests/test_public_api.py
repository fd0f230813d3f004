"""The public API for plugins stays exact, and built-in sinks use nothing else."""

import ast
import pathlib

import eventrouter

ROOT = pathlib.Path(__file__).resolve().parent.parent


PUBLIC = {
    # the Sink API
    "Sink", "Option", "Options", "Secret", "Duration", "HostPort", "URL", "check_authority", "SinkURL", "Event",
    "InvolvedObject",
    "format_time", "json_line",
    "ConfigError", "SinkConfigError", "SinkError", "RetryableError", "PermanentError", "PartialError",
    # shared option groups and helpers a sink may use
    "HTTP_OPTIONS", "TLS_OPTIONS", "http_client", "raise_for_status", "transport_error", "redact_text",
    "EventTemplate", "template_source", "parse_tz",
    "CHAT_OPTIONS", "ChatFlow", "ChatLayout", "Digest", "Notice", "RateLimitedError", "json_size", "truncate_bytes",
    "ChatSink", "ErrorCodes", "api_base", "chat_endpoint", "ChatStats", "DigestPart", "chat_tz",
    "ChatRates", "Rate", "parse_rates", "use_rates",
    "__version__",
}


def test_public_names_are_exact():
    """Adding or removing a public name is a decision: this list changes with it."""
    assert set(eventrouter.__all__) == PUBLIC
    assert len(eventrouter.__all__) == len(PUBLIC)
    for name in eventrouter.__all__:
        assert hasattr(eventrouter, name), name


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_builtin_sinks_import_only_the_public_api():
    for path in sorted((ROOT / "sinks").rglob("*.py")):
        for module, names in _imports(path):
            if module == "eventrouter":
                assert set(names) <= set(eventrouter.__all__), f"{path.name}: {set(names) - set(eventrouter.__all__)}"
            else:
                assert not module.startswith("eventrouter."), f"{path.name} imports internal module {module}"
            if module.startswith("sinks.") and path.parent.name == "sinks":
                raise AssertionError(f"{path.name} imports another sink: {module}")


def test_the_core_never_imports_a_concrete_sink():
    for path in sorted((ROOT / "eventrouter").rglob("*.py")):
        for module, _ in _imports(path):
            assert module != "sinks" and not module.startswith("sinks."), f"{path} imports {module}"


def test_the_testing_helpers_are_exact():
    """eventrouter.testing is public too (docs/plugins.md, Stability): its list changes only on purpose."""
    import eventrouter.testing

    assert sorted(eventrouter.testing.__all__) == ["FakeCluster", "run_eventrouter", "sample_event", "wait_until"]
    for name in eventrouter.testing.__all__:
        assert hasattr(eventrouter.testing, name), name


def test_every_public_name_loads_lazily_and_import_loads_no_client_library():
    import subprocess
    import sys

    assert set(eventrouter._LAZY) <= set(eventrouter.__all__)
    code = ("import sys, eventrouter, eventrouter.cli; "
            "print(sorted(m for m in ('httpx', 'jinja2', 'kubernetes', 'yaml', 'confluent_kafka', 'pymysql', "
            "'boto3', 'botocore', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
