"""The eventrouter command: flags, exit codes, replay source, sub-commands, SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from eventrouter.cli import main
from eventrouter.event import Event
from tests.helpers import DATA, real_objects

EVENTS_FILE = str(DATA / "core-v1.jsonl")


def run_cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_prints_every_real_event_as_one_json_line(capsys):
    code, out, _ = run_cli(capsys, f"--source=file:{EVENTS_FILE}", "--sink=log", "--healthz-port=0",
                           "--cluster-name=prod")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(real_objects())
    expected = [orjson.dumps(Event.from_object(o, "prod").to_dict()).decode() for o in real_objects()]
    assert lines == expected


def test_go_style_single_dash_flags_and_stdout_alias(capsys, tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[20]) + b"\n")
    code, out, _ = run_cli(capsys, f"-source=file:{path}", "-sink=stdout:?format=text", "-healthz-port=0",
                           "-v=2", "-logtostderr")
    assert code == 0
    assert out == ("2023-07-10T05:26:15Z Warning Pod/message-container-creating-failed-mount/failing-liveness-pod "
                   "Unhealthy x9: Liveness probe failed: \n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sink=log"], "the following arguments are required: --source"),
        (["--source=file:/nonexistent/x", "--sink=log"], "--source=file:/nonexistent/x: cannot read"),
        (["--source=nosuch:x", "--sink=log"], "unknown source 'nosuch'"),
        (["--source=file:-", "--sink=nosuch:x"], "--sink=nosuch: unknown sink 'nosuch'; known sinks: "),
        (["--source=file:-", "--sink=log:?format=xml"],
         "--sink=log: option 'format': 'xml' is not allowed; use one of json, text"),
        (["--source=file:-", "--sink=log:?levle=Warning"], "--sink=log: option 'levle': unknown option"),
        (["--source=file:-", "--sink=log", "--shutdown-timeout=soon"], "is not a duration"),
        (["--source=file:-", "--sink=:x"], "--sink: expected NAME:URL"),
    ],
)
def test_bad_flags_exit_2_with_one_clear_line(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_bad_flag_exit_code_from_argparse_is_2():
    proc = subprocess.run([sys.executable, "-m", "eventrouter", "--sink=log"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "eventrouter: error: the following arguments are required: --source (see eventrouter --help)"]


def test_secret_is_not_echoed_in_config_errors(capsys):
    code, _, err = run_cli(capsys, "--source=file:-", "--sink=log:?token=very-secret-value")
    assert code == 2 and "very-secret-value" not in err


def test_malformed_lines_are_counted_logged_and_skipped(capsys, tmp_path, caplog):
    good = [orjson.dumps(o).decode() for o in real_objects()[:3]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good[0], "{not json", good[1], '{"kind":"Pod","metadata":{}}', good[2]]) + "\n")
    code, out, _ = run_cli(capsys, f"--source=file:{path}", "--sink=log", "--healthz-port=0")
    assert code == 0
    uids = [orjson.loads(line)["uid"] for line in out.splitlines()]
    assert uids == [o["metadata"]["uid"] for o in real_objects()[:3]]
    assert "line 2: skipped a malformed event: not JSON" in caplog.text
    assert "line 4: skipped a malformed event: kind is 'Pod'" in caplog.text


def test_replay_reports_the_total_of_malformed_lines_not_only_the_first_ten(capsys, tmp_path, caplog):
    good = orjson.dumps(real_objects()[0]).decode()
    path = tmp_path / "many-bad.jsonl"
    path.write_text("\n".join([good] + ["{not json"] * 130 + [good]) + "\n")
    code, out, _ = run_cli(capsys, f"--source=file:{path}", "--sink=log", "--healthz-port=0")
    assert code == 0 and len(out.splitlines()) == 2
    per_line = [r for r in caplog.records if "skipped a malformed event" in r.getMessage()]
    assert 10 <= len(per_line) <= 11  # the first 10, then the last one with the count held back
    assert f"{path}: 2 events read, 130 malformed lines or objects skipped" in caplog.text


def test_invalid_utf8_in_a_message_is_replaced_and_the_event_kept(capsys, tmp_path):
    obj = dict(real_objects()[0])
    line = orjson.dumps({**obj, "message": "disk full: MARK"}).replace(b"MARK", b"caf\xc3 ok")
    path = tmp_path / "bad-utf8.jsonl"
    path.write_bytes(line + b"\n" + orjson.dumps(real_objects()[1]) + b"\n")
    code, out, _ = run_cli(capsys, f"--source=file:{path}", "--sink=log", "--healthz-port=0")
    assert code == 0
    first, second = (orjson.loads(x) for x in out.splitlines())
    assert first["message"] == "disk full: caf\ufffd ok"
    assert second["uid"] == real_objects()[1]["metadata"]["uid"]


def test_replay_reads_watch_events_and_kubectl_event_lists(capsys, tmp_path):
    objs = real_objects()[:4]
    watch = tmp_path / "watch.jsonl"
    watch.write_bytes(b"".join(orjson.dumps({"type": t, "object": o}) + b"\n"
                               for t, o in zip(["ADDED", "MODIFIED", "DELETED", "ADDED"], objs, strict=True)))
    code, out, _ = run_cli(capsys, f"--source=file:{watch}", "--sink=log", "--healthz-port=0")
    assert [orjson.loads(x)["uid"] for x in out.splitlines()] == [objs[i]["metadata"]["uid"] for i in (0, 1, 3)]

    listing = tmp_path / "list.json"
    listing.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)},
                                     option=orjson.OPT_INDENT_2))
    code, out, _ = run_cli(capsys, f"--source=file:{listing}", "--sink=log", "--healthz-port=0")
    assert code == 0 and len(out.splitlines()) == 4


def test_sinks_lists_builtins_aliases_and_plugins(capsys):
    code, out, _ = run_cli(capsys, "sinks")
    assert code == 0
    assert "log  (eventrouter " in out
    assert "stdout  (eventrouter " in out and "(alias of log)" in out
    assert "jsonfile  (eventrouter-sink-jsonfile 0.1.0)" in out
    assert "format (one of json, text = json)" in out


def test_sinks_names_every_option_every_sink_takes(capsys):
    """The short listing's "+ filter and delivery options" line names each of them (it once lacked the
    enrichment filters and buffer_max_bytes); --all-options shows each with its default."""
    from eventrouter.sink import core_options

    code, out, _ = run_cli(capsys, "sinks")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("    + filter and delivery options: "))
    named = set(line.split(": ", 1)[1].split(" (")[0].split(", "))
    for option in core_options(None, {}):
        assert option.name in named or (option.name.startswith("exclude_") and "exclude_*" in named), option.name
    code, out, _ = run_cli(capsys, "sinks", "--all-options")
    assert "    buffer_max_bytes (a string = 2GiB)" in out and "    owner_kinds (a list" in out


def test_sinks_piped_into_head_ends_quietly():
    """`eventrouter sinks | head -1`: the reader closes the pipe; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "eventrouter", "sinks"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"dingtalk  (eventrouter ")
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 141 and err == b"", err.decode()


