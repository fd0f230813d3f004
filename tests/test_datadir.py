"""The data kept under --data-dir belongs to one destination: a changed flag never gets another's events."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from eventrouter.datadir import claim, destination_id


def test_the_destination_is_the_flag_without_filter_and_delivery_options():
    base = destination_id("webhook:http://r/team-a?header=X-Team=a")
    assert destination_id("webhook:http://r/team-a?header=X-Team=a&level=Warning&batch_size=9") == base
    assert destination_id("'webhook:http://r/team-a?header=X-Team=a'") == base  # manifest quotes
    assert destination_id("webhook:http://r/team-b?header=X-Team=a") != base
    assert destination_id("kafka:?brokers=k:9092&topic=a") != destination_id("kafka:?brokers=k:9092&topic=b")
    # written before $VAR expansion: a rotated token in the environment is the same destination
    flag = "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=$DT_TOKEN"
    assert destination_id(flag) == destination_id(flag)
    assert "DT_TOKEN" not in destination_id(flag)


def test_data_for_another_destination_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    data = tmp_path / "data"
    claim(str(data), "webhook", "webhook:http://r/team-a", "webhook http://r/team-a")
    (data / "buffer" / "webhook").mkdir(parents=True)
    (data / "buffer" / "webhook" / "00000001.seg").write_bytes(b"team a's events")
    claim(str(data), "webhook", "webhook:http://r/team-a?level=Warning", "webhook http://r/team-a")
    assert (data / "buffer" / "webhook" / "00000001.seg").exists()  # same destination: kept in place
    with caplog.at_level(logging.WARNING):
        claim(str(data), "webhook", "webhook:http://r/team-b", "webhook http://r/team-b")
    assert not (data / "buffer" / "webhook").exists()
    (aside,) = (data / "orphaned").iterdir()
    # laid out as a data dir: --data-dir=<aside> with the old flag would deliver it
    assert (aside / "buffer" / "webhook" / "00000001.seg").read_bytes() == b"team a's events"
    assert "http://r/team-b" in caplog.text and "http://r/team-a" in caplog.text and str(aside) in caplog.text


def test_data_without_a_recorded_owner_is_adopted(tmp_path: Path):
    data = tmp_path / "data"
    (data / "buffer" / "log").mkdir(parents=True)
    (data / "buffer" / "log" / "00000001.seg").write_bytes(b"x")
    claim(str(data), "log", "log:", "log")
    assert (data / "buffer" / "log" / "00000001.seg").exists()
    assert not (data / "orphaned").exists()
