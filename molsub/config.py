"""The node's configuration (node.toml), with every key overridable by environment variable.

``load_config(path)`` reads a node.toml (or, with ``None``, the built-in defaults), applies
``MOLSUB_<SECTION>_<KEY>`` environment overrides (lists comma-separated) and validates the
result, so that a bad setting stops ``molsub serve`` at start with the key and the reason
rather than surfacing later as a refused association or a lost object.

The default bind address is 127.0.0.1, not 0.0.0.0: a node that receives patient images must be
opened to the network on purpose (``host = "0.0.0.0"`` in node.toml), never by default.
Relative paths in a node.toml are taken relative to that file's folder.
"""

from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from common.settings import (
    CONTENT_POLICIES,
    Destination,
    HttpSettings,
    InputPolicy,
    InputSettings,
    LogSettings,
    ModelSettings,
    NodeConfig,
    NodeSettings,
    QueueSettings,
    ResultsSettings,
    TlsSettings,
)
from common.tls import TlsConfigError, client_context, server_context

ENV_PREFIX = "MOLSUB_"
CONFIG_FILE_ENV = "MOLSUB_CONFIG"  # names the node.toml when no --config is given
T = TypeVar("T")
# A destination's network waits; an hour bounds them so that a typo cannot park a deliver worker.
DESTINATION_TIMEOUTS = ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s")
MAX_TIMEOUT_S = 3600.0
# [node] max_pdu_bytes: PS3.8 allows any length; below 4 kB every object takes thousands of PDUs,
# above 16 MB one PDU is a memory commitment a peer can force.
MIN_PDU_BYTES, MAX_PDU_BYTES = 4096, 1 << 24


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the key and why."""


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "model": ModelSettings,
    "queue": QueueSettings,
    "inputs": InputSettings,
    "results": ResultsSettings,
    "tls": TlsSettings,
    "http": HttpSettings,
    "logging": LogSettings,
}
# [inputs] policies that make no sense for a kind (the node has no model for tomosynthesis).
_NOT_PROCESSED = ("breast_tomosynthesis", "breast_projection", "secondary_capture")


def load_node_config(path: str | Path | None = None) -> NodeConfig:
    """``path`` (--config), else the file $MOLSUB_CONFIG names, else built-in defaults.

    How every process of the node (serve, worker, units, resend, ``-A worker.queue.app``)
    finds its config; the environment overrides apply in every case.
    """
    return load_config(path or os.environ.get(CONFIG_FILE_ENV) or None)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (None: built-in defaults), apply environment overrides and validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    source = None
    if path is not None:
        source = Path(path)
        try:
            with source.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
        base_dir = source.resolve().parent
    unknown = sorted(set(raw) - set(_SECTIONS) - {"destinations"})
    if unknown:
        raise ConfigError(
            f"unknown section(s) {unknown}; known: {sorted(_SECTIONS)} and [[destinations]]"
        )
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), env, base_dir)
        for name, cls in _SECTIONS.items()
    }
    destinations = _build_destinations(raw.get("destinations", []), base_dir, sections["tls"])
    config = NodeConfig(
        node=sections["node"],
        model=sections["model"],
        queue=sections["queue"],
        inputs=sections["inputs"],
        results=sections["results"],
        tls=sections["tls"],
        http=sections["http"],
        logging=sections["logging"],
        destinations=destinations,
        source=source,
    )
    _validate(config, env)
    return config


def _build_section(
    section: str, cls: type[T], values: object, env: Mapping[str, str], base_dir: Path
) -> T:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{section}] unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name in known:
        env_name = _env_name(section, name)
        label = _label(section, name, env)
        if env_name in env:
            kwargs[name] = _convert(env[env_name], hints[name], label)
            if isinstance(kwargs[name], Path) and not kwargs[name].is_absolute():
                kwargs[name] = Path.cwd() / kwargs[name]
        elif name in values:
            kwargs[name] = _convert(values[name], hints[name], label)
            if isinstance(kwargs[name], Path) and not kwargs[name].is_absolute():
                kwargs[name] = base_dir / kwargs[name]
    return cls(**kwargs)


def _convert(value: object, hint: object, label: str) -> object:
    """``value`` (TOML value or environment string) as the field's type, or a ConfigError."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and (value is None or value == ""):
        return None
    from_env = isinstance(value, str)
    try:
        if typing.get_origin(hint) is tuple:
            items = [v.strip() for v in value.split(",")] if from_env else value
            if not isinstance(items, list):
                raise TypeError
            items = [i for i in items if i != ""]
            if not all(isinstance(i, str) for i in items):
                raise TypeError
            return tuple(items)
        if hint is bool:
            if from_env:
                return {"1": True, "true": True, "0": False, "false": False}[value.lower()]
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, (bool, float)):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is Path:
            if not isinstance(value, str) or not value:
                raise TypeError
            return Path(value)
        if hint is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(hint, type) and issubclass(hint, StrEnum):
            if not isinstance(value, str):
                raise TypeError
            return hint(value.strip().lower())
    except (TypeError, ValueError, KeyError):
        pass
    else:
        raise ConfigError(f"{label}: unsupported setting type {hint}")
    wanted = {int: "an integer", float: "a number", Path: "a path", str: "a string"}.get(
        hint, "a list of strings" if typing.get_origin(hint) is tuple else str(hint)
    )
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        wanted = "one of " + ", ".join(f'"{v}"' for v in hint)
    raise ConfigError(f"{label}: must be {wanted}, got {value!r}")


