"""The ``eventrouter`` command: kube-eventer's flags plus sub-commands.

    eventrouter --source=kubernetes:https://kubernetes.default --sink=log [--sink=...]
    eventrouter sinks                      every registered sink and its options
    eventrouter check --sink=URL [--send-test]
    eventrouter simulate --port 8001 ...   the built-in fake cluster (demo, tests, benchmarks)
    eventrouter athena-ddl ...             plugin commands (entry points "eventrouter.commands")

Go's flag package accepts ``-source=...`` as well as ``--source=...``; so do we, so kube-eventer
manifests work unchanged. A bad flag exits with status 2 and one line on stderr naming the flag and
what is allowed: every flag has a type that checks its value here, before anything starts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, NoReturn

from eventrouter import __version__
from eventrouter.errors import ConfigError
from eventrouter.options import parse_duration

if TYPE_CHECKING:
    from eventrouter.app import RunConfig

COMMAND_GROUP = "eventrouter.commands"
# httpx imports its own command-line client (click, pygments, rich) whenever click is installed: 20-60 ms
# of start-up and 2 MB for a module the router never uses. A None entry makes that optional import fail
# the way httpx expects when its CLI extra is absent (it then defines a stub main()).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
# the built-in sub-commands: name -> one line for --help (plugins add theirs through COMMAND_GROUP)
COMMANDS = {
    "sinks": "list every registered sink and its options",
    "check": "validate --sink flags; --send-test delivers one test event",
    "simulate": "run the built-in fake Kubernetes API server (demo, tests, benchmarks)",
}
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        if self.epilog is None and self.prog == "eventrouter":
            # the command list reads the plugins' entry points: only when help is shown (start-up time)
            self.epilog = _commands_help()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _duration(text: str) -> float:
    try:
        return float(parse_duration(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m, 1h") from None


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 0 (off) to 65535")
    return int(text)


def _address(text: str) -> str:
    """An IP address or a host name to listen on."""
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or a host name")
    return text


def _checkpoint(text: str) -> str:
    from eventrouter.sources.k8s_checkpoint import parse_checkpoint_flag

    try:
        parse_checkpoint_flag(text, in_cluster=False, namespace="default")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None
    return text


def _dns_name(text: str) -> str:
    """A Kubernetes object name (DNS subdomain): the Lease and its namespace."""
    if not _DNS_NAME.fullmatch(text) or len(text) > 253:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes name (lowercase letters, digits, '-', '.')")
    return text


def _verbosity(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a verbosity level (0, 1, 2, ...)")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def _enrich_features(text: str) -> frozenset[str]:
    from eventrouter.enrich import parse_features

    try:
        return parse_features(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None


def _bool(text: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eventrouter", description="Route Kubernetes Events to sinks (kube-eventer compatible).",
                usage="eventrouter --source=SOURCE [--sink=SINK ...] [options]\n"
                      "       eventrouter COMMAND [--help | ...]",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="kubernetes:URL?opts or file:PATH (file:- reads stdin)")
    p.add_argument("--sink", action="append", default=[], help="NAME:URL?opts; repeat for more sinks")
    p.add_argument("--cluster-name", default="", help="cluster name shown in messages and stored with events")
    p.add_argument("--shutdown-timeout", type=_duration, default=30.0, help="drain time on SIGTERM (default 30s)")
    # the container image sets EVENTROUTER_LOG_FORMAT=json, so JSON stays the default whatever args are given
    p.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("EVENTROUTER_LOG_FORMAT", "text"),
                   help="log line format (default: $EVENTROUTER_LOG_FORMAT, else text)")
    p.add_argument("--checkpoint", type=_checkpoint, default=None,
                   help="configmap:[NAMESPACE/]NAME (own namespace by default), file:PATH or none (default: configmap "
                   "in-cluster, else a file)")
    p.add_argument("--data-dir", default=os.environ.get("EVENTROUTER_DATA_DIR", ".eventrouter"),
                   help="writable directory for the sinks' disk buffers and state "
                        "(default: $EVENTROUTER_DATA_DIR, else .eventrouter)")
    p.add_argument("--max-event-age", type=_duration, default=None,
                   help="first start without a checkpoint: skip events older than this")
    p.add_argument("--leader-elect", nargs="?", const=True, default=False, type=_bool,
                   help="run as one of several replicas; only the Lease holder delivers")
    p.add_argument("--leader-elect-namespace", type=_dns_name, default=None,
                   help="namespace of the Lease (default: own namespace)")
    p.add_argument("--leader-elect-name", type=_dns_name, default="eventrouter", help="name of the Lease")
    p.add_argument("--leader-elect-lease-duration", type=_duration, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=_duration, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=_duration, default=2.0)
    p.add_argument("--healthz-ip", type=_address, default="0.0.0.0", help="address of /healthz, /readyz, /metrics")
    p.add_argument("--healthz-port", type=_port, default=8084, help="port of /healthz, /readyz, /metrics (0: off)")
    p.add_argument("--healthz-window", type=_duration, default=600.0,
                   help="/healthz fails after this long without an answer from the API server (default 10m; "
                   "a quiet cluster stays live)")
    p.add_argument("--event-metrics", nargs="?", const=True, default=True, type=_bool,
                   help="kube-eventer flag, accepted (event counts are always exported, by type only)")
    p.add_argument("--frequency", type=_duration, default=30.0,
                   help="kube-eventer flag, accepted; events are sent as they arrive")
    enrich = p.add_argument_group("enrichment: labels, annotations and owner of the involved object "
                                  "(docs/enrichment.md)")
    enrich.add_argument("--enrich", type=_enrich_features, default=frozenset(),
                        help="labels,annotations,owner (or all); off by default, turned on for what a sink's "
                        "labels=/owner_kinds= filter needs")
    enrich.add_argument("--enrich-annotations", default="", help="annotation keys to keep, comma-separated globs "
                        "(e.g. team.example.com/*); none by default")
    enrich.add_argument("--enrich-qps", type=_positive, default=20.0, help="API requests per second (default 20)")
    enrich.add_argument("--enrich-burst", type=_positive_int, default=40, help="API request burst (default 40)")
    enrich.add_argument("--enrich-timeout", type=_duration, default=0.25,
                        help="longest wait of an event for its object's first lookup (default 250ms)")
    enrich.add_argument("--enrich-cache-size", type=_positive_int, default=20000, help="objects cached (default 20000)")
    enrich.add_argument("--enrich-cache-ttl", type=_duration, default=600.0,
                        help="age after which an object is looked up again (default 10m)")
    p.add_argument("-v", "--v", dest="verbosity", type=_verbosity, default=0, help="log verbosity (4 and more: debug)")
    p.add_argument("--version", action="version", version=f"eventrouter {__version__}")
    # klog and Go runtime flags kube-eventer manifests pass; accepted and ignored
    # (klog spells them with '_'; '-' variants are accepted too)
    for name in ("--logtostderr", "--alsologtostderr", "--skip-headers", "--skip_headers", "--one-output",
                 "--one_output", "--skip_log_headers", "--add_dir_header"):
        p.add_argument(name, nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    for name in ("--max_procs", "--log_dir", "--log_file", "--log_file_max_size", "--stderrthreshold", "--vmodule",
                 "--log_backtrace_at"):
        p.add_argument(name, default=None, help=argparse.SUPPRESS)
    return p


def run_config(parsed: argparse.Namespace) -> RunConfig:
    """The run flags as the app's configuration (the one place that maps flags to settings)."""
    from eventrouter.app import RunConfig
    from eventrouter.sources import SourceContext

    context = SourceContext(
        cluster=parsed.cluster_name,
        checkpoint=parsed.checkpoint,
        max_event_age=parsed.max_event_age,
        leader_elect=parsed.leader_elect,
        leader_elect_namespace=parsed.leader_elect_namespace,
        leader_elect_name=parsed.leader_elect_name,
        leader_elect_lease_duration=parsed.leader_elect_lease_duration,
        leader_elect_renew_deadline=parsed.leader_elect_renew_deadline,
        leader_elect_retry_period=parsed.leader_elect_retry_period,
    )
    from eventrouter.enrich import EnrichSettings

    enrich = EnrichSettings(
        features=parsed.enrich,
        annotations=tuple(p.strip() for p in parsed.enrich_annotations.split(",") if p.strip()),
        qps=parsed.enrich_qps,
        burst=parsed.enrich_burst,
        timeout=parsed.enrich_timeout,
        cache_size=parsed.enrich_cache_size,
        cache_ttl=parsed.enrich_cache_ttl,
    )
    return RunConfig(
        enrich=enrich,
        source=parsed.source,
        sinks=parsed.sink,
        context=context,
        healthz_ip=parsed.healthz_ip,
        healthz_port=parsed.healthz_port,
        healthz_window=parsed.healthz_window,
        shutdown_timeout=parsed.shutdown_timeout,
        data_dir=parsed.data_dir,
    )


