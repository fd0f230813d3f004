"""``make demo``: a fake cluster serving real recorded Events, watched by the router, printed on the console.

Starts the simulator on 127.0.0.1 (the recorded real events, plus a few new or repeated ones per
second), writes a kubeconfig for it in a temporary directory, and runs the router exactly as on a
real cluster::

    eventrouter --source='kubernetes:?inClusterConfig=false&auth=<tmp>/kubeconfig' \\
                --sink='log:?format=text' --checkpoint=file:<tmp>/checkpoint.json --data-dir=<tmp>/data \\
                --healthz-port=0

It stops by itself after ``DEMO_SECONDS`` (default 15; 0 runs until Ctrl-C) and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from eventrouter.cli import main as cli_main
from eventrouter.simulator import Simulator


def main() -> int:
    try:
        seconds = float(os.environ.get("DEMO_SECONDS", "15"))
    except ValueError:
        print("eventrouter demo: DEMO_SECONDS must be a number of seconds", file=sys.stderr)
        return 2
    rate = float(os.environ.get("DEMO_RATE", "3"))
    with tempfile.TemporaryDirectory(prefix="eventrouter-demo-") as tmp:
        sim = Simulator("builtin", rate=rate, token="demo-token").start()
        kubeconfig = sim.write_kubeconfig(Path(tmp) / "kubeconfig")
        print(f"eventrouter demo: a simulated cluster at {sim.url} with {len(sim.store.events)} recorded real "
              f"events and {rate:g} new or repeated per second; kubeconfig {kubeconfig}", file=sys.stderr)
        print("eventrouter demo: " + (f"stopping after {seconds:g}s" if seconds > 0 else "Ctrl-C stops")
              + " (DEMO_SECONDS)", file=sys.stderr, flush=True)
        timer = None
        if seconds > 0:
            # the same path as Ctrl-C: the router stops watching, drains, writes its checkpoint
            timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
        try:
            return cli_main([
                f"--source=kubernetes:?inClusterConfig=false&auth={kubeconfig}",
                "--sink=log:?format=text",
                f"--checkpoint=file:{Path(tmp) / 'checkpoint.json'}",
                f"--data-dir={Path(tmp) / 'data'}",  # nothing left in the checkout (disk buffers, chat state)
                "--healthz-port=0",
                "--cluster-name=demo",
                "--enrich=labels,owner",  # the simulator serves the Pods' and workloads' metadata
            ])
        finally:
            if timer is not None:
                timer.cancel()
            sim.stop()


if __name__ == "__main__":
    raise SystemExit(main())