def test_check_masks_secrets_and_sends_a_test_event(capsys):
    code, out, _ = run_cli(capsys, "check", "--sink=log:?level=Warning", "--send-test")
    assert code == 0
    assert "log:?level=Warning" in out and "send-test: delivered" in out
    assert '"reason":"EventrouterTest"' in out


def test_check_reports_config_errors_with_status_2(capsys):
    code, out, _ = run_cli(capsys, "check", "--sink=log:?format=xml")
    assert code == 2 and "option 'format'" in out


def test_unknown_command(capsys):
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "unknown command 'frobnicate'" in err


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_the_queues_and_exits_0(tmp_path):
    """stdin stays open, so only SIGTERM ends the run: the sink still gets every event read, exit status 0."""
    import httpx

    out_file = tmp_path / "events.jsonl"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrouter", "--source=file:-", f"--sink=jsonfile:{out_file}?batch_size=1&fsync=true",
         "--healthz-ip=127.0.0.1", f"--healthz-port={port}", "--shutdown-timeout=20s"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    objs = real_objects()[:200]
    proc.stdin.write(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    proc.stdin.flush()
    received = 0
    deadline = time.monotonic() + 30
    while received < 200 and time.monotonic() < deadline:  # wait until the router has read all 200
        time.sleep(0.05)
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        except httpx.HTTPError:
            continue
        received = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("eventrouter_events_received_total{"))
    assert received == 200
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    uids = [orjson.loads(line)["uid"] for line in out_file.read_bytes().splitlines()]
    assert uids == [o["metadata"]["uid"] for o in objs]
    assert b"received SIGTERM" in err
    assert b"Fatal Python error" not in err