def _build_destinations(
    values: object, base_dir: Path, tls: TlsSettings
) -> tuple[Destination, ...]:
    if not isinstance(values, list):
        raise ConfigError("[[destinations]] must be an array of tables")
    hints = typing.get_type_hints(Destination)
    out = []
    for index, entry in enumerate(values):
        label = f"[[destinations]] #{index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label}: must be a table")
        unknown = sorted(set(entry) - set(hints))
        if unknown:
            raise ConfigError(f"{label}: unknown key(s) {unknown}; known: {sorted(hints)}")
        if "name" not in entry:
            raise ConfigError(f"{label}: name is required")
        kwargs = {k: _convert(v, hints[k], f"{label} {k}") for k, v in entry.items()}
        for key in ("folder", *_DESTINATION_TLS_FILES):
            if isinstance(kwargs.get(key), Path) and not kwargs[key].is_absolute():
                kwargs[key] = base_dir / kwargs[key]
        if kwargs.get("tls"):  # the node's own identity and trust, unless the entry says else
            for key, default in zip(
                _DESTINATION_TLS_FILES, (tls.ca_file, tls.certificate, tls.private_key), strict=True
            ):
                if kwargs.get(key) is None:
                    kwargs[key] = default
        out.append(Destination(**kwargs))
    return tuple(out)


_DESTINATION_TLS_FILES = ("tls_ca_file", "tls_certificate", "tls_private_key")


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _label(section: str, key: str, env: Mapping[str, str]) -> str:
    """How an error names a setting: where it came from, so the admin knows what to fix."""
    env_name = _env_name(section, key)
    return f"[{section}] {key}" + (f" (from ${env_name})" if env_name in env else "")


