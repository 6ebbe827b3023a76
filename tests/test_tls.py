"""DICOM TLS, against dcmtk: the node's SCP port stored to by ``storescu +tls``, the node's
delivery to ``storescp +tls``, and the refusals (plain DICOM to the TLS port, an untrusted or
missing certificate, TLS below 1.2). Certificates come from the openssl CLI (tests/tls_certs.py);
everything runs on loopback.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from common.settings import Destination, NodeSettings, TlsSettings
from common.tls import MINIMUM_VERSION, server_context
from molsub.config import ConfigError, load_config
from molsub.launch import free_port, stop_process, wait_for
from scp.server import NodeSCP
from tests.dicom_peers import SCU_AET, received_uids
from tests.factories import make_mg
from tests.tls_certs import Identity, Pki, make_pki
from worker.delivery.targets import DeliveryError
from worker.delivery.targets.dicom import store_scu

StartFn = Callable[..., NodeSCP]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mg_file(tmp_path: Path) -> Path:
    path = tmp_path / "mg.dcm"
    make_mg(seed=3).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def start_scp(tmp_path: Path, pki: Pki, running_scps: StartFn) -> StartFn:
    """A NodeSCP with TLS on a free loopback port over tmp_path/spool (stopped at teardown)."""

    def start(**tls: object) -> NodeSCP:
        settings = TlsSettings(
            enabled=True, certificate=pki.node.cert, private_key=pki.node.key, ca_file=pki.ca
        )
        node = NodeSettings(port=free_port(), spool_dir=tmp_path / "spool")
        return running_scps(node, tls=replace(settings, **tls))

    return start


def storescu_tls(
    port: int, files: Sequence[Path], identity: Identity | None, ca: Path
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu with ``+tls`` and ``identity`` (plain DICOM for None)."""
    tls = ["+tls", str(identity.key), str(identity.cert), "+cf", str(ca)] if identity else []
    cmd = ["storescu", "-aet", SCU_AET, "-aec", "MOLSUB", *tls, "-R", "127.0.0.1", str(port)]
    return subprocess.run(
        cmd + [str(f) for f in files], capture_output=True, text=True, timeout=60, check=False
    )