def test_sigterm_with_stdin_open_and_nothing_read_exits_0_cleanly():
    """The replay thread never blocks holding stdin's lock, so interpreter shutdown cannot abort on it."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eventrouter", "--source=file:-", "--sink=log",
                             "--healthz-ip=127.0.0.1", f"--healthz-port={port}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # /readyz answers 200 once the replay thread runs
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"Fatal Python error" not in err and out == b""
    assert b"file:-: 0 events read, none malformed" in err


def test_a_sink_whose_server_is_down_at_start_up_only_delays_delivery(tmp_path, caplog):
    import threading

    from eventrouter.app import RunConfig, run
    from eventrouter.sources import SourceContext

    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")
    stop = threading.Event()
    config = RunConfig(source=f"file:{path}", sinks=["influxdb:http://127.0.0.1:1?db=k8s&pw=pw-secret-1"],
                       context=SourceContext(), healthz_port=0, shutdown_timeout=1.0)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(run(config, stop)))
    thread.start()
    deadline = time.monotonic() + 20
    while "send failed, retry 1" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(20)
    assert codes == [0]
    assert "sink influxdb: not ready at start-up" in caplog.text and "pw-secret-1" not in caplog.text
    assert "sink influxdb: 1 events not delivered before the shutdown deadline" in caplog.text


def test_a_sink_configuration_problem_found_on_open_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")
    code, _, err = run_cli(capsys, f"--source=file:{path}", "--healthz-port=0",
                             "--sink=webhook:http://127.0.0.1:1/hook?custom_body_configmap=body")
    assert code == 2
    assert "--sink=webhook" in err and "custom_body_configmap" in err


def test_text_format_names_something_even_for_events_without_an_involved_object(capsys, tmp_path):
    bootstrap = next(o for o in real_objects() if o["metadata"]["name"] == "bootstrap-finished")
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(bootstrap) + b"\n")
    code, out, _ = run_cli(capsys, f"--source=file:{path}", "--sink=log:?format=text", "--healthz-port=0")
    assert code == 0
    assert out == ("2021-08-03T09:22:38Z -       Event/kube-system/bootstrap-finished -: "
                   "Required control plane pods have been created\n")


def test_healthz_port_in_use_is_one_clear_line_and_exit_2(capsys, tmp_path):
    import socket

    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, f"--source=file:{path}", "--sink=log", "--healthz-ip=127.0.0.1",
                                 f"--healthz-port={port}")
    assert code == 2 and out == ""  # nothing was delivered: the router never started
    assert f"eventrouter: error: --healthz-ip/--healthz-port: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_a_source_that_stops_with_an_error_exits_1_after_delivering_what_it_read(capsys, tmp_path, monkeypatch):
    import eventrouter.app as app
    from eventrouter.sources import build_source

    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")

    def broken_source(flag, context):  # type: ignore[no-untyped-def]
        source = build_source(flag, context)
        replay = source.run

        def run(router, stop):  # type: ignore[no-untyped-def]
            replay(router, stop)
            raise RuntimeError("the source broke")

        source.run = run
        return source

    monkeypatch.setattr(app, "build_source", broken_source)
    code, out, _ = run_cli(capsys, f"--source=file:{path}", "--sink=log", "--healthz-port=0")
    assert code == 1
    assert orjson.loads(out)["uid"] == real_objects()[0]["metadata"]["uid"]


def test_check_reports_an_unexpected_sink_exception_in_one_line_with_secrets_masked(capsys, monkeypatch):
    import eventrouter.commands as commands
    from eventrouter.config import build_sink

    def buggy(flag):  # type: ignore[no-untyped-def]
        sink = build_sink(flag)

        def open_() -> None:
            raise RuntimeError(f"bug while connecting with {sink.opts['pw'].reveal()}")

        sink.open = open_
        return sink

    monkeypatch.setattr(commands, "build_sink", buggy)
    code, out, _ = run_cli(capsys, "check", "--sink=influxdb:http://127.0.0.1:1?pw=pw-SECRET-1")
    assert code == 1
    assert "failed: unexpected RuntimeError in the sink: bug while connecting with ***" in out
    assert "SECRET" not in out

    def broken(flag):  # type: ignore[no-untyped-def]
        raise KeyError(flag)

    monkeypatch.setattr(commands, "build_sink", broken)
    code, out, _ = run_cli(capsys, "check", "--sink=influxdb:http://127.0.0.1:1?pw=pw-SECRET-1", "--sink=log")
    assert code == 2
    assert out.splitlines()[0] == "error: --sink=influxdb: the sink failed to start: KeyError"
    assert "SECRET" not in out


@pytest.mark.parametrize("flag", ["-one_output", "-one_output=true", "-skip_log_headers", "-add_dir_header=false",
                                  "-log_backtrace_at=:0", "-one-output", "-skip_headers=true", "-stderrthreshold=INFO",
                                  "-log_file_max_size=1800", "-vmodule=x=2", "-alsologtostderr", "-max_procs=2"])
def test_klog_flags_of_kube_eventer_manifests_are_accepted(capsys, flag):
    code, _, err = run_cli(capsys, "--source=file:/dev/null", "--sink=log", "--healthz-port=0", flag)
    assert code == 0, err


@pytest.mark.parametrize("durations", [["--leader-elect-lease-duration=10s"],
                                       ["--leader-elect-renew-deadline=20s"],
                                       ["--leader-elect-retry-period=10s"],
                                       ["--leader-elect-retry-period=0s"]])
def test_leader_election_durations_that_could_overlap_two_leaders_exit_2(capsys, durations):
    code, _, err = run_cli(capsys, "--source=file:/dev/null", "--sink=log", "--healthz-port=0", "--leader-elect",
                           *durations)
    assert code == 2
    assert "--leader-elect-lease-duration" in err and "must be longer than --leader-elect-renew-deadline" in err


def test_leader_election_durations_in_order_are_accepted(capsys):
    code, _, err = run_cli(capsys, "--source=file:/dev/null", "--sink=log", "--healthz-port=0",
                           "--leader-elect-lease-duration=60s", "--leader-elect-renew-deadline=40s",
                           "--leader-elect-retry-period=5s")
    assert code == 0, err


def test_shutdown_timeout_bounds_the_whole_shutdown_even_with_a_slow_source(tmp_path, monkeypatch):
    """A source slow to stop and a sink that cannot deliver: the run still ends about --shutdown-timeout after
    the stop (was: up to twice that, past the pod's grace period)."""
    import threading

    import eventrouter.app as app
    from eventrouter.app import RunConfig, run
    from eventrouter.sources import SourceContext, build_source

    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")

    def slow_source(flag, context):  # type: ignore[no-untyped-def]
        source = build_source(flag, context)
        replay = source.run

        def run_(router, stop):  # type: ignore[no-untyped-def]
            replay(router, stop)
            stop.wait()
            time.sleep(1.5)  # slow to let go

        source.run = run_
        return source

    monkeypatch.setattr(app, "build_source", slow_source)
    stop = threading.Event()
    config = RunConfig(source=f"file:{path}", sinks=["influxdb:http://127.0.0.1:1?db=k8s"], context=SourceContext(),
                       healthz_port=0, shutdown_timeout=1.0)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(run(config, stop)))
    thread.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    stop.set()
    thread.join(10)
    assert codes == [0]
    assert time.monotonic() - stopped < 1.7