def _validate(config: NodeConfig, env: Mapping[str, str]) -> None:
    n = config.node

    def node(key: str) -> str:
        return _label("node", key, env)

    def queue(key: str) -> str:
        return _label("queue", key, env)

    _check_ae_title(n.ae_title, node("ae_title"))
    for aet in n.allowed_calling_aets:
        _check_ae_title(aet, node("allowed_calling_aets"))
    if not n.host:
        raise ConfigError(f"{node('host')}: must not be empty (use 127.0.0.1 or 0.0.0.0)")
    _check_port(n.port, node("port"))
    if n.retention_hours < 0:
        raise ConfigError(
            f"{node('retention_hours')}: must be >= 0 hours (0 keeps everything), "
            f"got {n.retention_hours}"
        )
    if n.min_free_mb < 0:
        raise ConfigError(
            f"{node('min_free_mb')}: must be >= 0 MB (0 turns it off), got {n.min_free_mb}"
        )
    if config.tls.enabled:
        try:
            server_context(config.tls)
        except TlsConfigError as exc:
            raise ConfigError(str(exc)) from None
    if not n.study_timeout_s > 0:
        raise ConfigError(
            f"{node('study_timeout_s')}: must be > 0 seconds, got {n.study_timeout_s}"
        )
    _validate_association_limits(n, node)
    q = config.queue
    if q.visibility_timeout_s <= 0:
        raise ConfigError(f"{queue('visibility_timeout_s')}: must be > 0")
    if q.delivery_max_retries < 0:
        raise ConfigError(f"{queue('delivery_max_retries')}: must be >= 0")
    if q.stage_max_retries < 0:
        raise ConfigError(f"{queue('stage_max_retries')}: must be >= 0")
    if q.stall_timeout_s <= q.delivery_retry_max_s:
        raise ConfigError(
            f"{queue('stall_timeout_s')}: must be > {queue('delivery_retry_max_s')} "
            f"({q.delivery_retry_max_s:g}), or a unit waiting to retry delivery looks stalled"
        )
    if q.max_redeliveries < 0 or q.worker_restart_limit < 0:
        raise ConfigError(
            f"{queue('max_redeliveries')} / {queue('worker_restart_limit')}: must be >= 0"
        )
    if q.worker_restart_window_s <= 0:
        raise ConfigError(f"{queue('worker_restart_window_s')}: must be > 0")
    if q.delivery_retry_base_s <= 0 or q.delivery_retry_max_s < q.delivery_retry_base_s:
        raise ConfigError(
            f"{queue('delivery_retry_base_s')} / {queue('delivery_retry_max_s')}: "
            "need 0 < base <= max"
        )
    for key in _NOT_PROCESSED:
        if getattr(config.inputs, key) is InputPolicy.PROCESS:
            raise ConfigError(
                f"{_label('inputs', key, env)}: the node has no model for these images; "
                'use "refuse", "ignore" or "fail"'
            )
    for key, allowed in CONTENT_POLICIES.items():
        if getattr(config.inputs, key) not in allowed:
            choices = ", ".join(f'"{p}"' for p in allowed)
            raise ConfigError(
                f"{_label('inputs', key, env)}: these objects are recognised by their content, "
                f"which association negotiation cannot see; use {choices}"
            )
    if config.inputs.min_image_side < 1:
        raise ConfigError(f"{_label('inputs', 'min_image_side', env)}: must be >= 1 pixel")
    threshold = config.results.heatmap_threshold
    if not 0 < threshold <= 1:
        raise ConfigError(
            f"{_label('results', 'heatmap_threshold', env)}: must be > 0 and at most 1 (the "
            f"CAM's range), got {threshold}"
        )
    _validate_http(config, env)
    names: set[str] = set()
    for dest in config.destinations:
        label = f"[[destinations]] {dest.name!r}"
        if not dest.name.strip():
            raise ConfigError("[[destinations]] name: must not be empty")
        if dest.name in names:
            raise ConfigError(f"{label}: name used twice")
        names.add(dest.name)
        network = (dest.ae_title, dest.host, dest.port)
        if dest.folder is not None:
            if any(v is not None for v in network):
                raise ConfigError(f"{label}: give either folder or ae_title+host+port, not both")
            if dest.tls:
                raise ConfigError(f"{label}: tls applies to DICOM destinations, not to a folder")
            continue
        if any(v is None for v in network):
            raise ConfigError(f"{label}: needs ae_title, host and port (or folder)")
        _check_ae_title(dest.ae_title or "", f"{label} ae_title")
        _check_port(dest.port or 0, f"{label} port")
        if dest.tls:
            try:
                client_context(dest)
            except TlsConfigError as exc:
                raise ConfigError(str(exc)) from None
        for key in DESTINATION_TIMEOUTS:
            value = getattr(dest, key)
            if not 0 < value <= MAX_TIMEOUT_S:
                raise ConfigError(
                    f"{label} {key}: must be > 0 and at most {MAX_TIMEOUT_S:g} seconds, got {value}"
                )


