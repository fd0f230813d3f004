"""Finds sinks through the ``eventrouter.sinks`` entry-point group, built-ins included.

A run imports only the sinks it names; ``eventrouter sinks`` imports all of them and shows a broken
plugin with its import error instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from eventrouter.errors import ConfigError
from eventrouter.sink import Sink

GROUP = "eventrouter.sinks"


@dataclass(frozen=True)
class SinkEntry:
    name: str
    entry_point: EntryPoint

    # the distribution's name and version are read from its METADATA only when shown (``eventrouter
    # sinks``, errors): parsing every sink's METADATA cost ~3 ms each at every start
    @property
    def distribution(self) -> str:
        dist = self.entry_point.dist
        return dist.metadata["Name"] if dist else "?"

    @property
    def version(self) -> str:
        dist = self.entry_point.dist
        return dist.version if dist else "?"

    def load(self) -> type[Sink]:
        cls = self.entry_point.load()
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise ConfigError(
                f"sink {self.name!r} from {self.distribution} is not a subclass of eventrouter.Sink"
            )
        return cls


def discover() -> dict[str, SinkEntry]:
    """Every registered sink name. Two distributions claiming one name is an error naming both."""
    found: dict[str, SinkEntry] = {}
    for ep in entry_points(group=GROUP):
        entry = SinkEntry(ep.name, ep)
        previous = found.get(ep.name)
        if previous and previous.entry_point.value != ep.value:
            raise ConfigError(
                f"two packages register the sink {ep.name!r}: {previous.distribution} "
                f"({previous.entry_point.value}) and {entry.distribution} ({ep.value}); uninstall one"
            )
        found[ep.name] = entry
    return found


def load(name: str) -> type[Sink]:
    """The Sink class registered under ``name``; ConfigError lists the known names if missing."""
    entries = discover()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries))
        raise ConfigError(f"--sink={name}: unknown sink {name!r}; known sinks: {known}")
    try:
        return entry.load()
    except ConfigError:
        raise
    except Exception as exc:  # a plugin that fails to import must say so, not crash the CLI
        raise ConfigError(f"--sink={name}: the sink from {entry.distribution} failed to load: {exc}") from exc
