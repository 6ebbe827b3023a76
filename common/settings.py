"""The node's settings as typed values: what molsub/config.py reads from node.toml and the
environment, and what each stage is handed (no stage reads a config file itself).

Destinations, spool, queue and model settings are plain frozen dataclasses, so a test or a bench
builds them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class InputPolicy(StrEnum):
    """What the SCP does with a kind of object a PACS may route to it.

    ``refuse`` works on SOP classes only (association negotiation cannot look at content), so
    the kinds told apart by content (the node's own results, SEGs that are not lesion
    outlines) take ``ignore`` or ``fail`` (and ``process`` for ``non_lesion_seg``)."""

    PROCESS = "process"  # stored; a SEG's unit uses it
    REFUSE = "refuse"  # its SOP class is not accepted at association negotiation
    IGNORE = "ignore"  # accepted with success, logged by UID, not stored
    FAIL = "fail"  # accepted, answered with a failure status that says it is not processed


# The [inputs] kinds told apart by content (common/inputs.py), after negotiation, and the
# policies each may take: "refuse" cannot apply, and the node's own results are never processed.
CONTENT_POLICIES: dict[str, tuple[InputPolicy, ...]] = {
    "own_results": (InputPolicy.IGNORE, InputPolicy.FAIL),
    "non_lesion_seg": (InputPolicy.PROCESS, InputPolicy.IGNORE, InputPolicy.FAIL),
}


class MissingImagesPolicy(StrEnum):
    """A SEG's unit whose images have not all arrived ``study_timeout_s`` after its last one."""

    TIMEOUT = "timeout"  # timed_out, with the missing UIDs; reopened if they arrive after all
    FAIL = "fail"  # failed, with the missing UIDs; a late image does not reopen it


@dataclass(frozen=True)
class InputSettings:
    """[inputs]: the node processes MG For Presentation and the SEGs drawn on them; these are
    the other objects a PACS may route (each choice documented in deploy/node.toml)."""

    mg_for_processing: InputPolicy = InputPolicy.PROCESS
    breast_tomosynthesis: InputPolicy = InputPolicy.REFUSE
    breast_projection: InputPolicy = InputPolicy.REFUSE
    secondary_capture: InputPolicy = InputPolicy.REFUSE  # vendor-wrapped DBT, digitised film
    seg_images_missing: MissingImagesPolicy = MissingImagesPolicy.TIMEOUT
    # The node's own SR, SC and heatmap SEG routed back (common/inputs.py): ignored, so that a
    # PACS rule routing them here ends without a loop and without an error per object.
    own_results: InputPolicy = InputPolicy.IGNORE
    # A SEG that is FRACTIONAL or has a segment that is not a lesion (common/inputs.py): a
    # failure status tells the sender why it gets no results; "process" takes it anyway.
    non_lesion_seg: InputPolicy = InputPolicy.FAIL
    # MG images with fewer rows or columns cannot hold a lesion crop: refused (0xC000).
    min_image_side: int = 64


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "MOLSUB"
    host: str = "127.0.0.1"  # loopback by default: opening the node to the LAN is a decision
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any calling AE title
    spool_dir: Path = Path("spool")
    study_timeout_s: float = 600.0
    # Association limits (scp/association.py): negotiated associations at once, in total and
    # per calling AE title; a connection whose A-ASSOCIATE-RQ is not whole within
    # acse_timeout_s is closed; DIMSE and network waits; the longest PDU read (longer: A-ABORT).
    max_associations: int = 16
    max_associations_per_aet: int = 8
    acse_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu_bytes: int = 131072
    check_called_aet: bool = True  # the called AE title must be ae_title
    # "AET@address" (an IP or CIDR network): that calling AE title only from there.
    allowed_peers: tuple[str, ...] = ()
    # Received objects of a unit are deleted this many hours after its results were delivered
    # (state done), with the unit's recorded result objects; 0 keeps everything (scp/retention.py).
    retention_hours: float = 0.0
    # Free space the spool's filesystem keeps: below it the SCP answers C-STOREs 0xA700 (Out of
    # Resources) before storing, so that a full disk never cuts a study half-written. 0 = off.
    min_free_mb: int = 1024


@dataclass(frozen=True)
class TlsSettings:
    """[tls]: DICOM TLS (PS3.15 B.9, TLS 1.2 or later) on the SCP's port, and the node's own
    certificate and trust when it delivers to a destination with ``tls = true`` (common/tls.py).

    Off by default, like the loopback bind: a deployment turns it on with its own PKI."""

    enabled: bool = False  # the SCP port speaks TLS only (no plain DICOM beside it)
    certificate: Path | None = None  # PEM, the node's certificate (chain), server and client
    private_key: Path | None = None  # PEM, unencrypted; readable by the node's user only
    ca_file: Path | None = None  # PEM, the CAs whose certificates peers must present
    # Mutual authentication: a calling AE without a certificate from ca_file is refused in the
    # TLS handshake, before any DICOM is read.
    require_client_cert: bool = True