def _validate_association_limits(n: NodeSettings, node: Callable[[str], str]) -> None:
    """[node] association limits (scp/association.py): positive counts, bounded waits, a PDU
    size a peer can use, and ``allowed_peers`` entries of the form AET@address."""
    from scp.association import parse_peers

    if n.max_associations < 1:
        raise ConfigError(f"{node('max_associations')}: must be >= 1, got {n.max_associations}")
    if not 1 <= n.max_associations_per_aet <= n.max_associations:
        raise ConfigError(
            f"{node('max_associations_per_aet')}: must be 1..max_associations "
            f"({n.max_associations}), got {n.max_associations_per_aet}"
        )
    for key in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
        value = getattr(n, key)
        if not 0 < value <= MAX_TIMEOUT_S:
            raise ConfigError(
                f"{node(key)}: must be > 0 and at most {MAX_TIMEOUT_S:g} seconds, got {value}"
            )
    if not MIN_PDU_BYTES <= n.max_pdu_bytes <= MAX_PDU_BYTES:
        raise ConfigError(
            f"{node('max_pdu_bytes')}: must be {MIN_PDU_BYTES}..{MAX_PDU_BYTES} bytes, "
            f"got {n.max_pdu_bytes}"
        )
    try:
        peers = parse_peers(n.allowed_peers)
    except ValueError as exc:
        raise ConfigError(f"{node('allowed_peers')}: {exc}") from None
    for aet in peers:
        _check_ae_title(aet, node("allowed_peers"))


def _check_ae_title(value: str, label: str) -> None:
    """DICOM AE titles: 1-16 characters, no backslash or control characters, not all spaces."""
    if not value.strip() or len(value) > 16:
        raise ConfigError(f"{label}: AE title {value!r} must have 1 to 16 characters")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ConfigError(f"{label}: AE title {value!r} has a backslash or non-ASCII character")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _validate_http(config: NodeConfig, env: Mapping[str, str]) -> None:
    h = config.http

    def http(key: str) -> str:
        return _label("http", key, env)

    if h.port != 0:  # 0: the HTTP server is off
        _check_port(h.port, http("port") + " (0 turns the server off)")
        if h.port == config.node.port and h.host == config.node.host:
            raise ConfigError(f"{http('port')}: {h.port} is the DICOM port ([node] port)")
    if not h.host:
        raise ConfigError(f"{http('host')}: must not be empty (use 127.0.0.1 or 0.0.0.0)")
    if not h.refresh_s > 0:
        raise ConfigError(f"{http('refresh_s')}: must be > 0 seconds, got {h.refresh_s}")
    if h.token_file is not None:
        try:
            token = h.token_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"{http('token_file')}: cannot read {h.token_file}: {exc}") from None
        if not token or len(token[0].strip()) < 16:
            raise ConfigError(f"{http('token_file')}: its first line must be a token of 16+ chars")
    if h.token and len(h.token) < 16:
        raise ConfigError(f"{http('token')}: must be at least 16 characters")
    level = config.logging.level.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"{_label('logging', 'level', env)}: one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )


def _check_port(value: int, label: str) -> None:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{label}: must be a TCP port 1..65535, got {value}")


def to_toml(config: NodeConfig) -> str:
    """The node.toml that ``load_config`` reads back as ``config`` (paths absolute).

    How the demo, the tests and the benches write the config of a node they start.
    """
    lines = [f"# {_TOML_HEADER}"]
    sections = (
        ("node", config.node),
        ("model", config.model),
        ("queue", config.queue),
        ("inputs", config.inputs),
        ("results", config.results),
        ("tls", config.tls),
        ("http", config.http),
        ("logging", config.logging),
    )
    for name, section in sections:
        lines.append(f"[{name}]")
        lines += _toml_items(section)
    for dest in config.destinations:
        lines.append("[[destinations]]")
        lines += _toml_items(dest)
    return "\n".join(lines) + "\n"


_TOML_HEADER = "written by molsub (molsub.config.to_toml)"


def _toml_items(section: object) -> list[str]:
    items = []
    for f in fields(section):  # type: ignore[arg-type]
        value = getattr(section, f.name)
        if value is not None:
            items.append(f"{f.name} = {_toml_value(value)}")
    return items


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value.resolve()))
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
