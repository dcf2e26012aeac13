"""Unit tests for rhizomorph/config.py: defaults, environment coercion, derived values."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from rhizomorph import config as config_module
from rhizomorph.cli import build_parser
from rhizomorph.config import Config, url_host
from rhizomorph.launcher import Deployment


def test_defaults():
    config = Config()
    assert config.host == "127.0.0.1"
    assert config.port == 9527
    assert config.workers == 0
    assert config.ray_address == ""
    assert config.reconnection_token_lifetime == 172800.0
    assert config.public_base_url == ""
    assert config.max_message_size == 16 * 1024 * 1024
    assert config.max_services_per_client == 1000
    assert config.compression is False
    assert config.log_level == "INFO"


def test_random_defaults_differ_per_instance():
    a, b = Config(), Config()
    assert a.server_id and a.server_id != b.server_id
    assert len(a.jwt_secret) >= 32 and a.jwt_secret != b.jwt_secret


def test_from_empty_env_gives_defaults():
    config = Config.from_env({})
    assert config.port == 9527
    assert config.host == "127.0.0.1"


def test_from_env_coerces_types():
    config = Config.from_env(
        {
            "RHIZOMORPH_PORT": "9000",
            "RHIZOMORPH_WORKERS": "3",
            "RHIZOMORPH_HANDSHAKE_TIMEOUT": "2.5",
            "RHIZOMORPH_RECONNECTION_TOKEN_LIFETIME": "60",
            "RHIZOMORPH_COMPRESSION": "true",
            "RHIZOMORPH_HOST": "0.0.0.0",
            "RHIZOMORPH_SERVER_ID": "abc",
            "RHIZOMORPH_LOG_LEVEL": "DEBUG",
        }
    )
    assert config.port == 9000 and type(config.port) is int
    assert config.workers == 3
    assert config.handshake_timeout == 2.5 and type(config.handshake_timeout) is float
    assert config.reconnection_token_lifetime == 60.0 and type(config.reconnection_token_lifetime) is float
    assert config.compression is True
    assert config.host == "0.0.0.0"
    assert config.server_id == "abc"
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_from_env_bool_spellings(raw, expected):
    assert Config.from_env({"RHIZOMORPH_COMPRESSION": raw}).compression is expected


@pytest.mark.parametrize(
    "name, raw, kind",
    [
        ("PORT", "nine", "int"),
        ("PORT", "9.5", "int"),
        ("WORKERS", "", "int"),
        ("HANDSHAKE_TIMEOUT", "soon", "float"),
        ("COMPRESSION", "maybe", "bool"),
        ("COMPRESSION", "", "bool"),
    ],
)
def test_from_env_invalid_value_names_the_variable(name, raw, kind):
    with pytest.raises(ValueError) as info:
        Config.from_env({f"RHIZOMORPH_{name}": raw})
    message = str(info.value)
    assert f"RHIZOMORPH_{name}" in message
    assert repr(raw) in message
    assert kind in message


def test_from_env_ignores_unrelated_variables():
    config = Config.from_env({"PORT": "1", "RHIZOMORPH_UNKNOWN": "x", "HYPHA_PORT": "2"})
    assert config.port == 9527


def test_from_env_overrides_win_and_none_is_ignored():
    env = {"RHIZOMORPH_PORT": "9000", "RHIZOMORPH_HOST": "10.0.0.1"}
    config = Config.from_env(env, port=1234, host=None)
    assert config.port == 1234
    assert config.host == "10.0.0.1"


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("RHIZOMORPH_PORT", "9100")
    assert Config.from_env().port == 9100


def test_every_field_can_come_from_the_environment():
    # Each field has a type _coerce understands: setting it from a string must not raise.
    samples = {"int": "7", "float": "0.5", "bool": "yes", "str": "value"}
    for f in dataclasses.fields(Config):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        assert kind in samples, f"{f.name} has an unexpected type {kind}"
        config = Config.from_env({f"RHIZOMORPH_{f.name.upper()}": samples[kind]})
        value = getattr(config, f.name)
        assert value == {"int": 7, "float": 0.5, "bool": True, "str": "value"}[kind], f.name


def test_docstring_names_every_command_line_flag():
    # The module docstring lists the fields the CLI can set; a new flag must be listed there too.
    (serve,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in serve.choices["serve"]._actions} - {"help", "config_file", "preset"}
    fields = {f.name for f in dataclasses.fields(Config)}
    assert dests <= fields, dests - fields
    doc = config_module.__doc__ or ""
    assert [d for d in sorted(dests) if not re.search(rf"\b{d}\b", doc)] == []


def test_manager_id():
    assert Config(server_id="xyz").manager_id == "manager-xyz"
    assert Config.from_env({"RHIZOMORPH_SERVER_ID": "s1"}).manager_id == "manager-s1"


@pytest.mark.parametrize(
    "host, port, expected",
    [
        ("127.0.0.1", 9527, "http://127.0.0.1:9527"),
        ("0.0.0.0", 8000, "http://127.0.0.1:8000"),
        ("::", 8000, "http://[::1]:8000"),
        ("", 8000, "http://127.0.0.1:8000"),
        ("router.example.org", 443, "http://router.example.org:443"),
    ],
)
def test_base_url_derived_from_host_and_port(host, port, expected):
    assert Config(host=host, port=port).base_url == expected


@pytest.mark.parametrize(
    "public, expected",
    [
        ("https://hypha.example.org", "https://hypha.example.org"),
        ("https://hypha.example.org/", "https://hypha.example.org"),
        ("https://example.org/base/", "https://example.org/base"),
    ],
)
def test_base_url_prefers_public_base_url(public, expected):
    assert Config(host="0.0.0.0", port=1, public_base_url=public).base_url == expected


def test_base_url_brackets_ipv6_host():
    assert Config(host="::1").base_url == "http://[::1]:9527"


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "[::1]"),
        ("0:0:0:0:0:0:0:0", "[::1]"),
        ("::1", "[::1]"),
        ("2001:db8::7", "[2001:db8::7]"),
        ("fe80::1%eth0", "[fe80::1%eth0]"),
        ("[::1]", "[::1]"),
        ("localhost", "localhost"),
        ("router.example.org", "router.example.org"),
    ],
)
def test_url_host(host, expected):
    assert url_host(host) == expected


@pytest.mark.parametrize(
    "host, expected",
    [
        ("::1", "ws://[::1]:9527"),
        ("::", "ws://[::1]:9527"),
        ("0.0.0.0", "ws://127.0.0.1:9527"),
        ("127.0.0.1", "ws://127.0.0.1:9527"),
    ],
)
def test_deployment_url_before_start(host, expected):
    # Before any worker started, the URL comes from the config alone (no Ray needed).
    assert Deployment(Config(host=host)).url == expected


def test_replace_returns_a_new_config():
    base = Config(port=1)
    changed = base.replace(port=2)
    assert (base.port, changed.port) == (1, 2)
    assert changed.server_id == base.server_id


def test_worker_allocator_sets_pythonmalloc_for_the_gateway_workers_only_when_asked():
    assert Config().worker_env_vars() == {}  # pymalloc, Python's default: nothing to set
    assert Config(worker_allocator="malloc").worker_env_vars() == {"PYTHONMALLOC": "malloc"}
    with pytest.raises(ValueError, match="worker_allocator"):
        Config(worker_allocator="jemalloc").worker_env_vars()
