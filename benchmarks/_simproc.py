"""Child process: a simulator whose events arrive through the WATCH, as fast as it can send them.

It starts empty, prints its port, and on each line ``go N`` on stdin adds N fresh events (re-stamped
copies of the recorded real events) in one go, so every open watch streams them at full speed.
Running it in its own process keeps its CPU out of the router's figures.
"""

from __future__ import annotations

import sys

from eventrouter.simulator.sim import Simulator, load_events
from eventrouter.simulator.store import restamp


def main() -> None:
    sim = Simulator(events=[], token="bench-token").start()
    pool = load_events("builtin")
    print(sim.port, flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["go"]:
            n = int(words[1])
            objs = restamp(pool, n // len(pool) + 2, True)[len(pool):len(pool) + n]
            sim.store.add_events(objs)
            print("added", n, flush=True)
        elif words[:1] == ["stop"]:
            break
    sim.stop()


if __name__ == "__main__":
    main()
