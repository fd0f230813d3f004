"""``make demo``: the recorded real events flow through the router to the console sink."""

from __future__ import annotations

import sys
from importlib.resources import files

from eventrouter.cli import main as cli_main


def main() -> int:
    events = files("eventrouter.simulator") / "data" / "core-v1.jsonl"
    print(f"eventrouter demo: replaying {events} through the router (console sink)", file=sys.stderr)
    return cli_main(["--source", f"file:{events}", "--sink", "log:?format=text", "--healthz-port", "0",
                     "--cluster-name", "demo"])


if __name__ == "__main__":
    raise SystemExit(main())
