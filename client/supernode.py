"""Run a hospital's client (a Flower SuperNode) against a deployed aggregation server.

The hospital decides everything privacy-relevant itself, in its node config: where its
data is (``data-path``), where its privacy ledger lives (``state-dir``), its name and its
own epsilon budget and delta. The server cannot raise them. The code that spends that
budget is the fedaug the hospital installed, never code from the server's app package:
``fedaug-supernode`` starts the SuperNode in ``--isolation process`` together with the
site's own SuperExec, which runs only the installed ClientApp (:mod:`fedaug.client.runtime`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from fedaug import keys
from fedaug.client.runtime import SUPERNODE_COMMAND, supervise
from fedaug.errors import ConfigError

__all__ = ["DEFAULT_RUNTIME_PORT", "node_config_arg", "supernode_command", "run_client"]

log = logging.getLogger("fedaug.deploy")

#: Port of the SuperNode's own local Runtime API (its ClientApp process connects there);
#: every SuperNode on one machine needs a different one.
DEFAULT_RUNTIME_PORT = 9094


def _literal(key: str, value: str | Path) -> str:
    text = str(value)
    if not text or "'" in text or "\n" in text:
        raise ConfigError(f"Node config {key} must be non-empty and contain no single quote "
                          "or line break.", value=text,
                          fix="Rename the path/name (Flower parses node config as TOML "
                          "literal strings, 'like this').")
    return f"{key}='{text}'"


def _number(key: str, value: float, *, upper: float | None = None) -> str:
    number = float(value)
    if not math.isfinite(number) or number <= 0 or (upper is not None and number >= upper):
        limit = f"in (0, {upper})" if upper is not None else "> 0 and finite"
        raise ConfigError(f"Node config {key} must be {limit}.", value=value,
                          fix="Pass e.g. epsilon_budget=8.0, delta=1e-5.")
    return f"{key}={number!r}"


def node_config_arg(*, data_path: str | Path, state_dir: str | Path, site_name: str,
                    epsilon_budget: float, delta: float) -> str:
    """The ``--node-config`` value: ``data-path='...' state-dir='...' site-name='...'
    epsilon-budget=8.0 delta=1e-05`` (paths made absolute)."""
    return " ".join([
        _literal(keys.NODE_DATA_PATH, Path(data_path).resolve()),
        _literal(keys.NODE_STATE_DIR, Path(state_dir).resolve()),
        _literal(keys.NODE_SITE_NAME, site_name),
        _number(keys.NODE_EPSILON_BUDGET, epsilon_budget),
        _number(keys.NODE_DELTA, delta, upper=1.0),
    ])


def supernode_command(*, superlink_address: str, root_cert: str | Path | None,
                      auth_private_key: str | Path | None, data_path: str | Path,
                      state_dir: str | Path, site_name: str, epsilon_budget: float,
                      delta: float = 1e-5, insecure: bool = False,
                      runtime_port: int = DEFAULT_RUNTIME_PORT,
                      max_wait_time: float | None = None,
                      executable: str = SUPERNODE_COMMAND) -> list[str]:
    """The ``fedaug-supernode`` command line for one hospital.

    ``fedaug-supernode`` takes ``flower-supernode``'s arguments and starts two processes:
    ``flower-supernode ... --isolation process`` and ``fedaug-superexec``, which runs
    every ClientApp task with ``fedaug-clientapp`` (the installed fedaug ClientApp only).

    Parameters
    ----------
    superlink_address : str
        ``host:port`` of the SuperLink (no ``https://``), e.g. ``"127.0.0.1:8000"``.
    root_cert : str or Path or None
        The CA certificate that signed the SuperLink's certificate. Required unless
        ``insecure``.
    auth_private_key : str or Path or None
        The hospital's OpenSSH ECDSA private key; its public key must be registered at
        the server. Required unless ``insecure``.
    data_path : str or Path
        The hospital's training data (MedMNIST ``.npz`` or image folder).
    state_dir : str or Path
        Folder for the hospital's privacy ledger; keep it across runs (the budget is
        spent over all runs).
    site_name : str
        The name shown in the server's model card.
    epsilon_budget : float
        The hospital's total epsilon budget; training stops when it is spent.
    delta : float (default: 1e-5)
        The hospital's delta, in (0, 1); below 1 / (number of its examples).
    insecure : bool (default: False)
        Plain HTTP without TLS or authentication, for a throw-away local test only.
    runtime_port : int (default: 9094)
        Port of this SuperNode's local Runtime API; unique per SuperNode on one machine.
    max_wait_time : float, optional
        Give up after this many seconds without reaching the SuperLink (default: retry
        forever).
    executable : str (default: "fedaug-supernode")
        The program to run; it must start the site's own SuperExec (a bare
        ``flower-supernode`` in ``--isolation process`` would run no ClientApp).
    """
    if ":" not in superlink_address or "://" in superlink_address:
        raise ConfigError("The SuperLink address must be host:port without a scheme.",
                          value=superlink_address, fix='Pass e.g. "127.0.0.1:8000".')
    cmd = [executable, "--superlink", superlink_address]
    if insecure:
        log.warning("Starting the SuperNode WITHOUT TLS or authentication (insecure=True): "
                    "use this only for a local test.")
        cmd.append("--insecure")
    else:
        if root_cert is None or auth_private_key is None:
            raise ConfigError(
                "A hospital's SuperNode needs the CA certificate and its private key.",
                value={"root_cert": root_cert, "auth_private_key": auth_private_key},
                fix="Pass root_cert= and auth_private_key= (see docs/deploy.md), or "
                "insecure=True explicitly for a throw-away local test.")
        missing = [str(p) for p in (root_cert, auth_private_key) if not Path(p).is_file()]
        if missing:
            raise ConfigError("SuperNode credential file(s) not found.", value=missing,
                              fix="Check the paths (docs/deploy.md, Certificates and keys).")
        cmd += ["--root-certificates", str(root_cert),
                "--auth-supernode-private-key", str(auth_private_key)]
    cmd += ["--port", str(int(runtime_port))]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(float(max_wait_time))]
    cmd += ["--node-config", node_config_arg(data_path=data_path, state_dir=state_dir,
                                             site_name=site_name,
                                             epsilon_budget=epsilon_budget, delta=delta)]
    return cmd


def run_client(*, superlink_address: str, root_cert: str | Path | None,
               auth_private_key: str | Path | None, data_path: str | Path,
               state_dir: str | Path, site_name: str, epsilon_budget: float,
               delta: float = 1e-5, insecure: bool = False,
               runtime_port: int = DEFAULT_RUNTIME_PORT) -> int:
    """Run the hospital's SuperNode and its SuperExec in the foreground (what
    ``fedaug-supernode`` runs); return the SuperNode's exit code.

    Both keep running between runs; stop them with Ctrl-C (SIGINT) or SIGTERM.
    """
    if not Path(data_path).exists():
        raise ConfigError("The hospital's data path does not exist.", value=str(data_path),
                          fix="Pass a MedMNIST .npz file or an image folder.")
    cmd = supernode_command(superlink_address=superlink_address, root_cert=root_cert,
                            auth_private_key=auth_private_key, data_path=data_path,
                            state_dir=state_dir, site_name=site_name,
                            epsilon_budget=epsilon_budget, delta=delta, insecure=insecure,
                            runtime_port=runtime_port)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    log.info("Starting: %s", " ".join(cmd))
    return supervise(cmd[1:])
