"""The public API for plugins stays exact, and built-in sinks use nothing else."""

import ast
import pathlib

import eventrouter

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_public_names_are_exact():
    assert len(set(eventrouter.__all__)) == len(eventrouter.__all__)
    for name in eventrouter.__all__:
        assert hasattr(eventrouter, name), name
    core = {"ConfigError", "Duration", "Event", "InvolvedObject", "Option", "Options", "PartialError",
            "PermanentError", "RetryableError", "Secret", "Sink", "SinkConfigError", "SinkError", "SinkURL",
            "format_time", "redact_text", "EventTemplate", "template_source", "parse_tz", "http_client",
            "raise_for_status", "transport_error", "HTTP_OPTIONS", "TLS_OPTIONS"}
    assert core <= set(eventrouter.__all__)


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
