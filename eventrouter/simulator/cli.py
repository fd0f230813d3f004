"""``eventrouter simulate``: run the fake cluster until Ctrl-C.

    eventrouter simulate --port 8001 --events builtin --rate 5 --kubeconfig-out /tmp/sim.kubeconfig
    eventrouter --source='kubernetes:?inClusterConfig=false&auth=/tmp/sim.kubeconfig' --sink=log
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence

from eventrouter.simulator.sim import BUILTIN, Simulator
from eventrouter.simulator.store import Conflict


def _statuses(text: str) -> list[int]:
    try:
        codes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of HTTP statuses") from None
    if any(not 100 <= code <= 599 for code in codes):
        raise argparse.ArgumentTypeError(f"{text!r}: HTTP statuses are 100 to 599")
    return codes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventrouter simulate",
                                description="A fake Kubernetes API server serving Events (and Leases, ConfigMaps).")
    p.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--events", default=BUILTIN, help="'builtin' (recorded real events) or a JSON-lines file")
    p.add_argument("--rate", type=float, default=0.0, help="new or repeated events per second while running")
    p.add_argument("--multiply", type=int, default=1, help="serve N copies of each event (fresh uids and times)")
    p.add_argument("--fresh-times", action="store_true", help="stamp the served events with the current time")
    p.add_argument("--kubeconfig-out", default=None, help="write a kubeconfig for this simulator here")
    p.add_argument("--token", default="simulator-token", help="bearer token clients must send ('' : no auth)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a throw-away CA (in the kubeconfig)")
    p.add_argument("--opaque-rvs", action="store_true", help="resourceVersions that are not numbers (rv-<hex>)")
    p.add_argument("--request-log", default=None, help="append 'verb METHOD path status' per request to this file")
    real = p.add_argument_group("real API server behaviour (defaults as kube-apiserver v1.36)")
    real.add_argument("--compaction-interval", type=float, default=300.0,
                      help="seconds between etcd compactions (0: never); older resourceVersions get 410")
    real.add_argument("--event-ttl", type=float, default=3600.0,
                      help="seconds an Event lives after its last write (0: forever)")
    real.add_argument("--bookmark-interval", type=float, default=0.0,
                      help="seconds between BOOKMARKs on an idle watch; 0 (default): none, as a real API server "
                           "sends for Events")
    real.add_argument("--shutdown-grace", type=float, default=60.0,
                      help="on SIGTERM: the listener closes at once, open watches stream up to this many seconds")
    faults = p.add_argument_group("faults (each applies once, to the next watch)")
    faults.add_argument("--gone-after", type=int, default=None, help="send ERROR 410 after K events")
    faults.add_argument("--drop-after", type=int, default=None, help="drop the connection mid-line after K events")
    faults.add_argument("--stall-after", type=int, default=None, help="stop sending after K events")
    faults.add_argument("--stall-seconds", type=float, default=30.0, help="how long a stall lasts")
    faults.add_argument("--errors", default=[], type=_statuses, help="statuses for the next requests, e.g. 429,500,500")
    faults.add_argument("--retry-after", type=int, default=None, help="Retry-After seconds sent with those errors")
    faults.add_argument("--forbid", action="append", default=[],
                        help="answer 403 for paths containing this (e.g. /leases), as missing RBAC; repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sim = Simulator(args.events, port=args.port, token=args.token or None, multiply=args.multiply,
                        fresh_times=args.fresh_times, rate=args.rate, request_log_path=args.request_log,
                        tls=args.tls, opaque_rvs=args.opaque_rvs, compaction_interval=args.compaction_interval,
                        event_ttl=args.event_ttl)
    except OSError as exc:
        print(f"eventrouter simulate: error: cannot read --events {args.events}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ValueError, Conflict) as exc:
        print(f"eventrouter simulate: error: --events {args.events}: {exc}", file=sys.stderr)
        return 2
    f = sim.faults
    f.gone_after, f.drop_after, f.stall_after = args.gone_after, args.drop_after, args.stall_after
    f.stall_seconds, f.retry_after, f.bookmark_interval = args.stall_seconds, args.retry_after, args.bookmark_interval
    f.errors = list(args.errors)
    f.forbid = list(args.forbid)
    try:
        sim.start()
    except OSError as exc:
        print(f"eventrouter simulate: error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.kubeconfig_out:
        sim.write_kubeconfig(args.kubeconfig_out)
    print(f"simulator: {len(sim.store.events)} events at {sim.url} (resourceVersion {sim.resource_version})"
          + (f"; kubeconfig {args.kubeconfig_out}" if args.kubeconfig_out else ""), file=sys.stderr, flush=True)
    done = threading.Event()

    def terminate(*_: object) -> None:  # as kube-apiserver: refuse new connections, let open watches run on
        sim.terminate(args.shutdown_grace)
        done.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: done.set())
        signal.signal(signal.SIGTERM, terminate)
    try:
        done.wait()
        while sim.watches_end_at is not None and not sim.stopping and sim.open_watches:
            time.sleep(0.1)
    finally:
        sim.stop()
    return 0