def _go_style(argv: Sequence[str]) -> list[str]:
    """Go flags accept one dash for long names (``-source=x``); argparse wants two."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg.split("=", 1)[0]) > 2:
            arg = "-" + arg
        out.append(arg)
    return out


def _plugin_commands() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _commands_help() -> str:
    lines = ["commands (eventrouter COMMAND --help for each):"]
    for name, text in COMMANDS.items():
        lines.append(f"  {name:<12}{text}")
    for name, ep in sorted(_plugin_commands().items()):
        lines.append(f"  {name:<12}plugin command ({ep.value})")  # type: ignore[attr-defined]
    return "\n".join(lines)


def _into_pipe(command: Callable[[list[str]], int], rest: list[str]) -> int:
    """Run a sub-command whose output may be piped into ``head`` or ``grep -m1``: when the reader stops
    reading, end quietly as ``ls`` does, not with a BrokenPipeError traceback."""
    try:
        return command(rest)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush too
        return 141  # what a shell reports for a command ended by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        command, rest = args[0], args[1:]
        if command == "sinks":
            from eventrouter.commands import sinks_command

            return _into_pipe(sinks_command, rest)
        if command == "check":
            from eventrouter.commands import check_command

            return _into_pipe(check_command, rest)
        if command == "simulate":
            from eventrouter.simulator.cli import main as simulate

            return simulate(rest)
        plugin = _plugin_commands().get(command)
        if plugin is not None:
            return _into_pipe(lambda a: int(plugin.load()(a) or 0), rest)  # type: ignore[attr-defined]
        print(f"eventrouter: error: unknown command {command!r}; commands: {', '.join(COMMANDS)}"
              + "".join(f", {n}" for n in _plugin_commands()) + " (or run flags, see --help)", file=sys.stderr)
        return 2
    parser = run_parser()
    parsed = parser.parse_args(_go_style(args))
    lease, renew, retry = (parsed.leader_elect_lease_duration, parsed.leader_elect_renew_deadline,
                           parsed.leader_elect_retry_period)
    if not lease > renew > retry > 0:
        # as client-go: a leader that keeps leading past the lease would overlap with its successor
        parser.error(f"--leader-elect-lease-duration ({lease:g}s) must be longer than --leader-elect-renew-deadline "
                     f"({renew:g}s), and that longer than --leader-elect-retry-period ({retry:g}s)")
    from eventrouter.app import run
    from eventrouter.logutil import setup_logging

    setup_logging(parsed.log_format, parsed.verbosity)
    config = run_config(parsed)
    try:
        return run(config)
    except ConfigError as exc:
        print(f"eventrouter: error: {exc}", file=sys.stderr)
        return 2
