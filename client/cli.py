"""``fedaug-client`` (and ``fedaug client``): a hospital's SuperNode with its data, state and
budget, and its own SuperExec, which runs only the installed fedaug ClientApp."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedaug.client.supernode import DEFAULT_RUNTIME_PORT, run_client
from fedaug.errors import run_command
from fedaug.logs import setup_logging

__all__ = ["main", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``client`` to the ``fedaug`` command; its arguments go to :func:`main`."""
    p = sub.add_parser(
        "client", help="a hospital's client: the SuperNode with its data, state and budget",
        add_help=False,
        description="fedaug client --superlink HOST:PORT --root-cert ca.crt --key KEY "
        "--data-path DATA --state-dir DIR --site-name NAME --epsilon-budget E --delta D (see "
        "docs/deploy.md); `fedaug client --help` lists every option.")
    p.set_defaults(func=main, passthrough=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``fedaug-client``: start this hospital's SuperNode and its SuperExec."""
    p = argparse.ArgumentParser(
        prog="fedaug-client",
        description="Start a hospital's SuperNode (fedaug client) and the site's own "
        "SuperExec: every ClientApp runs the fedaug installed here, never code from the "
        "server's app package (see docs/deploy.md).")
    p.add_argument("--superlink", required=True, help="host:port of the aggregation server")
    p.add_argument("--root-cert", help="CA certificate of the server")
    p.add_argument("--key", help="this hospital's private key (OpenSSH ECDSA)")
    p.add_argument("--data-path", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--site-name", required=True)
    p.add_argument("--epsilon-budget", type=float, required=True)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT)
    p.add_argument("--insecure", action="store_true", help="no TLS (local test only)")
    args = p.parse_args(argv)
    setup_logging(0)
    return run_command(lambda: _run_cli(args), prog="fedaug client")


def _run_cli(args: argparse.Namespace) -> int:
    return run_client(superlink_address=args.superlink, root_cert=args.root_cert,
                      auth_private_key=args.key, data_path=args.data_path,
                      state_dir=args.state_dir, site_name=args.site_name,
                      epsilon_budget=args.epsilon_budget, delta=args.delta,
                      insecure=args.insecure, runtime_port=args.runtime_port)


if __name__ == "__main__":
    sys.exit(main())
