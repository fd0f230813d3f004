"""Serialized forms of an Event shared by several sinks, so that their outputs stay byte-identical."""

from __future__ import annotations

import orjson

from eventrouter.event import Event


def json_line(event: Event) -> bytes:
    """One JSON Lines record: ``Event.to_dict()`` (times UTC ``...Z``, no ``raw``) and a newline.

    The ``s3`` sink's archive lines and the ``firehose`` sink's records are exactly this, so the objects
    both leave in S3 are read by the same Athena table (``eventrouter athena-ddl``).
    """
    return orjson.dumps(event.to_dict()) + b"\n"