def spooled(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool" / "studies").rglob("*.dcm"))


def test_storescu_over_tls_with_client_certificate_is_stored(
    start_scp: StartFn, pki: Pki, mg_file: Path, tmp_path: Path
) -> None:
    scp = start_scp()
    result = storescu_tls(scp.port, [mg_file], pki.peer, pki.ca)
    assert result.returncode == 0, result.stderr
    [stored] = spooled(tmp_path)
    assert pydicom.dcmread(stored) == pydicom.dcmread(mg_file)


def test_plain_dicom_to_the_tls_port_is_refused(
    start_scp: StartFn, pki: Pki, mg_file: Path, tmp_path: Path
) -> None:
    scp = start_scp()
    result = storescu_tls(scp.port, [mg_file], None, pki.ca)
    assert result.returncode != 0
    assert "Association Request Failed" in result.stderr
    assert spooled(tmp_path) == []
    # The port still serves TLS clients.
    assert storescu_tls(scp.port, [mg_file], pki.peer, pki.ca).returncode == 0


def test_untrusted_client_certificate_is_refused(
    start_scp: StartFn,
    pki: Pki,
    mg_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp = start_scp()
    with caplog.at_level(logging.WARNING, logger="common.tls"):
        result = storescu_tls(scp.port, [mg_file], pki.stranger, pki.ca)
        assert result.returncode != 0
        assert "Association Request Failed" in result.stderr
        assert wait_for(lambda: "TLS connection from 127.0.0.1" in caplog.text, 10, "log")
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # the reason, for the admin
    assert spooled(tmp_path) == []


def _echo(port: int, context: ssl.SSLContext) -> bool:
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.connection_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MOLSUB", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.get("Status", -1)) == 0


def _client_without_certificate(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def test_client_certificate_required_only_with_mutual_authentication(
    start_scp: StartFn, pki: Pki
) -> None:
    mutual = start_scp()
    assert not _echo(mutual.port, _client_without_certificate(pki))
    mutual.stop()
    server_only = start_scp(require_client_cert=False)
    assert _echo(server_only.port, _client_without_certificate(pki))


def test_tls_below_1_2_is_refused_and_1_2_served(start_scp: StartFn, pki: Pki) -> None:
    scp = start_scp(require_client_cert=False)
    assert server_context(scp.tls).minimum_version == MINIMUM_VERSION == ssl.TLSVersion.TLSv1_2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL speak TLS 1.1 as a client
    with warnings.catch_warnings():  # deprecated: what this test is about
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", scp.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError) as refused,
        old.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)
    # The server's alert, not a client that could not even offer TLS 1.1.
    reason = str(refused.value).lower()
    assert "protocol version" in reason or "unsupported protocol" in reason, reason
    # TLS 1.2 itself is served (dcmtk above negotiates TLS 1.3).
    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.load_verify_locations(cafile=str(pki.ca))
    tls12.minimum_version = tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _echo(scp.port, tls12)


def test_a_silent_connection_does_not_hold_up_other_clients(
    start_scp: StartFn, pki: Pki, mg_file: Path, tmp_path: Path
) -> None:
    """The handshake runs in each association's thread, not in the accept loop."""
    scp = start_scp()
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10):
        time.sleep(0.2)  # accepted, says nothing
        started = time.monotonic()
        result = storescu_tls(scp.port, [mg_file], pki.peer, pki.ca)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 20
    assert len(spooled(tmp_path)) == 1


# -- delivery --------------------------------------------------------------------------------


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., tuple[int, Path]]]:
    """dcmtk's storescp with +tls (its certificate given), requiring the node's certificate
    from the site CA; returns (port, folder) once it listens."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(identity: Identity) -> tuple[int, Path]:
        port, folder = free_port(), tmp_path / f"received-{len(procs)}"
        folder.mkdir()
        cmd = ["storescp", "-aet", "DEST", "-od", str(folder), "-uf"]
        cmd += ["+tls", str(identity.key), str(identity.cert), "+cf", str(pki.ca), "-rc"]
        proc = subprocess.Popen(
            [*cmd, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        wait_for(lambda: _listening(port) or proc.poll() is not None, 20, "storescp +tls")
        assert proc.poll() is None, "storescp +tls did not start"
        return port, folder

    yield start
    for proc in procs:
        stop_process(proc)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def destination(pki: Pki, port: int, **changes: object) -> Destination:
    dest = Destination(
        name="pacs",
        ae_title="DEST",
        host="127.0.0.1",
        port=port,
        acse_timeout_s=10,
        dimse_timeout_s=10,
        network_timeout_s=10,
        tls=True,
        tls_ca_file=pki.ca,
        tls_certificate=pki.node.cert,
        tls_private_key=pki.node.key,
    )
    return replace(dest, **changes)


def test_delivery_over_tls_to_storescp(
    tls_storescp: Callable[..., tuple[int, Path]], pki: Pki, mg_file: Path
) -> None:
    port, folder = tls_storescp(pki.peer)
    store_scu(destination(pki, port), [mg_file], calling_ae="MOLSUB")
    assert received_uids(folder) == {str(pydicom.dcmread(mg_file).SOPInstanceUID)}


def test_delivery_refuses_an_untrusted_server(
    tls_storescp: Callable[..., tuple[int, Path]], pki: Pki, mg_file: Path
) -> None:
    port, folder = tls_storescp(pki.stranger)
    with pytest.raises(DeliveryError) as failed:
        store_scu(destination(pki, port), [mg_file], calling_ae="MOLSUB")
    assert "TLS handshake failed" in failed.value.reason
    assert "certificate verify failed" in failed.value.reason
    assert received_uids(folder) == set()


def test_delivery_checks_the_name_in_the_server_certificate(
    tls_storescp: Callable[..., tuple[int, Path]], pki: Pki, mg_file: Path
) -> None:
    port, folder = tls_storescp(pki.peer)
    dest = destination(pki, port, tls_server_name="pacs.other.example")
    with pytest.raises(DeliveryError) as failed:
        store_scu(dest, [mg_file], calling_ae="MOLSUB")
    assert "TLS handshake failed" in failed.value.reason
    assert received_uids(folder) == set()


def test_delivery_without_the_node_certificate_is_refused_by_a_mutual_peer(
    tls_storescp: Callable[..., tuple[int, Path]], pki: Pki, mg_file: Path
) -> None:
    port, folder = tls_storescp(pki.peer)
    dest = destination(pki, port, tls_certificate=None, tls_private_key=None)
    with pytest.raises(DeliveryError) as failed:
        store_scu(dest, [mg_file], calling_ae="MOLSUB")
    assert "association with DEST@127.0.0.1" in failed.value.reason
    assert received_uids(folder) == set()


def test_plain_destination_to_a_tls_peer_fails_without_sending(
    tls_storescp: Callable[..., tuple[int, Path]], pki: Pki, mg_file: Path
) -> None:
    port, folder = tls_storescp(pki.peer)
    with pytest.raises(DeliveryError):
        store_scu(destination(pki, port, tls=False), [mg_file], calling_ae="MOLSUB")
    assert received_uids(folder) == set()


# -- configuration ---------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_tls_settings_load_and_destinations_inherit_the_node_identity(
    tmp_path: Path, pki: Pki
) -> None:
    text = f"""
