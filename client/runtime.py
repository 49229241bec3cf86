"""The code that spends a hospital's privacy budget is the code the hospital installed.

Flower runs a ClientApp from the app package (FAB) the server uploads: ``flwr-clientapp``
installs it under ``$FLWR_HOME/apps/...``, puts that folder first on ``sys.path`` and
imports the component its ``pyproject.toml`` names. So a server could ship its own module
(or its own copy of ``fedaug/``) and spend a site's budget its own way. A hospital's
SuperNode therefore runs three processes of its own instead of Flower's defaults:

``fedaug-supernode`` (:func:`supernode_main`, also what ``fedaug client`` runs)
    Starts ``flower-supernode`` with ``--isolation process`` (so the SuperNode spawns no
    SuperExec of its own) and ``fedaug-superexec`` beside it, with a fresh shared secret
    for the local Runtime API, and stops both when either stops.
``fedaug-superexec`` (:func:`superexec_main`)
    Flower's SuperExec, connected to the SuperNode's Runtime API, that takes only
    ClientApp tasks and starts ``fedaug-clientapp`` for each instead of ``flwr-clientapp``.
``fedaug-clientapp`` (:func:`clientapp_main`)
    Imports ``fedaug.client.app`` from the installed package before any FAB is on
    ``sys.path`` (so no FAB file can shadow it), then runs Flower's ``flwr-clientapp`` with its app loader replaced: the
    FAB is still installed (its files are never imported), its ``clientapp`` component
    must be :data:`EXPECTED_COMPONENT` (anything else gets an error reply that names it),
    and the installed ClientApp object is what runs. Runtime dependency installation is
    always off.

A FAB whose publisher/name or version differs from the installed fedaug is only logged as
a warning: those strings are the server's claims and protect nothing (the installed code
runs either way); the warning tells the hospital that the server runs another release.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fedaug.errors import ConfigError, FedaugError, run_command
from fedaug.logs import ensure_logging, setup_logging

__all__ = [
    "EXPECTED_COMPONENT", "APP_ID", "SiteCodeError", "check_app_package", "install_site_guard",
    "route_clientapp_tasks", "superexec_argv", "site_commands", "supervise", "clientapp_main",
    "superexec_main", "supernode_main", "find_script",
]

log = logging.getLogger("fedaug.deploy")

#: The only ClientApp component a site runs: the installed fedaug's.
EXPECTED_COMPONENT = "fedaug.client.app:app"
#: The FAB id (``publisher/name`` from pyproject's [tool.flwr.app] and [project]).
APP_ID = "fedaug/fedaug"
SUPERNODE_COMMAND = "fedaug-supernode"
SUPEREXEC_COMMAND = "fedaug-superexec"
CLIENTAPP_COMMAND = "fedaug-clientapp"
DEFAULT_RUNTIME_PORT = 9094
_DEFAULT_HOST = "127.0.0.1"


class SiteCodeError(FedaugError, RuntimeError):
    """The server's app package asks this site to run code other than the installed fedaug.

    Deliberately not a ``LoadClientAppError``: Flower replaces that one's text by a generic
    sentence in the error reply, and the server should read why the site refused.
    """


def installed_version() -> str:
    """The installed fedaug's version ("unknown" without package metadata)."""
    try:
        return importlib.metadata.version("fedaug")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- the ClientApp process --------------------------------------------------------------

def check_app_package(component: str, *, fab_id: str, fab_version: str,
                      installed: ModuleType) -> None:
    """Refuse a ClientApp component other than :data:`EXPECTED_COMPONENT`; warn when the
    app package's id or version is not the installed fedaug's."""
    if component != EXPECTED_COMPONENT:
        raise SiteCodeError(
            f"This site runs only the fedaug it installed (fedaug {installed_version()}, "
            f"{installed.__file__}): the app package ({fab_id} {fab_version}) names the "
            f"ClientApp component '{component}', but this site accepts only "
            f"'{EXPECTED_COMPONENT}'. Nothing was run and nothing was spent.",
            fix=f"Submit the fedaug app unchanged (clientapp = \"{EXPECTED_COMPONENT}\").")
    if fab_id != APP_ID:
        log.warning("The app package says it is %r, not %r; this site runs its installed "
                    "fedaug %s regardless.", fab_id, APP_ID, installed_version())
    if fab_version != installed_version():
        log.warning("The server's app package is version %s, this site's fedaug %s: the "
                    "installed %s runs (install the server's release if replies fail).",
                    fab_version, installed_version(), installed_version())


