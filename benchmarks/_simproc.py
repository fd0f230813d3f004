"""Child process: a simulator whose events arrive through the WATCH, as fast as it can send them.

It starts empty and prints its port; with ``--no-token`` it asks for no bearer token (for a client that
sends none over plain HTTP, such as kube-eventer's client-go). ``prep N`` on stdin makes N fresh events
(re-stamped copies of the recorded real events) and answers when they are ready; ``go`` then adds them in
one go, so every open watch streams them at full speed and the making is not timed.
Running it in its own process keeps its CPU out of the router's figures.
"""

from __future__ import annotations

import sys

from eventrouter.simulator.sim import Simulator, load_events
from eventrouter.simulator.store import restamp


def main() -> None:
    sim = Simulator(events=[], token="" if "--no-token" in sys.argv else "bench-token").start()
    pool = load_events("builtin")
    sim.workloads.infer(pool)  # Pods' and workloads' metadata, for the enrichment benchmark
    print(sim.port, flush=True)
    prepared: list = []
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["prep"]:
            n = int(words[1])
            prepared = restamp(pool, n // len(pool) + 2, True)[len(pool):len(pool) + n]
            print("ready", n, flush=True)
        elif words[:1] == ["go"]:
            sim.store.add_events(prepared)
            print("added", len(prepared), flush=True)
            prepared = []
        elif words[:1] == ["stop"]:
            break
    sim.stop()


if __name__ == "__main__":
    main()