@dataclass(frozen=True)
class ModelSettings:
    bundle: Path | None = None
    device: str | None = None  # None: cuda if available, else cpu


class HeatmapSegType(StrEnum):
    """The Segmentation Type of the heatmap SEG ([results] heatmap_seg)."""

    FRACTIONAL = "fractional"  # the Grad-CAM values (0..1 in 255 steps): the default
    BINARY = "binary"  # CAM >= heatmap_threshold, for viewers without FRACTIONAL (OHIF 3.x)


class SrRegion(StrEnum):
    """How the SR draws each lesion on its mammogram ([results] sr_region): the TID 1410 Image
    Region (SCOORD POLYLINE) of its measurement group."""

    BOX = "box"  # the segment's bounding box: OHIF 3.x lists it (as a rectangle) and draws it
    OUTLINE = "outline"  # the segment's boundary: drawn, but OHIF 3.x does not list it


@dataclass(frozen=True)
class ResultsSettings:
    """[results]: the objects the results stage builds."""

    heatmap_seg: HeatmapSegType = HeatmapSegType.FRACTIONAL
    # BINARY only: a pixel is in the segment where its CAM (0..1) is at least this; 0 < t <= 1.
    heatmap_threshold: float = 0.5
    sr_region: SrRegion = SrRegion.BOX


@dataclass(frozen=True)
class QueueSettings:
    broker_url: str = ""  # empty: the embedded broker, no server needed
    visibility_timeout_s: int = 7200
    delivery_max_retries: int = 8
    delivery_retry_base_s: float = 10.0
    delivery_retry_max_s: float = 600.0
    # prepare and infer: transient failures (a lost worker, memory, a disk) are retried this
    # often, with the same backoff, before the unit fails
    stage_max_retries: int = 3
    # A unit in flight whose progress (state, progress.json, status.json) has not moved this
    # long is offered to the queue again: a worker that died took its message with it. Longer
    # than the slowest stage and than delivery_retry_max_s. The bound on redelivery, either broker.
    stall_timeout_s: float = 900.0
    # Re-offers of a stalled unit; one more stall and it ends failed, with the reason.
    max_redeliveries: int = 2
    # `molsub serve` restarts a local worker that exits; more exits than this within
    # worker_restart_window_s and the node exits 1 (systemd restarts it).
    worker_restart_limit: int = 5
    worker_restart_window_s: float = 600.0