[node]
retention_hours = 48
[tls]
enabled = true
certificate = "{pki.node.cert}"
private_key = "{pki.node.key}"
ca_file = "{pki.ca}"
require_client_cert = false
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 104
tls = true
[[destinations]]
name = "other"
ae_title = "OTHER"
host = "127.0.0.1"
port = 105
tls = true
tls_ca_file = "{pki.stranger_ca}"
tls_server_name = "localhost"
[[destinations]]
name = "plain"
ae_title = "PLAIN"
host = "127.0.0.1"
port = 106
"""
    config = load_config(write_toml(tmp_path, text), env={})
    assert config.node.retention_hours == 48
    assert config.tls.enabled and not config.tls.require_client_cert
    pacs, other, plain = config.destinations
    assert (pacs.tls_ca_file, pacs.tls_certificate, pacs.tls_private_key) == (
        pki.ca,
        pki.node.cert,
        pki.node.key,
    )
    assert other.tls_ca_file == pki.stranger_ca and other.tls_certificate == pki.node.cert
    assert not plain.tls and plain.tls_ca_file is None
    described = config.describe()
    assert "TLS on the SCP port: yes (TLS 1.2+), client certificates not asked for" in described
    assert "deleted 48 h after delivery" in described
    env = {"MOLSUB_TLS_ENABLED": "false", "MOLSUB_NODE_RETENTION_HOURS": "0"}
    overridden = load_config(write_toml(tmp_path, text), env=env)
    assert not overridden.tls.enabled and overridden.node.retention_hours == 0


@pytest.mark.parametrize(
    ("tls", "extra", "message"),
    [
        ("enabled = true", "", "certificate and private_key are required"),
        (
            'enabled = true\ncertificate = "{cert}"\nprivate_key = "{key}"',
            "",
            "require_client_cert needs ca_file",
        ),
        (
            'enabled = true\ncertificate = "{cert}"\nprivate_key = "{ca}"\nca_file = "{ca}"',
            "",
            "not usable",
        ),
        (
            'enabled = true\ncertificate = "{cert}"\nprivate_key = "{key}"\nca_file = "nope.pem"',
            "",
            "nope.pem not found",
        ),
        (
            'enabled = true\ncertificate = "{cert}"\nprivate_key = "nokey.pem"\nca_file = "{ca}"',
            "",
            "nokey.pem not found",
        ),
        ("", 'name = "f"\nfolder = "out"\ntls = true', "not to a folder"),
        (
            "",
            'name = "p"\nae_title = "P"\nhost = "h"\nport = 1\ntls = true\ntls_certificate = '
            '"{cert}"',
            "tls_certificate and tls_private_key go together",
        ),
    ],
)
def test_tls_settings_errors_name_the_key(
    tmp_path: Path, pki: Pki, tls: str, extra: str, message: str
) -> None:
    files = {"cert": pki.node.cert, "key": pki.node.key, "ca": pki.ca}
    text = "[tls]\n" + tls.format(**files) + "\n"
    if extra:
        text += "[[destinations]]\n" + extra.format(**files) + "\n"
    with pytest.raises(ConfigError, match=message):
        load_config(write_toml(tmp_path, text), env={})


def test_negative_retention_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[node\] retention_hours"):
        load_config(None, env={"MOLSUB_NODE_RETENTION_HOURS": "-1"})
