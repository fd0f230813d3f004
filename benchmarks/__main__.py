"""``python -m benchmarks [NAME ...]``: run the benchmarks, print one JSON line each, then a table."""

from __future__ import annotations

import logging
import os
import sys

from benchmarks import burst_rss, delivery, idle, influxdb, memory, pipeline, relist, restart, sinks, startup


def _notes(r: dict) -> str:
    if "lost_lagging" in r:
        return (f"{r['live_events_relisted']} live Events re-listed in {r['relist_s']}s; lost {r['lost_healthy']}/"
                f"{r['lost_lagging']}, duplicated {r['duplicated_healthy']}/{r['duplicated_lagging']} (healthy/lagging "
                f"sink); checkpoint {r['checkpoint_kb_after_hour']} KB")
    if "rss_mb_ready" in r:
        return (f"{r['stored']} stored (0 lost, 0 duplicated) in {r['seconds']}s; RSS {r['rss_mb_ready']} MB "
                f"ready, {r['rss_mb_after_drain']} MB 5 s after the drain")
    if "rss_mb_after_drain" in r:
        return (f"lost {r['lost']}, duplicated {r['duplicated']}; disk buffer peak {r['disk_buffer_peak_mb']} MB, "
                f"RSS after the drain {r['rss_mb_after_drain']} MB")
    if "seconds_until_both_have_all" in r:
        return (f"lost {r['lost']}, duplicated {r['duplicated']}; both sinks complete after "
                f"{r['seconds_until_both_have_all']}s, {r['slow_sink_spilled_to_disk']} through the slow sink's "
                "disk buffer")
    if "lost" in r:
        return f"lost {r['lost']}, duplicated {r['duplicated']}, resumed in {r['time_to_resume_s']}s"
    if "simulator_events" in r:
        a, b = r["simulator_events"], r["managed_fields"]
        return (f"bytes per held event (tracemalloc, 1/8 sinks): {a['traced_bytes_per_event_1_sink']}/"
                f"{a['traced_bytes_per_event_8_sinks']}; with managedFields {b['traced_bytes_per_event_1_sink']}/"
                f"{b['traced_bytes_per_event_8_sinks']}")
    if "rss_growth_second_half_mb" in r:
        return f"RSS growth over the second half {r['rss_growth_second_half_mb']} MB, dropped {r['dropped_overflow']}"
    if "startup_s_median" in r:
        return f"spawn to first watch request: median {r['startup_s_median']}s of {r['runs']} runs " \
               f"(min {r['startup_s_min']}s, max {r['startup_s_max']}s), CPU {r['cpu_s_median']}s"
    if "cpu_s" in r and "exported" in r:
        return (f"{r['seconds']}s at {r['events'] // r['seconds']} events/s: RSS {r['rss_mb']} MB, CPU {r['cpu_s']}s, "
                f"exported {r['exported']}")
    if "cpu_s" in r and "sent_by_sink" in r:
        return f"{r['seconds']}s at {r['events'] // r['seconds']} events/s: RSS {r['rss_mb']} MB, CPU {r['cpu_s']}s"
    if "influxd_cpu_s_per_100k" in r:
        simulator = f", simulator {r['simulator_cpu_s_per_100k']}" if "simulator_cpu_s_per_100k" in r else ""
        drain = (f"; drain {r['drain_events_per_s']}/s, first write after {r['release_to_first_write_s']} s"
                 if "drain_events_per_s" in r else "")
        return f"CPU s/100k of influxd {r['influxd_cpu_s_per_100k']}{simulator}{drain}"
    if "dropped" in r:
        return f"dropped {r['dropped']}"
    return ""


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    small = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or ["pipeline", "enrich", "fanout", "memory", "held", "burst",
                                                              "stall", "restart", "relist", "sinks", "influxdb",
                                                              "startup", "idle", "burst-rss"]
    kube_eventer = os.environ.get("KUBE_EVENTER")
    if kube_eventer and not (os.path.isfile(kube_eventer) and os.access(kube_eventer, os.X_OK)):
        print(f"KUBE_EVENTER={kube_eventer}: not an executable file (a kube-eventer binary, or unset)",
              file=sys.stderr)
        return 2
    results = []
    for name in names:
        if name == "pipeline":
            results.append(("pipeline, 1 null sink", pipeline.run(20_000 if small else 200_000)))
        elif name == "enrich":
            results.append(("pipeline, 1 null sink, --enrich=labels,owner",
                            pipeline.run(20_000 if small else 200_000, enrich=True)))
        elif name == "fanout":
            results.append(("pipeline, 8 filtered null sinks", pipeline.run(20_000 if small else 200_000, True)))
        elif name == "memory":
            results.append(("stalled sink, 500k events", memory.run(50_000 if small else 500_000,
                                                                    5_000 if small else 50_000)))
        elif name == "held":
            results.append(("RAM per event held in memory", memory.held(5_000 if small else 50_000)))
        elif name == "burst":
            results.append(("burst: 100k events, a fast and a slow sink",
                            delivery.burst(10_000 if small else 100_000)))
        elif name == "stall":
            results.append(("stall: 600k events while a sink stalls", delivery.stall(60_000 if small else 600_000,
                                                                                     5_000 if small else 50_000)))
        elif name == "restart":
            results.append(("restart (SIGTERM) mid-stream", restart.run(2_000 if small else 20_000)))
            results.append(("restart (SIGKILL) mid-stream", restart.run(2_000 if small else 20_000, kill=True)))
        elif name == "relist":
            results.append(("410 re-list after an hour at 30 events/s, a lagging sink", relist.run(6 if small else 60)))
        elif name == "sinks":
            results.extend(sinks.run(5_000 if small else 50_000))
        elif name == "influxdb":
            results.extend(influxdb.run(10_000 if small else 100_000))
        elif name == "startup":
            results.append(("startup, log sink", startup.run(3 if small else 9)))
        elif name == "idle":
            results.append(("idle 10 events/s, log sink", idle.run(10 if small else 60)))
            results.append(("idle 10 events/s, 9 built-in sinks", idle.run(10 if small else 60, all_sinks=True)))
            if kube_eventer:
                results.append(("idle 10 events/s, kube-eventer, log sink",
                                idle.measure_kube_eventer(kube_eventer, 10 if small else 60)))
        elif name == "burst-rss":
            results.extend(burst_rss.run(2_000 if small else 20_000))
        elif name.startswith("sinks:"):  # one sink only, e.g. sinks:kafka
            results.extend(sinks.run(5_000 if small else 50_000, name.split(":", 1)[1].split(",")))
        else:
            print(f"unknown benchmark {name!r}", file=sys.stderr)
            return 2
    print()
    print(f"{'benchmark':40} {'events':>8} {'events/s':>10} {'CPU s/100k':>11} {'peak RSS MB':>12}  notes")
    for title, r in results:
        print(f"{title:40} {r.get('events', ''):>8} {r.get('events_per_s', ''):>10} "
              f"{r.get('cpu_s_per_100k', ''):>11} {r.get('peak_rss_mb', ''):>12}  {_notes(r)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
