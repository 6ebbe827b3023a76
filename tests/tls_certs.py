"""Test PKIs made with the openssl CLI: a CA, the node's certificate, a peer's, and a stranger's.

Every certificate names localhost and 127.0.0.1 (server and client use), as a site's PKI would
issue for its DICOM hosts. Keys are RSA 2048, unencrypted, valid two days.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
)


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the site CA every trusted certificate is issued by
    node: Identity  # the node's certificate (SCP port, and delivery client)
    peer: Identity  # a modality, PACS or destination the site trusts
    stranger: Identity  # issued by another CA: untrusted
    stranger_ca: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
        "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path]) -> Identity:
    cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(LEAF_EXTENSIONS)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", f"/CN={name}")  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return Identity(cert, key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    site = _ca(folder, "site-ca")
    other = _ca(folder, "other-ca")
    return Pki(
        ca=site[0],
        node=_leaf(folder, "node", site),
        peer=_leaf(folder, "peer", site),
        stranger=_leaf(folder, "stranger", other),
        stranger_ca=other[0],
    )