@dataclass(frozen=True)
class HttpSettings:
    """[http]: the node's status page, health probes and Prometheus metrics (molsub/web/).

    Loopback by default, like the DICOM port; ``port = 0`` turns the server off. Without a token
    the page is read-only; with one, retry and resend take it as a Bearer token."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""  # prefer MOLSUB_HTTP_TOKEN or token_file: node.toml is often world-readable
    token_file: Path | None = None  # its first line is the token
    # PatientID and AccessionNumber on the status page (read from the spooled SEG): off, so that
    # the page shows UIDs, SOP classes and timings only (docs/operations.md says what it exposes).
    show_patient_ids: bool = False
    refresh_s: float = 5.0  # how often the open page refreshes its tables


class LogFormat(StrEnum):
    TEXT = "text"  # human-readable lines (the default)
    JSON = "json"  # one JSON object per line, with the unit UID and the stage, for aggregation


@dataclass(frozen=True)
class LogSettings:
    """[logging]: how every process of the node (serve, its workers, `molsub worker`) logs."""

    format: LogFormat = LogFormat.TEXT
    level: str = "INFO"


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (ae_title, host, port) or a folder (demos, debugging).

    The timeouts bound every wait of a C-STORE association, so that a peer that refuses,
    aborts or goes silent costs a known time and never blocks the deliver queue.
    """

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    folder: Path | None = None
    # TCP connect, and the peer's answer to an A-ASSOCIATE or A-RELEASE request (each).
    acse_timeout_s: float = 30.0
    # From the start of sending one object to its C-STORE response (the send is counted).
    dimse_timeout_s: float = 60.0
    # The connection idle, or a send the peer does not read, this long: the association ends.
    network_timeout_s: float = 60.0
    # DICOM TLS to this peer. Unset CA, certificate and key are taken from [tls]; without a CA
    # anywhere the system's trust store is used. The peer's certificate must name tls_server_name
    # (default: host), as an HTTPS client checks its server.
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_server_name: str | None = None

    @property
    def is_folder(self) -> bool:
        return self.folder is not None


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    results: ResultsSettings = field(default_factory=ResultsSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    destinations: tuple[Destination, ...] = ()
    source: Path | None = None  # the node.toml read, None for built-in defaults

    def describe(self) -> str:
        """What this node would do, in words (``molsub serve --check``)."""
        n, q = self.node, self.queue
        callers = ", ".join(n.allowed_calling_aets) if n.allowed_calling_aets else "any AE title"
        lines = [
            f"config: {self.source if self.source else 'built-in defaults'}",
            f"listen: AE title {n.ae_title!r} on {n.host}:{n.port}"
            + ("  (loopback only)" if n.host in LOOPBACK_HOSTS else ""),
            f"accept associations from: {callers}",
            f"associations: at most {n.max_associations} ({n.max_associations_per_aet} per calling"
            f" AE); ACSE / DIMSE / network timeout {n.acse_timeout_s:g} / {n.dimse_timeout_s:g} /"
            f" {n.network_timeout_s:g} s; PDUs up to {n.max_pdu_bytes} bytes; called AE "
            + ("checked" if n.check_called_aet else "not checked")
            + (f"; bound peers: {', '.join(n.allowed_peers)}" if n.allowed_peers else ""),
            "process: MG For Presentation and the Segmentations drawn on them",
            f"spool: {n.spool_dir} (received objects, state database, embedded queue); "
            + (
                f"C-STOREs refused (0xA700) below {n.min_free_mb} MB free"
                if n.min_free_mb
                else "no free-space watermark (min_free_mb = 0)"
            ),
            f"study timeout: {n.study_timeout_s:g} s after a unit's last received object",
            "retention: "
            + (
                f"received objects and results deleted {n.retention_hours:g} h after delivery"
                if n.retention_hours > 0
                else "keep everything (retention_hours = 0; `molsub purge STUDY` removes one)"
            ),
            "TLS on the SCP port: "
            + (
                f"yes (TLS 1.2+), client certificates "
                f"{'required' if self.tls.require_client_cert else 'not asked for'}"
                if self.tls.enabled
                else "no (plain DICOM)"
            ),
            f"model bundle: {self.model.bundle if self.model.bundle else '(not set)'}"
            + (f", device {self.model.device}" if self.model.device else ""),
            "queue: "
            + (_redact_url(q.broker_url) if q.broker_url else "embedded (filesystem, one host)")
            + f"; visibility timeout {q.visibility_timeout_s} s; delivery retries "
            f"{q.delivery_max_retries} (backoff {q.delivery_retry_base_s:g}..."
            f"{q.delivery_retry_max_s:g} s); prepare/infer retries {q.stage_max_retries}",
        ]
        i = self.inputs
        lines.append(
            f"inputs: MG For Processing {i.mg_for_processing}, Breast Tomosynthesis "
            f"{i.breast_tomosynthesis}, Breast Projection {i.breast_projection}, Secondary "
            f"Capture {i.secondary_capture}; a SEG whose images never come: "
            f"{i.seg_images_missing}; the node's own results: {i.own_results}; a SEG that is "
            f"not a lesion outline: {i.non_lesion_seg}; images under {i.min_image_side} px a "
            "side: refused"
        )
        r = self.results
        lines.append(
            f"results: heatmap SEG {r.heatmap_seg.upper()}"
            + (
                f" (CAM >= {r.heatmap_threshold:g})"
                if r.heatmap_seg is HeatmapSegType.BINARY
                else ""
            )
            + f"; SR lesion region: {r.sr_region}"
        )
        h = self.http
        lines.append(
            "status page and metrics: "
            + (
                f"http://{h.host}:{h.port}/ (/healthz, /readyz, /metrics); actions "
                + ("need the token" if h.token or h.token_file else "off (no token: read-only)")
                + ("; shows PatientID and AccessionNumber" if h.show_patient_ids else "")
                if h.port
                else "off ([http] port = 0)"
            )
        )
        lines.append(f"logs: {self.logging.format}, level {self.logging.level}")
        if not self.destinations:
            lines.append("destinations: none (results are recorded in the spool only)")
        for dest in self.destinations:
            where = (
                f"folder {dest.folder}"
                if dest.is_folder
                else f"AE {dest.ae_title!r} at {dest.host}:{dest.port}; timeouts: association "
                f"{dest.acse_timeout_s:g} s, DIMSE {dest.dimse_timeout_s:g} s, network "
                f"{dest.network_timeout_s:g} s" + ("; TLS" if dest.tls else "")
            )
            lines.append(f"destination {dest.name!r}: {where}")
        return "\n".join(lines)

    def with_node(self, **changes: object) -> NodeConfig:
        """A copy with some [node] settings changed (tests, CLI flags)."""
        return replace(self, node=replace(self.node, **changes))


def _redact_url(url: str) -> str:
    """A broker URL without its password (describe() output may end up in tickets)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user + ':***' if ':' in creds else user}@{host}"
    return url
