"""A fake Kubernetes API server for Events, Leases and ConfigMaps (demo, tests, benchmarks).

``eventrouter simulate`` runs it from the command line; tests use :class:`Simulator` directly.
The recorded real Events it serves by default live in ``data/`` (see ``data/SOURCES.md``).
"""

from eventrouter.simulator.server import Faults, Request
from eventrouter.simulator.sim import BUILTIN, Simulator, load_events, new_event

__all__ = ["BUILTIN", "Faults", "Request", "Simulator", "load_events", "new_event"]
