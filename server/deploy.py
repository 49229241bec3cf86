"""Run the aggregation server (a Flower SuperLink) for a hospital deployment.

The SuperLink serves Flower's Fleet, Control and Runtime APIs on ONE port (8000 by
default in flwr 1.41), with TLS and SuperNode (hospital) authentication switched on.
Hospitals are admitted by registering their public keys with
``flwr supernode register <key.pub> <connection>`` (see docs/deploy.md).

This module also makes throw-away development credentials (a CA, a server certificate
for 127.0.0.1/localhost, hospital key pairs in the OpenSSH ECDSA format Flower reads),
so that tests and a one-machine trial need no openssl binary. Production certificates
come from the hospital network's own CA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigError, run_command

__all__ = [
    "DEFAULT_PORT",
    "STATE_DB",
    "CertPaths",
    "NodeKeys",
    "make_dev_certificates",
    "make_node_keys",
    "superlink_command",
    "serve",
    "register_node_command",
    "add_connection",
    "main",
]

log = logging.getLogger("fedaug.deploy")

#: The SuperLink's single HTTP(S) port for SuperNodes, the flwr CLI and the ServerApp.
DEFAULT_PORT = 8000
#: The SuperLink's database file inside its state folder (runs, registered nodes).
STATE_DB = "superlink-state.db"
#: What ``flwr`` writes to a missing config.toml (flwr 1.41).
_DEFAULT_FLWR_CONFIG = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'


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


def superlink_command(*, state_dir: str | Path, certs: CertPaths | None,
                      insecure: bool = False, node_auth: bool = True,
                      host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                      install_dependencies: bool = False,
                      log_file: str | Path | None = None,
                      executable: str = "flower-superlink") -> list[str]:
    """The ``flower-superlink`` command line for a fedaug aggregation server.

    Parameters
    ----------
    state_dir : str or Path
        Folder for the SuperLink's database (``superlink-state.db``): runs and registered
        hospitals survive a restart.
    certs : CertPaths or None
        TLS files. Required unless ``insecure``.
    insecure : bool (default: False)
        Plain HTTP without TLS, for a throw-away local test only. Must be asked for
        explicitly; it cannot be combined with ``node_auth`` (Flower refuses that).
    node_auth : bool (default: True)
        Only SuperNodes whose public key was registered (``flwr supernode register``)
        may connect.
    host : str (default: "127.0.0.1")
        Interface to listen on; ``0.0.0.0`` to accept hospitals on other machines.
    port : int (default: 8000)
        The single port for SuperNodes, the flwr CLI and the ServerApp.
    install_dependencies : bool (default: False)
        Let Flower run ``uv sync`` for every run (needs internet). Off: the app's
        dependencies must already be installed where the SuperLink runs.
    log_file : str or Path, optional
        Also write (rotated) logs to this file.
    executable : str (default: "flower-superlink")
        The program to run.
    """
    if not 0 < int(port) < 65536:
        raise ConfigError("The SuperLink port must be between 1 and 65535.", value=port,
                          fix=f"Pass e.g. port={DEFAULT_PORT}.")
    cmd = [executable]
    if insecure:
        if node_auth:
            raise ConfigError(
                "SuperNode authentication needs TLS; insecure mode cannot use it.",
                value={"insecure": insecure, "node_auth": node_auth},
                fix="Pass certs= (recommended), or node_auth=False with insecure=True "
                "for a throw-away local test.")
        log.warning("Starting the SuperLink WITHOUT TLS (insecure=True): model updates and "
                    "run configs travel unencrypted. Use this only for a local test.")
        cmd.append("--insecure")
    else:
        if certs is None:
            raise ConfigError(
                "The SuperLink needs TLS certificates unless insecure mode is asked for.",
                fix="Pass certs (--certs FOLDER; `python -m server.deploy certs FOLDER` or "
                "make_dev_certificates() make a trial set), or ask for insecure mode "
                "explicitly (insecure=True / --insecure) for a throw-away local test.")
        certs.check()
        cmd += ["--ssl-ca-certfile", str(certs.ca_cert),
                "--ssl-certfile", str(certs.server_cert),
                "--ssl-keyfile", str(certs.server_key)]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    cmd += ["--database", str(Path(state_dir) / STATE_DB), "--host", host, "--port", str(port)]
    if not install_dependencies:
        cmd.append("--disable-runtime-dependency-installation")
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return cmd


def serve(*, state_dir: str | Path, certs: CertPaths | None, insecure: bool = False,
          node_auth: bool = True, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          install_dependencies: bool = False, log_file: str | Path | None = None) -> int:
    """Run the SuperLink in the foreground (its output goes to this process's); return its
    exit code. Stop it with Ctrl-C (SIGINT) or SIGTERM."""
    cmd = superlink_command(state_dir=state_dir, certs=certs, insecure=insecure,
                            node_auth=node_auth, host=host, port=port,
                            install_dependencies=install_dependencies, log_file=log_file)
    if shutil.which(cmd[0]) is None:
        raise ConfigError("flower-superlink was not found on PATH.", value=cmd[0],
                          fix="Install fedaug (`pip install -e .`), which installs flwr.")
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    log.info("Starting: %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:
        return 130


def register_node_command(public_key: str | Path, *, connection: str,
                          name: str | None = None) -> list[str]:
    """``flwr supernode register`` admitting one hospital by its public key."""
    cmd = ["flwr", "supernode", "register", str(public_key), connection]
    if name:
        cmd += ["--name", name]
    return cmd


def add_connection(name: str, *, address: str, root_cert: str | Path | None,
                   flwr_home: str | Path | None = None) -> Path:
    """Add a SuperLink connection ``[superlink.<name>]`` to the flwr CLI's config.toml.

    ``flwr run . <name>``, ``flwr ls <name>`` and ``flwr supernode register KEY <name>`` then
    reach the SuperLink at ``address``, verified against ``root_cert`` (``None``: plain
    HTTP, local tests only). The file is ``$FLWR_HOME/config.toml`` (``~/.flwr`` without
    FLWR_HOME). An existing entry of that name is kept when identical, refused otherwise.
    """
    home = Path(flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    path = home / "config.toml"
    text = path.read_text(encoding="utf-8") if path.is_file() else _DEFAULT_FLWR_CONFIG
    entry: dict[str, object] = {"address": address}
    if root_cert is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_cert).resolve())
    existing = tomllib.loads(text).get("superlink", {})
    if name in existing:
        if existing[name] != entry:
            raise ConfigError(f"config.toml already has a different connection {name!r}.",
                              value=existing[name],
                              fix=f"Edit {path} or pick another connection name.")
        return path
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
    text = text.rstrip("\n") + f"\n\n[superlink.{name}]\n{body}"
    tomllib.loads(text)  # never write a file the CLI cannot read
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.deploy {certs,node-key,serve}``: the server side of a deployment."""
    parser = argparse.ArgumentParser(prog="python -m server.deploy", description=__doc__.split(
        "\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("certs", help="write a development CA and SuperLink certificate")
    p.add_argument("folder")
    p.add_argument("--host", action="append", default=None,
                   help="address in the certificate (repeat; default 127.0.0.1, localhost)")
    p.add_argument("--days", type=int, default=30)
    p = sub.add_parser("node-key", help="write a hospital's key pair NAME and NAME.pub")
    p.add_argument("folder")
    p.add_argument("name")
    p = sub.add_parser("serve", help="run the SuperLink (TLS + hospital authentication)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--certs", help="folder with ca.crt, server.pem, server.key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no authentication (local test only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_command(lambda: _run_cli(args), prog="fedaug server")


def _run_cli(args: argparse.Namespace) -> int:
    if args.cmd == "certs":
        paths = make_dev_certificates(args.folder, hosts=args.host or ("127.0.0.1", "localhost"),
                                      days=args.days)
        print(f"CA {paths.ca_cert}\nserver certificate {paths.server_cert}\n"
              f"server key {paths.server_key}")
        return 0
    if args.cmd == "node-key":
        keys = make_node_keys(args.folder, args.name)
        print(f"private key {keys.private_key} (keep at the hospital)\n"
              f"public key {keys.public_key} (register at the server)")
        return 0
    certs = None
    if args.certs:
        folder = Path(args.certs)
        certs = CertPaths(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    return serve(state_dir=args.state_dir, certs=certs, insecure=args.insecure,
                 node_auth=not args.insecure, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