def test_sinks_and_check_show_values_as_flags_are_written(capsys):
    code, out, _ = run_cli(capsys, "sinks")
    assert code == 0
    assert "repeat_interval (a duration such as 500ms, 30s, 5m, 1h >= 0 = 30m)" in out  # was: = 1800.0
    assert "at_all (true or false = false)" in out
    assert "timeout (a duration such as 500ms, 30s, 5m, 1h >= 0.001 = 10s)" in out
    code, out, _ = run_cli(capsys, "check", "--sink=dingtalk:?access_token=tok-SECRET&label=a,x&label=b"
                                            "&repeat_interval=90s&flush_interval=200ms")
    assert code == 0
    lines = out.splitlines()
    for line in ("    access_token = ***", "    sign = ", "    at_all = false", "    label = ['a,x', 'b']",
                 "    repeat_interval = 90s", "    template = ", "    flush_interval = 200ms"):
        assert line in lines, line
    assert "SECRET" not in out


def test_flag_value():
    from eventrouter.commands import flag_value
    from eventrouter.options import Duration

    assert [flag_value(Duration(s)) for s in (1800, 3600, 10, 0.2, 90, 1.5, 0)] == [
        "30m", "1h", "10s", "200ms", "90s", "1.5s", "0"]
    assert (flag_value(True), flag_value(["a", "b"]), flag_value(20), flag_value("x")) == ("true", "a,b", "20", "x")


