"""``fedaug-server`` (and ``fedaug server``): the aggregation server's side of a deployment."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedaug.errors import ConfigError, run_command
from fedaug.logs import setup_logging
from fedaug.server.certs import CertPaths, make_dev_certificates, make_node_keys
from fedaug.server.superlink import DEFAULT_PORT, add_connection, serve

__all__ = ["main", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``server`` to the ``fedaug`` command; its arguments go to :func:`main`."""
    p = sub.add_parser(
        "server", help="aggregation server: certificates, hospital keys, the SuperLink",
        add_help=False,
        description="fedaug server {certs,node-key,serve} ... (see docs/deploy.md); "
        "`fedaug server --help` for the options. TLS and hospital authentication are on "
        "unless --insecure is given.")
    p.set_defaults(func=main, passthrough=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``fedaug-server {certs,node-key,serve}``: the server side of a deployment."""
    parser = argparse.ArgumentParser(
        prog="fedaug-server",
        description="The aggregation server of a fedaug deployment: trial certificates, "
        "hospital keys, and the Flower SuperLink with TLS and hospital authentication.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("certs", help="write a development CA and SuperLink certificate")
    p.add_argument("folder")
    p.add_argument("--host", action="append", default=None,
                   help="address in the certificate (repeat; default 127.0.0.1, localhost)")
    p.add_argument("--days", type=int, default=30)
    p = sub.add_parser("node-key", help="write a hospital's key pair NAME and NAME.pub")
    p.add_argument("folder")
    p.add_argument("name")
    p = sub.add_parser("connect", help="add a SuperLink connection to the flwr CLI's config "
                       "(keeps its default connection)")
    p.add_argument("name", help="connection name, e.g. hospitals")
    p.add_argument("--address", required=True, help="host:port of the SuperLink")
    p.add_argument("--root-cert", help="the CA certificate (omit only with --insecure)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (local test only)")
    p = sub.add_parser("serve", help="run the SuperLink (TLS + hospital authentication)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--certs", help="folder with ca.crt, server.pem, server.key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no authentication (local test only)")
    args = parser.parse_args(argv)
    setup_logging(0)
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
    if args.cmd == "connect":
        if not args.insecure and not args.root_cert:
            raise ConfigError("A connection needs the server's CA certificate.",
                              fix="Pass --root-cert ca.crt (or --insecure for a local test).")
        path = add_connection(args.name, address=args.address,
                              root_cert=None if args.insecure else args.root_cert)
        print(f"connection {args.name!r} -> {args.address} in {path}")
        return 0
    certs = None
    if args.certs:
        folder = Path(args.certs)
        certs = CertPaths(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    return serve(state_dir=args.state_dir, certs=certs, insecure=args.insecure,
                 node_auth=not args.insecure, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
