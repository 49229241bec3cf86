"""Development credentials for a trial deployment: a CA, a SuperLink certificate, and
hospital key pairs in the OpenSSH ECDSA format Flower reads (no openssl binary needed).

Production certificates come from the hospital network's own CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedaug.errors import ConfigError

__all__ = ["CertPaths", "NodeKeys", "make_dev_certificates", "make_node_keys"]


@dataclass(frozen=True)
class CertPaths:
    """The TLS files of a SuperLink (PEM).

    Parameters
    ----------
    ca_cert : Path
        The CA certificate; SuperNodes and the flwr CLI verify the server with it.
    server_cert : Path
        The SuperLink's certificate; its subjectAltName must list every address the
        SuperLink is reached at, and 127.0.0.1 (its own ServerApp process connects there).
    server_key : Path
        The SuperLink's private key (keep it at the server, mode 0600).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def check(self) -> None:
        """Raise ``ConfigError`` naming every missing file."""
        missing = [str(p) for p in (self.ca_cert, self.server_cert, self.server_key)
                   if not Path(p).is_file()]
        if missing:
            raise ConfigError("TLS certificate file(s) not found.", value=missing,
                              fix="Create them (docs/deploy.md, Certificates) or pass the "
                              "right paths.")


@dataclass(frozen=True)
class NodeKeys:
    """A hospital's authentication key pair (OpenSSH format, ECDSA on NIST P-384).

    Parameters
    ----------
    private_key : Path
        Stays at the hospital; passed to ``flower-supernode --auth-supernode-private-key``.
    public_key : Path
        Given to the server operator, who registers it with ``flwr supernode register``.
    """

    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_dev_certificates(folder: str | Path, *,
                          hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                          days: int = 30) -> CertPaths:
    """Write a development CA and a SuperLink certificate for ``hosts`` into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Output folder; gets ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key``.
    hosts : sequence of str (default: ("127.0.0.1", "localhost"))
        IP addresses and DNS names put in the server certificate's subjectAltName.
        127.0.0.1 is added when missing: the SuperLink's own ServerApp connects there.
    days : int (default: 30)
        Validity of both certificates.

    Returns
    -------
    CertPaths
    """
    if days < 1:
        raise ConfigError("Certificate validity must be at least one day.", value=days,
                          fix="Pass days >= 1.")
    folder = Path(folder)
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1"]))
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedaug"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedaug development CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    paths = CertPaths(ca_cert=folder / "ca.crt", server_cert=folder / "server.pem",
                      server_key=folder / "server.key")
    _write(paths.ca_cert, ca_cert.public_bytes(pem))
    _write(folder / "ca.key", ca_key.private_bytes(pem, pkcs8, none), private=True)
    _write(paths.server_cert, cert.public_bytes(pem))
    _write(paths.server_key, key.private_bytes(pem, pkcs8, none), private=True)
    return paths


def make_node_keys(folder: str | Path, name: str) -> NodeKeys:
    """Write a hospital's key pair ``<folder>/<name>`` and ``<folder>/<name>.pub``.

    Same format as ``ssh-keygen -t ecdsa -b 384 -N "" -f <folder>/<name>``: an OpenSSH
    private key (``flower-supernode`` loads it with ``load_ssh_private_key``) and an
    ``ecdsa-sha2-nistp384`` public key line (``flwr supernode register`` reads it).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError("A node key name must be a plain file name.", value=name,
                          fix='Use e.g. "hospital-a".')
    folder = Path(folder)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(private_key=folder / name, public_key=folder / f"{name}.pub")
    _write(keys.private_key, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), private=True)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write(keys.public_key, public + f" {name}\n".encode())
    return keys