# malformed values per flag type: every top-level flag whose value is checked gets these rows; a flag
# with a new type fails test_every_checked_flag_has_malformed_rows until it gets rows too
def _bad_values():
    from eventrouter import cli

    return {
        cli._duration: ["soon", "-1s", "", "1w"],
        cli._bool: ["yes", "2", "maybe"],
        cli._port: ["99999", "-1", "65536", "http", ""],
        cli._address: ["not an ip!", "", "-h"],
        cli._checkpoint: ["bogus:x", "configmap:", "configmap:ns/", "file:", "none:x"],
        cli._dns_name: ["Bad_Name", "", "a/b", "-x"],
        cli._verbosity: ["x", "-1", "1.5"],
        cli._positive: ["0", "-2", "fast", ""],
        cli._positive_int: ["0", "-1", "1.5", "many"],
        cli._enrich_features: ["owners", "labels,bogus", "pods"],
    }


def _flag_rows():
    from eventrouter.cli import run_parser

    rows = []
    for action in run_parser()._actions:
        if action.type is None or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        for value in _bad_values().get(action.type, []):
            rows.append(pytest.param(flag, value, id=f"{flag}={value}"))
    rows += [pytest.param("--log-format", v, id=f"--log-format={v}") for v in ("xml", "")]
    return rows


def test_every_checked_flag_has_malformed_rows():
    from eventrouter.cli import run_parser

    types = {a.type for a in run_parser()._actions if a.type is not None}
    assert types <= set(_bad_values()), types - set(_bad_values())


