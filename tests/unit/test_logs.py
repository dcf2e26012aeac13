"""JSON log lines carry the record's fields; text stays the default."""

from __future__ import annotations

import json
import logging

import pytest

from rhizomorph.logs import JsonFormatter, configure


def test_json_lines_have_level_logger_message_and_extra_fields():
    record = logging.LogRecord("rhizomorph.worker", logging.WARNING, __file__, 1, "evicting %s", ("ws/c",), None)
    record.address = "ws/c"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "rhizomorph.worker"
    assert entry["message"] == "evicting ws/c" and entry["address"] == "ws/c"
    assert entry["time"].endswith("Z")


def test_configure_refuses_unknown_formats():
    with pytest.raises(ValueError, match="log_format"):
        configure("INFO", "xml")
