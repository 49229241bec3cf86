"""The aggregation server's SuperLink: its command line, and the flwr CLI's connection.

The SuperLink serves Flower's Fleet, Control and Runtime APIs on ONE port (8000 by
default in flwr 1.41), with TLS and SuperNode (hospital) authentication switched on.
Hospitals are admitted by registering their public keys with
``flwr supernode register <key.pub> <connection>`` (see docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedaug.errors import ConfigError
from fedaug.server.certs import CertPaths

__all__ = ["DEFAULT_PORT", "STATE_DB", "superlink_command", "serve", "database_lock",
           "register_node_command", "add_connection"]

log = logging.getLogger("fedaug.deploy")

#: The SuperLink's single HTTP(S) port for SuperNodes, the flwr CLI and the ServerApp.
DEFAULT_PORT = 8000
#: The SuperLink's database file inside its state folder (runs, registered nodes).
STATE_DB = "superlink-state.db"
#: What ``flwr`` writes to a missing config.toml (flwr 1.41).
_DEFAULT_FLWR_CONFIG = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'


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
                fix="Pass certs (--certs FOLDER; `fedaug-server certs FOLDER` or "
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
    with database_lock(state_dir):
        log.info("Starting: %s", " ".join(cmd))
        try:
            return subprocess.run(cmd, check=False).returncode
        except KeyboardInterrupt:
            return 130


LOCK_FILE = "superlink.lock"


@contextmanager
def database_lock(state_dir: str | Path) -> Iterator[None]:
    """Hold ``state_dir/superlink.lock`` while a SuperLink uses the folder's database.

    Flower lets two SuperLinks share one SQLite database without a word, and under load
    SQLite's "database is locked" then crashes runs. The lock refuses a second SuperLink on
    the same state folder (an flock, released by the OS when the process dies).
    """
    import fcntl

    path = Path(state_dir) / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"Another SuperLink ({holder}) already uses the state folder {state_dir}.",
                value=str(path), fix="Stop it first, or give this SuperLink its own "
                "--state-dir: two SuperLinks on one database corrupt each other's runs."
            ) from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


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