@pytest.mark.parametrize(("flag", "value"), _flag_rows())
def test_every_flag_rejects_malformed_values_with_exit_2_and_one_line(capsys, flag, value):
    code, out, err = run_cli(capsys, "--source=file:/dev/null", "--sink=log", "--healthz-port=0", f"{flag}={value}")
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"eventrouter: error: argument {flag}") or f"{flag}:" in err or f"/{flag}:" in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source=kubernetes:http://[bad"], "--source=kubernetes: '[bad' is not a valid host ('[' without ']')"),
        (["--source=kubernetes:https://h:99999"], "--source=kubernetes: 'h:99999': the port '99999' is not a number"),
        (["--source=kubernetes:https://$NO_SUCH_VAR_X"], "--source=kubernetes: environment variable $NO_SUCH_VAR_X is"),
        (["--source=file:-", "--sink=webhook:http://h:99999"],
         "--sink=webhook: 'h:99999': the port '99999' is not a number from 1 to 65535 in the URL"),
        (["--source=file:-", "--sink=kafka:?brokers=k:notaport"],
         "--sink=kafka: option 'brokers': 'k:notaport': the port 'notaport' is not a number from 1 to 65535"),
        (["--source=file:-", "--sink=dingtalk:https://oapi.dingtalk.com/robot/send?access_token=$NO_SUCH_DT_TOKEN"],
         "--sink=dingtalk: environment variable $NO_SUCH_DT_TOKEN is not set"),
        (["--source=file:-", "--sink=dingtalk:https://oapi.dingtalk.com/robot/send?access_token=${DT_TOKEN"],
         "--sink=dingtalk: unterminated '${' in the flag"),
        (["--source=file:-", "--sink=elasticsearch:?nodes=http://h:0"], "--sink=elasticsearch: option 'nodes': "),
        (["--source=kubernetes:?kubeconfig=/etc/passwd"],
         "--source=kubernetes: /etc/passwd is not a kubeconfig file"),
    ],
)
def test_bad_sources_and_sinks_exit_2_with_one_line(capsys, args, message):
    args = [*args, "--healthz-port=0"] if any(a.startswith("--sink") for a in args) else [*args, "--sink=log",
                                                                                          "--healthz-port=0"]
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_help_lists_the_sub_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "eventrouter COMMAND" in out
    for command in ("sinks", "check", "simulate", "athena-ddl"):
        assert f"\n  {command} " in out, command


class _EchoingReceiver:
    """Answers 401 with the request's headers in a JSON body, as many receivers (and proxies) do."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = orjson.dumps({"error": "unauthorized", "request": {"headers": dict(self.headers.items())}})
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_check_masks_credential_headers_and_says_what_was_not_contacted(capsys):
    code, out, _ = run_cli(capsys, "check", "--sink=webhook:http://127.0.0.1:1/x?header=Authorization=Bearer%20super"
                           "secret123&header=X-Api-Key=key-SECRET-9&header=Cookie=sid%3DSECRET&header=X-Trace=keep-me",
                           "--sink=dingtalk:?access_token=tok-SECRET-1")
    assert code == 0
    assert "supersecret123" not in out and "SECRET" not in out
    assert "webhook:http://127.0.0.1:1/x?header=Authorization=***&header=X-Api-Key=***&header=Cookie=***" \
           "&header=X-Trace=keep-me" in out
    assert "    header = ['Authorization=Bearer ***', 'X-Api-Key=***', 'Cookie=***', 'X-Trace=keep-me']" in out
    assert "    open: ok (not contacted: opening webhook makes no connection; --send-test delivers a test event)" in out
    assert "    open: ok (not contacted: opening dingtalk makes no connection; --send-test delivers a test event)" \
        in out


@pytest.mark.parametrize("auth", ["username=admin&password=pw-SECRET-42", "bearer_token=tok-SECRET-42",
                                  "header=Authorization=Basic%20YWRtaW46cHctU0VDUkVULTQy"])
def test_an_echoed_authorization_header_reaches_neither_check_nor_the_log(capsys, caplog, tmp_path, auth):
    import base64

    path = tmp_path / "two.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()[:2]))
    receiver = _EchoingReceiver()
    try:
        flag = f"--sink=webhook:{receiver.url}?{auth}&max_retries=0"
        code, out, _ = run_cli(capsys, "check", flag, "--send-test")
        run_code, _, err = run_cli(capsys, f"--source=file:{path}", flag, "--healthz-port=0")
    finally:
        receiver.stop()
    assert code == 1 and "failed: PermanentError: webhook receiver answered HTTP 401" in out
    assert run_code == 0
    logged = caplog.text + err
    assert "HTTP 401" in logged  # the failure is logged ...
    for leaked in ("SECRET", base64.b64encode(b"admin:pw-SECRET-42").decode(), "YWRtaW46cHctU0VDUkVULTQy"):
        assert leaked not in out and leaked not in logged  # ... without the credentials, in any form
    assert '"Authorization":"***"' in out, out


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ('{"Authorization":"Basic YWRtaW46aHVudGVyMjI="}', ["hunter22"], '{"Authorization":"Basic ***"}'),
        ("echo YWRtaW46aHVudGVyMjI=", ["hunter22"], "echo ***"),  # base64 of user:password, no header name
        ("X-Api-Key: abc123, x-auth-token=t0k; Cookie: sid=1", [], "X-Api-Key: ***, x-auth-token=***; Cookie: ***"),
        ("Authorization: Bearer abc.def", [], "Authorization: Bearer ***"),
        ("proxy said: Bearer abc.def-123", [], "proxy said: Bearer ***"),
        ("key_format=%Y keywords: a eventstopic=t", [], "key_format=%Y keywords: a eventstopic=t"),
    ],
)
def test_redact_text_masks_credentials_in_error_bodies(text, secrets, expected):
    from eventrouter.sinkurl import redact_text

    assert redact_text(text, secrets) == expected


def test_check_says_which_server_open_contacted(capsys):
    """Observed, not declared: Python sockets (httpx) by address, a C library's (librdkafka) as 'connected'."""
    from tests.servers.fake_elasticsearch import FakeElasticsearch
    from tests.servers.tansu import Tansu

    es = FakeElasticsearch().start()
    es_port = es.url.rsplit(":", 1)[1]
    broker = Tansu().start()
    try:
        code, out, _ = run_cli(capsys, "check", f"--sink=elasticsearch:{es.url}",
                               f"--sink=kafka:?brokers={broker.bootstrap}")
    finally:
        es.stop()
        broker.stop()
    assert code == 0, out
    opens = [line for line in out.splitlines() if "open:" in line]
    assert opens == [f"    open: ok (connected to 127.0.0.1:{es_port})", "    open: ok (connected)"]


