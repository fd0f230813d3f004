"""Who the data kept under ``--data-dir`` belongs to.

A sink's disk buffer (``DATA_DIR/buffer/<label>``) and state (``DATA_DIR/sinks/<label>``) are named by its
label (``webhook``, ``webhook-2``), which says nothing about where its events go. When the flag behind a
label names another destination than the run that kept the data (a new URL, a new topic or token, two
sinks of one kind swapped), that data must not reach the new destination: it is moved aside to
``DATA_DIR/orphaned/`` with a warning that says where it is, and the sink starts empty.

The destination is the flag as written (before ``$VAR`` expansion, so a rotated secret in the
environment changes nothing) without the options every sink takes (filters and delivery settings: a new
``level=`` or ``batch_size=`` is still the same destination).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from urllib.parse import parse_qsl

from eventrouter.sink import CORE_OPTION_NAMES

log = logging.getLogger("eventrouter")

OWNER_FILE = "destination"


def destination_id(flag: str) -> str:
    """A short, stable digest of the destination a ``--sink`` flag names (no secret can be read from it)."""
    if len(flag) >= 2 and flag[0] == flag[-1] and flag[0] in "\"'":
        flag = flag[1:-1]
    name, _, rest = flag.partition(":")
    base, _, query = rest.partition("?")
    kept = sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in CORE_OPTION_NAMES)
    text = "\x00".join([name.strip(), base, *(f"{k}={v}" for k, v in kept)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def claim(data_dir: str, label: str, flag: str, shown: str) -> None:
    """Make ``label``'s buffer and state belong to ``flag``'s destination; data kept for another
    destination is moved aside (never sent to this one). ``shown``: the destination for the log (no secret)."""
    owner_path = os.path.join(data_dir, "owners", label)
    wanted = destination_id(flag)
    try:
        with open(owner_path, encoding="utf-8") as handle:
            previous, _, previous_shown = handle.read().partition("\n")
    except FileNotFoundError:
        previous, previous_shown = "", ""
    if previous == wanted:
        return
    kinds = [kind for kind in ("buffer", "sinks")
             if os.path.isdir(os.path.join(data_dir, kind, label)) and os.listdir(os.path.join(data_dir, kind, label))]
    if previous and kinds:  # no owner recorded (data of an older version): adopted as it is
        # laid out as a data dir of its own: --data-dir=<aside> with the old flag delivers it
        aside = os.path.join(data_dir, "orphaned", f"{label}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        for kind in kinds:
            os.makedirs(os.path.join(aside, kind), exist_ok=True)
            os.replace(os.path.join(data_dir, kind, label), os.path.join(aside, kind, label))
        log.warning("sink %s: it now sends to %s, but its kept events and state were for %s: they are not "
                    "sent to the new destination and stay in %s (delete it, or run a sink with the old "
                    "flag and --data-dir pointing there to deliver them)", label, shown,
                    previous_shown.strip() or "another destination", aside)
    os.makedirs(os.path.dirname(owner_path), exist_ok=True)
    tmp = f"{owner_path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{wanted}\n{shown}\n")
    os.replace(tmp, owner_path)