def _site_load_client_app_fn(installed: ModuleType) -> Callable[..., Any]:
    """A stand-in for Flower's ``get_load_client_app_fn``: reads the installed FAB's
    component (never imports the FAB) and returns the installed ClientApp."""
    from flwr.common.config import get_project_config, get_project_dir

    def factory(default_app_ref: str = "", app_path: str | None = None,
                multi_app: bool = True) -> Callable[[str, str, str], Any]:
        del default_app_ref, app_path, multi_app

        def load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
            try:
                config = get_project_config(get_project_dir(fab_id, fab_version, fab_hash))
                component = str(config["tool"]["flwr"]["app"]["components"]["clientapp"])
            except Exception as err:  # noqa: BLE001 (any unreadable package is refused)
                raise SiteCodeError(
                    "The app package's pyproject.toml names no readable ClientApp "
                    f"component ({type(err).__name__}: {err}); nothing was run.",
                    fix=f'Submit the fedaug app with clientapp = "{EXPECTED_COMPONENT}".'
                ) from None
            check_app_package(component, fab_id=fab_id, fab_version=fab_version,
                              installed=installed)
            log.info("Running the installed fedaug %s ClientApp (%s) for app package %s "
                     "%s", installed_version(), installed.__file__, fab_id, fab_version)
            return installed.app

        return load

    return factory


def _refuse_flower_loader(module_attribute_str: str, *args: Any, **kwargs: Any) -> Any:
    raise SiteCodeError(f"fedaug-clientapp does not import app package code (asked for "
                        f"'{module_attribute_str}'); it runs only the installed "
                        f"'{EXPECTED_COMPONENT}'.")


def install_site_guard(installed: ModuleType) -> None:
    """Make Flower's ClientApp runtime (in this process) load ``installed.app`` only.

    Replaces ``get_load_client_app_fn`` where ``run_clientapp`` calls it, and Flower's
    ``load_app`` (which would put the FAB first on ``sys.path``) with a refusal, so a
    future flwr that loads apps another way fails closed instead of importing the FAB.
    """
    # import_module: ``import a.b as m`` would give flwr.supernode.cli's function
    # ``flwr_clientapp``, which shadows the module of that name
    clientapp_utils, object_ref, cli, runtime = map(importlib.import_module, (
        "flwr.clientapp.utils", "flwr.supercore.object_ref", "flwr.supernode.cli.flwr_clientapp",
        "flwr.supernode.runtime.run_clientapp"))
    targets = [(runtime, "get_load_client_app_fn"), (clientapp_utils, "load_app"),
               (object_ref, "load_app"), (cli, "run_clientapp")]
    missing = [f"{m.__name__}.{n}" for m, n in targets if not hasattr(m, n)]
    if missing:
        raise SiteCodeError("This flwr version loads ClientApps differently than fedaug's "
                            "guard expects; refusing to run app packages.", value=missing,
                            fix="Install the flwr version fedaug pins (pip install -e .).")
    runtime.get_load_client_app_fn = _site_load_client_app_fn(installed)
    clientapp_utils.load_app = _refuse_flower_loader
    object_ref.load_app = _refuse_flower_loader
    run = cli.run_clientapp

    def run_without_dependency_install(**kwargs: Any) -> None:
        if kwargs.get("runtime_dependency_install"):
            log.warning("Ignoring --allow-runtime-dependency-installation: a site installs "
                        "nothing an app package asks for.")
        kwargs["runtime_dependency_install"] = False
        run(**kwargs)

    cli.run_clientapp = run_without_dependency_install


def clientapp_main(argv: Sequence[str] | None = None) -> None:
    """``fedaug-clientapp``: Flower's ``flwr-clientapp`` (same arguments) that runs only
    the installed fedaug ClientApp."""
    args = list(sys.argv[1:] if argv is None else argv)
    ensure_logging()
    # First, while no app package is on this machine's sys.path: the installed code.
    installed = importlib.import_module("fedaug.client.app")
    install_site_guard(installed)
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv = [CLIENTAPP_COMMAND, *args]
    flwr_clientapp()


# ---- the SuperExec ----------------------------------------------------------------------

