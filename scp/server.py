"""NodeSCP: the node's DICOM receiver (C-ECHO, C-STORE of MG and SEG) over the spool.

Success (0x0000) goes back only after the object is durably in the spool and recorded in the
state database, or when [inputs] says to ignore the object; anything else gets a failure status
with an error comment and leaves no object behind. Objects stream to disk (pynetdicom's
STORE_RECV_CHUNKED_DATASET), so a 30 MB mammogram is never held in memory whole; what is
checked (own result, lesion SEG, image size) is read from that file's header.

The node's own results routed back (common/inputs.py) never become inputs: with
``own_results = "ignore"`` the node's output classes (Comprehensive 3D SR, Secondary Capture)
are negotiated even when they are not inputs, so that a PACS rule routing them here ends
quietly; any other object of such a class is then answered 0xC000, the C-STORE form of
``refuse``.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from common.errors import InputError
from common.inputs import NODE_OUTPUT_SOP_CLASSES
from common.logs import LogStage, log_context
from common.private import make_private
from common.progress import ProgressFiles
from common.settings import (
    CONTENT_POLICIES,
    InputPolicy,
    InputSettings,
    NodeSettings,
    TlsSettings,
)
from common.sop_classes import (
    BREAST_PROJECTION_FOR_PRESENTATION,
    BREAST_PROJECTION_FOR_PROCESSING,
    BREAST_TOMOSYNTHESIS,
    COMPREHENSIVE_3D_SR,
    MG_FOR_PRESENTATION,
    MG_FOR_PROCESSING,
    SECONDARY_CAPTURE,
    SEGMENTATION,
)
from common.tls import server_context
from common.uids import is_valid_uid
from scp.association import AssociationGate, GuardedServer, Limits, parse_peers
from scp.dispatcher import Dispatcher, EnqueueFn
from scp.partial_files import PartialFiles
from scp.retention import HOUR_S, RetentionSweeper
from scp.spool import Spool, own_result_of
from scp.state import StateDB
from scp.validate import Check, InvalidObject
from scp.watermark import MB, WATERMARK_COMMENT, Watermark

log = logging.getLogger(__name__)

# REFERENCE.md s.3: what mammography devices and PACS send.
TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000  # also Check.PARSE
# scp/validate.py: one 0xC0xx status per structural check (the Error Comment names it too).
STATUS_TRUNCATED = Check.TRUNCATED.status
STATUS_NO_PIXEL_DATA = Check.PIXEL_DATA.status
STATUS_PIXEL_LENGTH = Check.PIXEL_LENGTH.status
STATUS_BAD_FRAGMENTS = Check.FRAGMENTS.status
STATUS_IMPLAUSIBLE_GEOMETRY = Check.GEOMETRY.status
STATUS_SEG_GRID = Check.SEG_GRID.status
# pynetdicom's thread ceiling: connections still negotiating count there, not in the gate.
CONNECTIONS_PER_ASSOCIATION = 4


class StoreObserver(Protocol):
    """Told of each answered C-STORE (molsub/metrics.py counts them); must not raise."""

    def __call__(self, sop_class_uid: str, status: int, nbytes: int) -> None: ...


class NodeSCP:
    """The receiving side of the node: AE + spool + state database + dispatcher thread."""

    def __init__(
        self,
        settings: NodeSettings,
        enqueue: EnqueueFn,
        *,
        inputs: InputSettings | None = None,
        poll_s: float = 1.0,
        own_device_uids: Collection[str] = (),
        tls: TlsSettings | None = None,
        store_observer: StoreObserver | None = None,
    ) -> None:
        self.settings = settings
        self.store_observer = store_observer
        self.inputs = inputs or InputSettings()
        for key, allowed in CONTENT_POLICIES.items():
            if getattr(self.inputs, key) not in allowed:
                raise ValueError(f"[inputs] {key} must be one of {', '.join(allowed)}")
        # Device UIDs of the bundles this node serves: one more way to know its own results.
        self.own_device_uids = frozenset(own_device_uids)
        # The objects a PACS may route that are not the node's input, each with its [inputs]
        # policy (PROCESS for MG For Processing means: spooled like For Presentation).
        self.policies: dict[str, tuple[str, InputPolicy]] = {
            MG_FOR_PROCESSING: ("mg_for_processing", self.inputs.mg_for_processing),
            BREAST_TOMOSYNTHESIS: ("breast_tomosynthesis", self.inputs.breast_tomosynthesis),
            BREAST_PROJECTION_FOR_PRESENTATION: (
                "breast_projection",
                self.inputs.breast_projection,
            ),
            BREAST_PROJECTION_FOR_PROCESSING: ("breast_projection", self.inputs.breast_projection),
            SECONDARY_CAPTURE: ("secondary_capture", self.inputs.secondary_capture),
        }
        # Output classes negotiated only so that the node's own results can be ignored.
        self.own_results_only: frozenset[str] = frozenset()
        if self.inputs.own_results is InputPolicy.IGNORE:
            refused = {COMPREHENSIVE_3D_SR} | {
                uid for uid, (_, p) in self.policies.items() if p is InputPolicy.REFUSE
            }
            self.own_results_only = frozenset(refused & NODE_OUTPUT_SOP_CLASSES)
        self.spool = Spool(settings.spool_dir)
        self._enqueue = enqueue
        self._poll_s = poll_s
        self.db: StateDB | None = None
        self.dispatcher: Dispatcher | None = None
        self._server: GuardedServer | None = None
        self.gate: AssociationGate | None = None
        self._chunked_before = False
        self.tls = tls or TlsSettings()  # [tls]: the port speaks TLS only when enabled
        self._partial_files = PartialFiles(self.spool.tmp_dir)
        self.retention: RetentionSweeper | None = None
        self.watermark = Watermark(self.spool.root, settings.min_free_mb * MB)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool, re-offer ready units, and listen (returns once listening)."""
        if self._server is not None:
            raise RuntimeError("NodeSCP already started")
        node = self.settings
        self.spool.clear_temporary()
        self.db = StateDB(self.spool.layout.state_db, self.spool.root)
        make_private(self.spool.root)  # patient data: 0700/0600, whatever made it before
        self.dispatcher = Dispatcher(
            self.db,
            self._enqueue,
            node.study_timeout_s,
            self._poll_s,
            progress=ProgressFiles(self.spool.root),
            missing_images=self.inputs.seg_images_missing,
        )
        # Module-level pynetdicom switch: received datasets go to a file, not memory.
        self._chunked_before = _config.STORE_RECV_CHUNKED_DATASET
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._partial_files.install()  # ... and that file is made in SPOOL/tmp
        ae = AE(ae_title=node.ae_title)
        ae.add_supported_context(Verification)
        for sop_class in self.negotiated_sop_classes():
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        # The gate (EVT_REQUESTED) checks AE titles, peers and counts; pynetdicom's own limit
        # only caps connection threads, negotiating ones included.
        ae.maximum_associations = node.max_associations * CONNECTIONS_PER_ASSOCIATION + 16
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        ae.maximum_pdu_size = node.max_pdu_bytes
        self.gate = AssociationGate(
            node.ae_title,
            node.max_associations,
            node.max_associations_per_aet,
            node.check_called_aet,
            tuple(node.allowed_calling_aets),
            parse_peers(node.allowed_peers),
        )
        self.ae = ae
        try:
            self._server = self._listen(
                ae,
                [
                    (evt.EVT_REQUESTED, self.gate.handle),
                    (evt.EVT_C_STORE, self._observed(self._handle_store)),
                    (evt.EVT_CONN_CLOSE, PartialFiles.on_close),
                ],
                ssl_context=server_context(self.tls) if self.tls.enabled else None,
            )
        except BaseException:
            _config.STORE_RECV_CHUNKED_DATASET = self._chunked_before
            self._partial_files.uninstall()
            self.db.close()
            raise
        self.dispatcher.start()
        if node.retention_hours > 0:
            self.retention = RetentionSweeper(
                self.db, self.spool.root, node.retention_hours * HOUR_S
            )
            self.retention.start()
        log.info(
            "SCP %s listening on %s:%d%s, spool %s",
            node.ae_title,
            node.host,
            self.port,
            " (TLS)" if self.tls.enabled else "",
            self.spool.root,
        )

    def _listen(
        self, ae: AE, handlers: list[Any], *, ssl_context: ssl.SSLContext | None
    ) -> GuardedServer:
        """``ae.start_server(block=False)`` with GuardedServer: reads with deadlines, PDU
        limits (scp/association.py)."""
        node = self.settings
        limits = Limits(node.acse_timeout_s, node.network_timeout_s, node.max_pdu_bytes)
        server = ae.make_server(
            (node.host, node.port),
            ssl_context=ssl_context,
            evt_handlers=handlers,
            server_class=GuardedServer,
            limits=limits,
        )
        thread = threading.Thread(target=server.serve_forever, name="NodeSCP-acceptor")
        thread.daemon = True
        thread.start()
        ae._servers.append(server)  # as start_server does: shutdown() removes it from there
        return server

    def stop(self) -> None:
        """Stop listening (open associations end), then the dispatcher; the spool stays."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            _config.STORE_RECV_CHUNKED_DATASET = self._chunked_before
            self._partial_files.uninstall()
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.db is not None:
            self.db.close()
            self.db = None

    def __enter__(self) -> NodeSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def listening(self) -> bool:
        """Started and accepting associations (the readiness check ``scp``)."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port listened on (the real one when the config asked for port 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def negotiated_sop_classes(self) -> list[str]:
        """MG For Presentation and SEG, every other kind whose policy is not ``refuse``, and
        the node's output classes while its own results are ignored."""
        accepted = [MG_FOR_PRESENTATION, SEGMENTATION]
        accepted += [uid for uid, (_, p) in self.policies.items() if p is not InputPolicy.REFUSE]
        accepted += sorted(self.own_results_only)
        return accepted

    # -- C-STORE -------------------------------------------------------------------------------

    def _observed(
        self, handler: Callable[[evt.Event], Dataset | int]
    ) -> Callable[[evt.Event], Dataset | int]:
        """``handler``, telling ``store_observer`` of each answer (class, status, bytes); the
        observer is read per call, so `molsub serve` may set it once the SCP has started."""

        def observed(event: evt.Event) -> Dataset | int:
            observer = self.store_observer
            if observer is None:
                return handler(event)
            nbytes = _received_bytes(event)  # before the handler moves the file into the spool
            answer = handler(event)
            status = int(answer.Status) if isinstance(answer, Dataset) else int(answer)
            sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
            try:
                observer(sop_class, status, nbytes)
            except Exception:  # noqa: BLE001 - metrics never change a C-STORE's answer
                log.exception("C-STORE observer failed")
            return answer

        return observed

    def _handle_store(self, event: evt.Event) -> Dataset | int:
        """The C-STORE handler: never raises (pynetdicom would answer 0xC211 without a why).
        Its log lines carry the stage and the object's SOP Instance UID (common/logs.py)."""
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        with log_context(
            stage=LogStage.RECEIVE, sop_instance_uid=uid if is_valid_uid(uid) else None
        ):
            try:
                return self._store(event)
            except Exception as exc:  # noqa: BLE001 - a reason and 0xC000 beat pynetdicom's 0xC211
                log.error(
                    "C-STORE of %s: unexpected %s; refused", _object_name(event), type(exc).__name__
                )
                return _status(STATUS_CANNOT_UNDERSTAND, "parse: object could not be read")

    def _store(self, event: evt.Event) -> Dataset | int:
        request_uid = _object_name(event)
        calling = event.assoc.requestor.ae_title
        assert self.db is not None and self.dispatcher is not None
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
        if self.watermark.below():
            log.error(
                "C-STORE of %s from %s refused: %s (%d MB, [node] min_free_mb)",
                request_uid,
                calling,
                WATERMARK_COMMENT,
                self.settings.min_free_mb,
            )
            return _status(STATUS_OUT_OF_RESOURCES, WATERMARK_COMMENT)
        if sop_class in NODE_OUTPUT_SOP_CLASSES:
            own = own_result_of(event.dataset_path, self.own_device_uids)
            if own:
                policy = self.inputs.own_results
                return self._not_taken(policy, "own_results", request_uid, calling, own)
        name = UID(sop_class).name if sop_class else "(no SOP class)"
        if sop_class in self.own_results_only:
            log.warning(
                "C-STORE of %s from %s refused: %s is not an input (negotiated for the node's "
                "own results only)",
                request_uid,
                calling,
                name,
            )
            return _status(STATUS_CANNOT_UNDERSTAND, f"{name} not accepted here")
        kind, policy = self.policies.get(sop_class, ("", InputPolicy.PROCESS))
        if policy is not InputPolicy.PROCESS:
            return self._not_taken(policy, kind, request_uid, calling, f"{name} not processed here")
        try:
            tmp, info = self.spool.receive(
                event.dataset_path,
                request_uid,
                move=True,
                min_image_side=self.inputs.min_image_side,
            )
        except InvalidObject as exc:
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return _status(exc.check.status, exc.reason)
        except InputError as exc:
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return _status(STATUS_CANNOT_UNDERSTAND, exc.reason)
        except OSError as exc:
            log.error("C-STORE of %s from %s: spool write failed: %s", request_uid, calling, exc)
            return _status(STATUS_OUT_OF_RESOURCES, "spool write failed")
        if info.not_lesion and self.inputs.non_lesion_seg is not InputPolicy.PROCESS:
            self.spool.discard(tmp)
            policy = self.inputs.non_lesion_seg
            uid = info.sop_instance_uid
            return self._not_taken(policy, "non_lesion_seg", uid, calling, info.not_lesion)
        try:
            final = self.spool.commit(tmp, info)
            ready = self.db.record_instance(info, final)
        except (OSError, sqlite3.Error) as exc:
            self.spool.discard(tmp)
            log.error("C-STORE of %s from %s: not stored: %s", info.sop_instance_uid, calling, exc)
            return _status(STATUS_OUT_OF_RESOURCES, "spool or state database failed")
        log.info(
            "stored %s %s (study %s) from %s",
            "SEG" if info.is_seg else "image",
            info.sop_instance_uid,
            info.study_uid,
            calling,
        )
        for unit_id in ready:
            with log_context(unit=unit_id):
                log.info("unit %s ready", unit_id)
        if ready:
            self.dispatcher.wake()
        return STATUS_SUCCESS

    @staticmethod
    def _not_taken(
        policy: InputPolicy, kind: str, uid: str, calling: str, reason: str
    ) -> Dataset | int:
        """Answer an object [inputs] does not let in: ``ignore`` (success, logged, not stored:
        pynetdicom removes the received file when the handler returns) or ``fail``."""
        if policy is InputPolicy.IGNORE:
            log.info("C-STORE of %s from %s ignored ([inputs] %s): %s", uid, calling, kind, reason)
            return STATUS_SUCCESS
        log.warning(
            "C-STORE of %s from %s not processed ([inputs] %s): %s", uid, calling, kind, reason
        )
        return _status(STATUS_CANNOT_UNDERSTAND, reason)


def _object_name(event: evt.Event) -> str:
    """How logs name the object of a C-STORE: its SOP Instance UID from the request, or the
    association (peer address) and message ID when that is not a valid UID."""
    uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    if is_valid_uid(uid):
        return uid
    requestor = event.assoc.requestor
    return f"(association {requestor.address}:{requestor.port}, message {event.request.MessageID})"


def _received_bytes(event: evt.Event) -> int:
    """Size of the received data set: its file (chunked mode), else its bytes in memory."""
    try:
        return Path(event.dataset_path).stat().st_size
    except (AttributeError, OSError, TypeError, ValueError):
        pass
    try:
        return len(event.request.DataSet.getvalue())
    except (AttributeError, TypeError, ValueError):
        return 0


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: 64 characters at most
    return status