@pytest.mark.parametrize("query", ["inClusterConfig=maybe", "insecure=2", "useServiceAccount=yes", "kubeconfig=",
                                   "context=", "namespaces=Bad_NS", "namespaces=,", "api=v2", "page_size=0",
                                   "page_size=many", "page_size=10001", "stall_timeout=0.5s", "stall_timeout=soon",
                                   "watch_timeout=-1s", "nosuchoption=1"])
def test_every_source_option_rejects_malformed_values_with_exit_2_and_one_line(capsys, query):
    code, out, err = run_cli(capsys, f"--source=kubernetes:https://127.0.0.1:6443?{query}",
                             "--sink=log", "--healthz-port=0")
    assert code == 2, err
    assert err.startswith("eventrouter: error: --source=kubernetes: ") and len(err.strip().splitlines()) == 1
    assert out == "" and "Traceback" not in err


def test_check_masks_an_undeclared_credential_option_of_a_plugin(capsys, monkeypatch):
    """A plugin option named like a credential but not declared secret is still shown masked."""
    from eventrouter import Option, Sink
    from eventrouter import registry as reg

    class Plain(Sink):
        name = "plain"
        options = (Option("api_token", str, help="declared without secret=True"),
                   Option("key_format", str, default="%Y", help="not a credential"))

        def send(self, batch):  # type: ignore[no-untyped-def]
            pass

    monkeypatch.setattr(reg, "load", lambda name: Plain)
    code, out, _ = run_cli(capsys, "check", "--sink=plain:?api_token=tok-SECRET-5&key_format=%25H")
    assert code == 0
    assert "SECRET" not in out
    assert "    api_token = ***" in out.splitlines() and "    key_format = %H" in out.splitlines()
    assert "plain:?api_token=***&key_format=%25H" in out