def find_script(name: str) -> str:
    """The absolute path of console script ``name``: beside this Python first (the
    installation fedaug runs from), then on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} was not found beside {sys.executable} or on PATH.",
                          fix="Install fedaug (`pip install -e .`), which installs flwr "
                          "and fedaug's console scripts.")
    return str(Path(found).absolute())


def route_clientapp_tasks(launcher: str) -> None:
    """Make Flower's SuperExec (in this process) take ClientApp tasks only and start
    ``launcher`` for each instead of ``flwr-clientapp``."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    constant, executor, superexec = map(importlib.import_module, (
        "flwr.supercore.constant", "flwr.supercore.superexec.executor.subprocess_executor",
        "flwr.supercore.superexec.run_superexec"))
    if getattr(executor, "TASK_TYPE_TO_COMMAND", None) is not constant.TASK_TYPE_TO_COMMAND \
            or not hasattr(superexec, "AutoExecPlugin"):
        raise SiteCodeError("This flwr version starts ClientApps differently than fedaug's "
                            "SuperExec expects; refusing to start.",
                            fix="Install the flwr version fedaug pins (pip install -e .).")

    class SiteExecPlugin(AutoExecPlugin):
        """Only ClientApp tasks: a hospital runs no server-supplied agent or model apps."""

        supported_task_types = frozenset({TaskType.CLIENT_APP})

    constant.TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP] = launcher
    superexec.AutoExecPlugin = SiteExecPlugin


def superexec_argv(*, runtime_api_address: str, root_certificates: str | None = None,
                   parent_pid: int | None = None, auth_secret_file: str | None = None,
                   health_server_address: str | None = None) -> list[str]:
    """Arguments for Flower's ``flower-superexec`` (subprocess executor, no runtime
    dependency installation; ``--insecure`` unless the Runtime API has TLS)."""
    args = ["--runtime-api-address", runtime_api_address]
    args += ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    if parent_pid is not None:
        args += ["--parent-pid", str(int(parent_pid))]
    if auth_secret_file:
        args += ["--superexec-auth-secret-file", auth_secret_file]
    if health_server_address:
        args += ["--health-server-address", health_server_address]
    return args


def superexec_main(argv: Sequence[str] | None = None) -> None:
    """``fedaug-superexec``: Flower's SuperExec for a SuperNode in ``--isolation process``
    that runs every ClientApp task with ``fedaug-clientapp``."""
    p = argparse.ArgumentParser(prog=SUPEREXEC_COMMAND, allow_abbrev=False,
                                description=superexec_main.__doc__)
    p.add_argument("--runtime-api-address", required=True,
                   help="the SuperNode's Runtime API, e.g. 127.0.0.1:9094")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS to the Runtime API (the default unless --root-certificates)")
    p.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    p.add_argument("--parent-pid", type=int, help="exit when this process exits")
    p.add_argument("--superexec-auth-secret-file",
                   help="the secret the SuperNode was started with")
    p.add_argument("--health-server-address")
    args = p.parse_args(argv)
    setup_logging(0)
    try:
        launcher = find_script(CLIENTAPP_COMMAND)
        route_clientapp_tasks(launcher)
    except FedaugError as err:
        print(f"{SUPEREXEC_COMMAND}: error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("SuperExec: ClientApp tasks run %s (the installed fedaug %s)", launcher,
             installed_version())
    from flwr.supercore.cli.flower_superexec import flower_superexec

    sys.argv = ["flower-superexec", *superexec_argv(
        runtime_api_address=args.runtime_api_address,
        root_certificates=None if args.insecure else args.root_certificates,
        parent_pid=args.parent_pid, auth_secret_file=args.superexec_auth_secret_file,
        health_server_address=args.health_server_address)]
    flower_superexec()


# ---- the SuperNode and its SuperExec, together ------------------------------------------

@dataclass(frozen=True)
class SiteCommands:
    """The two processes of one site and where the SuperExec finds the SuperNode."""

    supernode: list[str]
    superexec: list[str]
    runtime_host: str
    runtime_port: int


