"""The node's configuration (node.toml), with every key overridable by environment variable.

Skeleton of the typed settings; parsing, env overrides and validation are filled in by the
scp/ work (see the issue on the node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "MOLSUB"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    spool_dir: Path = Path("spool")
    study_timeout_s: float = 600.0


@dataclass(frozen=True)
class ModelSettings:
    bundle: Path | None = None


@dataclass(frozen=True)
class QueueSettings:
    broker_url: str = ""  # empty: the embedded broker, no server needed


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (ae_title, host, port) or a folder (demos, debugging)."""

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    folder: Path | None = None

    @property
    def is_folder(self) -> bool:
        return self.folder is not None


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    destinations: tuple[Destination, ...] = ()
