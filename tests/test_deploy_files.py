"""The deployment examples name commands and keys that exist (they cannot run here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from molsub.cli import build_parser
from molsub.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_node_toml_loads_with_every_section() -> None:
    config = load_config(DEPLOY / "node.toml")
    assert config.queue.broker_url.startswith("redis://")
    assert config.node.allowed_calling_aets
    assert {d.name for d in config.destinations} == {"pacs", "debug-folder"}


def _molsub_commands(text: str) -> list[list[str]]:
    return [json.loads(f"[{cmd}]") for cmd in re.findall(r"command: \[(.*?)\]", text)]


def test_compose_services_and_gpu_worker_consumes_only_infer() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    for service in ("redis:", "scp:", "cpu-worker:", "gpu-worker:"):
        assert f"\n  {service}" in text
    gpu = text.split("\n  gpu-worker:")[1].split("\n\n")[0]  # up to the next service
    (gpu_command,) = _molsub_commands(gpu)
    assert gpu_command[gpu_command.index("--queues") + 1] == "infer"
    parser = build_parser()
    for argv in _molsub_commands(text):
        if argv[0] in ("serve", "worker"):
            parser.parse_args(argv)  # exits (fails the test) on an unknown option


def test_systemd_units_start_existing_commands() -> None:
    parser = build_parser()
    for unit in (DEPLOY / "systemd").glob("*.service"):
        line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
        argv = line.split("molsub ", 1)[1].replace("%I", "infer").split()
        parser.parse_args(argv)