def _supervisor_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--isolation")
    p.add_argument("--allow-runtime-dependency-installation", action="store_true")
    p.add_argument("--host", default=_DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT)
    p.add_argument("--ssl-ca-certfile")
    p.add_argument("--superexec-auth-secret-file")
    return p


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def site_commands(flower_args: Sequence[str], *, secret_file: str, parent_pid: int,
                  find: Callable[[str], str] = find_script) -> SiteCommands:
    """``flower-supernode`` (given arguments, ``--isolation process``, the Runtime API's
    host/port and the SuperExec secret) and ``fedaug-superexec`` (pointed at that API).

    Raises ConfigError for ``--isolation subprocess`` (Flower's own ClientApp launcher)
    and ``--allow-runtime-dependency-installation``.
    """
    known, rest = _supervisor_parser().parse_known_args(list(flower_args))
    if known.isolation not in (None, "process"):
        raise ConfigError(
            "A fedaug site starts its ClientApps itself (--isolation process): with "
            f"--isolation {known.isolation}, Flower's flwr-clientapp would run whatever code "
            "the server's app package names.", value=known.isolation,
            fix="Leave out --isolation.")
    if known.allow_runtime_dependency_installation:
        raise ConfigError("A site installs no dependencies an app package asks for.",
                          value="--allow-runtime-dependency-installation",
                          fix="Leave it out; install fedaug's dependencies yourself.")
    secret = known.superexec_auth_secret_file or secret_file
    host = known.host
    supernode = [find("flower-supernode"), *rest, "--isolation", "process",
                 "--host", host, "--port", str(known.port),
                 "--superexec-auth-secret-file", secret]
    if known.ssl_ca_certfile:
        supernode += ["--ssl-ca-certfile", known.ssl_ca_certfile]
    superexec = [find(SUPEREXEC_COMMAND), *superexec_argv(
        runtime_api_address=f"{_client_host(host)}:{known.port}",
        root_certificates=known.ssl_ca_certfile, parent_pid=parent_pid,
        auth_secret_file=secret)]
    return SiteCommands(supernode, superexec, _client_host(host).strip("[]"), known.port)


def _write_secret() -> tuple[str, Callable[[], None]]:
    folder = tempfile.mkdtemp(prefix="fedaug-superexec-")
    path = os.path.join(folder, "secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    return path, lambda: shutil.rmtree(folder, ignore_errors=True)


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that makes the child get SIGTERM when the supervisor dies
    (even by SIGKILL); None elsewhere. libc is looked up here, in the parent, so the child
    only calls one C function between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _stop(procs: Sequence[subprocess.Popen], *, grace: float = 2.0, term: float = 10.0) -> None:
    """Let processes that were signalled with us exit; SIGTERM, then SIGKILL the rest."""
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=term)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def supervise(flower_args: Sequence[str], *, find: Callable[[str], str] = find_script,
              start_timeout: float = 120.0) -> int:
    """Run this site's SuperNode and SuperExec until either exits or a SIGINT/SIGTERM
    arrives, then stop both.

    Returns 0 after a signal, the SuperNode's exit code when it exited first, and 1 when
    the SuperExec exited first or the SuperNode's Runtime API never opened.
    """
    secret, cleanup = _write_secret()
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: stop.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen] = []
    try:
        cmds = site_commands(flower_args, secret_file=secret, parent_pid=os.getpid(), find=find)
        log.info("SuperNode: %s", " ".join(cmds.supernode))
        supernode = subprocess.Popen(cmds.supernode, preexec_fn=_die_with_parent())
        procs.append(supernode)
        deadline = time.monotonic() + start_timeout
        while not stop and supernode.poll() is None \
                and not _listening(cmds.runtime_host, cmds.runtime_port):
            if time.monotonic() > deadline:
                log.error("The SuperNode's Runtime API did not open %s:%d within %.0fs.",
                          cmds.runtime_host, cmds.runtime_port, start_timeout)
                _stop(procs, grace=0.0)
                return 1
            time.sleep(0.2)
        if not stop and supernode.poll() is None:
            log.info("SuperExec: %s", " ".join(cmds.superexec))
            procs.append(subprocess.Popen(cmds.superexec))
        while not stop and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        supernode_first = supernode.poll() is not None
        if not stop and not supernode_first:
            log.error("The site's SuperExec exited (code %s); stopping the SuperNode.",
                      procs[1].returncode)
        _stop(procs, grace=2.0 if stop else 0.0)  # after a signal: theirs, too
        if stop:
            return 0
        return int(supernode.returncode) if supernode_first else 1
    except BaseException:
        _stop(procs, grace=0.0)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        cleanup()


def supernode_main(argv: Sequence[str] | None = None) -> int:
    """``fedaug-supernode``: ``flower-supernode``'s arguments; starts the SuperNode in
    ``--isolation process`` and the site's own SuperExec (``fedaug-superexec``), which
    runs only the installed fedaug ClientApp."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(f"usage: {SUPERNODE_COMMAND} [flower-supernode arguments]\n\n"
              f"{supernode_main.__doc__}\n\nSee `flower-supernode --help` for the arguments; "
              "--isolation and --allow-runtime-dependency-installation are refused.")
        return 0
    setup_logging(0)
    return run_command(lambda: supervise(args), prog=SUPERNODE_COMMAND)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(supernode_main())
