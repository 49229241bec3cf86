"""The code that spends a hospital's budget is the code the hospital installed.

Fast tests: the ClientApp guard (the component check, Flower's loader replaced), the
site's SuperExec routing and the command lines. Real-process tests (one SuperLink, one
hospital started with ``fedaug-supernode``, TLS + node authentication, one round each):
a server-modified app package that names its own ClientApp component is refused with an
error reply, and one that ships its own ``fedaug/`` copy cannot change what the site spends.
The helpers are copies of those in test_deploy.py.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from fedaug.client import runtime
from fedaug.client.runtime import (
    APP_ID,
    EXPECTED_COMPONENT,
    SiteCodeError,
    check_app_package,
    install_site_guard,
    route_clientapp_tasks,
    site_commands,
    supervise,
)
from fedaug.client.supernode import supernode_command
from fedaug.data import load_digits_builtin
from fedaug.errors import ConfigError
from fedaug.privacy import PrivacyLedger
from fedaug.server.certs import CertPaths, make_dev_certificates, make_node_keys
from fedaug.server.superlink import add_connection, register_node_command, superlink_command

REPO = Path(__file__).resolve().parents[2]
SITE, BUDGET, DELTA = "hospital-a", 8.0, 1e-5
CLASSES = ",".join(str(i) for i in range(10))
RUN_TIMEOUT_S = 300.0


def _version() -> str:
    return runtime.installed_version()


def _fake_fab(component: str, marker: Path, *, fab_hash: str = "ab" * 32) -> Path:
    """An installed app package as flwr-clientapp leaves it under $FLWR_HOME/apps, with its
    own tiny ``fedaug/client/app.py`` that writes ``marker`` when imported."""
    from flwr.common.config import get_project_dir

    project = get_project_dir(APP_ID, _version(), fab_hash)
    (project / "fedaug" / "client").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "fedaug"\nversion = "{_version()}"\n\n[tool.flwr.app]\n'
        f'publisher = "fedaug"\n\n[tool.flwr.app.components]\nserverapp = "x:app"\n'
        f'clientapp = "{component}"\n', encoding="utf-8")
    (project / "fedaug" / "__init__.py").write_text("")
    (project / "fedaug" / "client" / "__init__.py").write_text("")
    (project / "fedaug" / "client" / "app.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\napp = 'evil'\n")
    return project


@pytest.fixture
def flwr_restored(monkeypatch):
    """The flwr functions install_site_guard replaces, restored after the test."""
    clientapp_utils, object_ref, cli, run_clientapp = map(importlib.import_module, (
        "flwr.clientapp.utils", "flwr.supercore.object_ref", "flwr.supernode.cli.flwr_clientapp",
        "flwr.supernode.runtime.run_clientapp"))
    for module, name in ((run_clientapp, "get_load_client_app_fn"),
                         (clientapp_utils, "load_app"), (object_ref, "load_app"),
                         (cli, "run_clientapp")):
        monkeypatch.setattr(module, name, getattr(module, name))
    return monkeypatch


@pytest.fixture
def guarded(flwr_restored, tmp_path):
    """install_site_guard in this process (undone afterwards); FLWR_HOME in tmp_path."""
    import fedaug.client.app as installed

    flwr_restored.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    install_site_guard(installed)
    return installed


# ---- the ClientApp guard (fast) ---------------------------------------------------------

def test_another_clientapp_component_is_refused_with_a_reason_the_server_can_read(guarded):
    from flwr.clientapp.client_app import LoadClientAppError

    # Execute
    with pytest.raises(SiteCodeError) as err:
        check_app_package("evil:app", fab_id=APP_ID, fab_version=_version(), installed=guarded)
    # Assert: names both components; not the LoadClientAppError Flower hides behind a
    # generic sentence in the error reply
    text = str(err.value)
    assert "'evil:app'" in text and f"accepts only '{EXPECTED_COMPONENT}'" in text
    assert "runs only the fedaug it installed" in text and "nothing was spent" in text
    assert not isinstance(err.value, LoadClientAppError)


def test_flowers_loader_runs_the_installed_app_never_the_packages_copy(guarded, tmp_path):
    # Prepare: an installed app package with the normal component and its own fedaug/
    import flwr.supercore.object_ref as object_ref
    import flwr.supernode.runtime.run_clientapp as run_clientapp

    marker = tmp_path / "evil-ran"
    _fake_fab(EXPECTED_COMPONENT, marker)
    path_before = list(sys.path)
    # Execute: exactly the calls flwr-clientapp's run_clientapp makes
    load = run_clientapp.get_load_client_app_fn(default_app_ref="", app_path=None,
                                                multi_app=True)
    app = load(APP_ID, _version(), "ab" * 32)
    # Assert: the installed ClientApp object; the package was never put on sys.path
    assert app is guarded.app
    assert Path(guarded.__file__).resolve() == REPO / "client" / "app.py"
    assert sys.path == path_before and not marker.exists()
    # Assert: Flower's own loader is refused in this process
    with pytest.raises(SiteCodeError, match="does not import app package code"):
        object_ref.load_app("fedaug.client.app:app", ValueError, tmp_path)


def test_a_package_naming_another_component_is_refused_by_the_loader(guarded, tmp_path):
    # Prepare
    import flwr.supernode.runtime.run_clientapp as run_clientapp

    _fake_fab("evil:app", tmp_path / "evil-ran", fab_hash="cd" * 32)
    load = run_clientapp.get_load_client_app_fn(default_app_ref="", app_path=None,
                                                multi_app=True)
    # Execute / Assert
    with pytest.raises(SiteCodeError, match="names the ClientApp component 'evil:app'"):
        load(APP_ID, _version(), "cd" * 32)
    assert not (tmp_path / "evil-ran").exists()


def test_flowers_default_loader_would_import_the_packages_fedaug_copy(tmp_path, monkeypatch):
    """Why the launcher imports fedaug first: without it, the package's copy wins."""
    # Prepare
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    marker = tmp_path / "evil-ran"
    project = _fake_fab(EXPECTED_COMPONENT, marker)
    code = ("from flwr.supercore.object_ref import load_app\n"
            f"print(load_app('fedaug.client.app:app', ValueError, {str(project)!r}))\n")
    # Execute
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    # Assert
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "evil" and marker.exists()


def test_another_package_version_or_id_is_a_warning_only(guarded, caplog):
    # Execute
    with caplog.at_level("WARNING", logger="fedaug.deploy"):
        check_app_package(EXPECTED_COMPONENT, fab_id="other/fedaug", fab_version="9.9.9",
                          installed=guarded)
    # Assert
    assert "version 9.9.9" in caplog.text and "'other/fedaug'" in caplog.text


def test_clientapp_never_installs_runtime_dependencies(flwr_restored, caplog):
    # Prepare: Flower's run_clientapp replaced by a recorder before the guard wraps it
    cli = importlib.import_module("flwr.supernode.cli.flwr_clientapp")

    import fedaug.client.app as installed

    seen = {}
    flwr_restored.setattr(cli, "run_clientapp", lambda **kw: seen.update(kw))
    install_site_guard(installed)
    # Execute
    with caplog.at_level("WARNING", logger="fedaug.deploy"):
        cli.run_clientapp(runtime_api_address="x", token="t", runtime_dependency_install=True)
    # Assert
    assert seen["runtime_dependency_install"] is False
    assert "Ignoring --allow-runtime-dependency-installation" in caplog.text


# ---- the site's SuperExec and the command lines (fast) ----------------------------------

def test_site_superexec_starts_the_launcher_for_clientapp_tasks_only(monkeypatch):
    # Prepare: route in this process, undone afterwards
    import flwr.supercore.constant as constant
    import flwr.supercore.superexec.executor.subprocess_executor as executor_module
    import flwr.supercore.superexec.run_superexec as run_superexec
    from flwr.proto.task_pb2 import Task
    from flwr.supercore.constant import TaskType

    monkeypatch.setitem(constant.TASK_TYPE_TO_COMMAND, TaskType.CLIENT_APP,
                        constant.TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP])
    monkeypatch.setattr(run_superexec, "AutoExecPlugin", run_superexec.AutoExecPlugin)
    started = []
    monkeypatch.setattr(executor_module.subprocess, "Popen",
                        lambda args, **kw: started.append(args))
    route_clientapp_tasks("/site/bin/fedaug-clientapp")
    plugin = run_superexec.AutoExecPlugin(
        runtime_api_address="127.0.0.1:9094", insecure=True, root_certificates_path=None,
        executor=executor_module.SubprocessExecutor())
    # Execute
    ok = plugin.launch_task("token", Task(task_id=1, type=TaskType.CLIENT_APP, run_id=2))
    refused = plugin.launch_task("token", Task(task_id=3, type=TaskType.AGENT_APP, run_id=2))
    # Assert
    assert plugin.supported_task_types == frozenset({TaskType.CLIENT_APP})
    assert ok.status == "accepted" and refused.status == "failed"
    assert started == [["/site/bin/fedaug-clientapp", "--runtime-api-address",
                        "127.0.0.1:9094", "--token", "token", "--insecure", "--parent-pid",
                        str(os.getpid())]]


def test_site_commands_start_a_process_isolated_supernode_and_the_site_superexec():
    # Execute
    cmds = site_commands(["--superlink", "10.0.0.1:8000", "--port", "9200", "--node-config",
                          "site-name='a'"], secret_file="/tmp/s", parent_pid=42,
                         find=lambda name: f"/bin/{name}")
    # Assert
    assert cmds.supernode == [
        "/bin/flower-supernode", "--superlink", "10.0.0.1:8000", "--node-config",
        "site-name='a'", "--isolation", "process", "--host", "127.0.0.1", "--port", "9200",
        "--superexec-auth-secret-file", "/tmp/s"]
    assert cmds.superexec == [
        "/bin/fedaug-superexec", "--runtime-api-address", "127.0.0.1:9200", "--insecure",
        "--parent-pid", "42", "--superexec-auth-secret-file", "/tmp/s"]
    assert (cmds.runtime_host, cmds.runtime_port) == ("127.0.0.1", 9200)


@pytest.mark.parametrize(("args", "message"), [
    (["--isolation", "subprocess"], "flwr-clientapp would run whatever code"),
    (["--isolation=subprocess"], "flwr-clientapp would run whatever code"),
    (["--allow-runtime-dependency-installation"], "installs no dependencies"),
])
def test_site_commands_refuse_flowers_own_clientapp_launcher(args, message):
    with pytest.raises(ConfigError, match=message):
        site_commands(["--superlink", "h:1", *args], secret_file="s", parent_pid=1,
                      find=lambda name: name)


def test_hospital_command_is_the_site_launcher(tmp_path):
    # Execute
    cmd = supernode_command(superlink_address="127.0.0.1:9123", root_cert=None,
                            auth_private_key=None, data_path=tmp_path / "a.npz",
                            state_dir=tmp_path / "s", site_name="a", epsilon_budget=8.0,
                            insecure=True)
    # Assert: fedaug-supernode takes flower-supernode's arguments
    assert cmd[:3] == ["fedaug-supernode", "--superlink", "127.0.0.1:9123"]
    assert "--isolation" not in cmd


def _fake_command(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys, time, json, socket\n"
                    f"open({str(path) + '.argv'!r}, 'w').write(json.dumps(sys.argv))\n{body}")
    path.chmod(0o755)
    return str(path)


def test_supervisor_stops_the_superexec_when_the_supernode_exits(tmp_path):
    # Prepare: a SuperNode that opens its Runtime API port, then exits 3; a SuperExec
    # that would run forever
    port = _free_ports(1)[0]
    fakes = {
        "flower-supernode": _fake_command(tmp_path / "supernode", (
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[sys.argv.index("
            "'--port') + 1]))); s.listen(); time.sleep(1); sys.exit(3)\n")),
        "fedaug-superexec": _fake_command(tmp_path / "superexec", "time.sleep(60)\n"),
    }
    # Execute
    t0 = time.monotonic()
    code = supervise(["--superlink", "h:1", "--port", str(port)], find=fakes.__getitem__)
    # Assert: the SuperNode's code; the SuperExec was stopped, both used one secret
    assert code == 3 and time.monotonic() - t0 < 30
    node = json.loads((tmp_path / "supernode.argv").read_text())
    exe = json.loads((tmp_path / "superexec.argv").read_text())
    secret = node[node.index("--superexec-auth-secret-file") + 1]
    assert exe[exe.index("--superexec-auth-secret-file") + 1] == secret
    assert exe[exe.index("--parent-pid") + 1] == str(os.getpid())
    assert exe[exe.index("--runtime-api-address") + 1] == f"127.0.0.1:{port}"
    assert not Path(secret).exists()  # removed when the site stops


def test_console_scripts_and_app_id_match_pyproject():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = cfg["project"]["scripts"]
    assert scripts["fedaug-supernode"] == "fedaug.client.runtime:supernode_main"
    assert scripts["fedaug-superexec"] == "fedaug.client.runtime:superexec_main"
    assert scripts["fedaug-clientapp"] == "fedaug.client.runtime:clientapp_main"
    app = cfg["tool"]["flwr"]["app"]
    assert f"{app['publisher']}/{cfg['project']['name']}" == APP_ID
    assert app["components"]["clientapp"] == EXPECTED_COMPONENT


# ---- a real federation: one hospital, server-modified app packages ----------------------

@dataclass
class Federation:
    """Handles on the running processes and their files (as in test_deploy.py)."""

    root: Path
    env: dict[str, str]
    connection: str
    certs: CertPaths
    link_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log_path = self.root / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name], self.logs[name] = proc, log_path
        return proc

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)

    def submit(self, app: Path, run_config: dict[str, object]) -> int:
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        res = self.flwr("run", str(app), self.connection, "--run-config", pairs,
                        "--format", "json")
        assert res.returncode == 0, res.stdout + res.stderr
        return int(json.loads(res.stdout)["run-id"])

    def wait_finished(self, run_id: int, timeout: float = RUN_TIMEOUT_S) -> tuple[dict, str]:
        """The run's status record and its ServerApp log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
            if res.returncode == 0:
                run = json.loads(res.stdout)["runs"][0]
                if run["status"].startswith("finished"):
                    return run, self.run_log(run_id)
            time.sleep(3)
        self.run_log(run_id)
        pytest.fail(f"run {run_id} did not finish within {timeout:.0f}s; see the logs in "
                    f"{self.root}. Site log:\n" + self.log(SITE)[-3000:])

    def run_log(self, run_id: int) -> str:
        res = self.flwr("log", str(run_id), self.connection, "--show", timeout=60)
        (self.root / f"run-{run_id}.log").write_text(res.stdout + res.stderr)
        return res.stdout + res.stderr


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _copy_app(dst: Path) -> Path:
    """The Flower app without `[tool.flwr.federations]` and without tests."""
    dst.mkdir()
    lines, skip = [], False
    for line in (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            skip = line.startswith("[tool.flwr.federations")
        if not skip:
            lines.append(line)
    (dst / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(REPO / "README.md", dst / "README.md")
    for pkg in ("shared", "client", "server"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _wait_https(port: int, ca: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the SuperLink exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the SuperLink did not answer on port {port} within {timeout:.0f}s")


def _wait_online(fed: Federation, node_ids: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = fed.flwr("supernode", "ls", fed.connection, "--format", "json")
        if res.returncode == 0:
            online = {n["node-id"] for n in json.loads(res.stdout)["nodes"]
                      if n["status"] == "online"}
            if node_ids <= online:
                return
        time.sleep(2)
    pytest.fail(f"SuperNodes {sorted(node_ids)} did not come online within {timeout:.0f}s; "
                "site log:\n" + fed.log(SITE)[-3000:])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """SuperLink + hospital-a (registered, started with the documented hospital command,
    budget 8) with half the built-in digits."""
    missing = [exe for exe in ("flower-superlink", "flower-supernode", "flwr",
                               "fedaug-supernode", "fedaug-superexec", "fedaug-clientapp")
               if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"executables not on PATH: {missing} (pip install -e .)")
    root = tmp_path_factory.mktemp("site-code")
    # HOME: the site's spending registry (~/.fedaug/spending) starts empty for this test
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "HOME": str(root / "home"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PYTHONUNBUFFERED": "1"}
    link_port, site_port = _free_ports(2)
    fed = Federation(root=root, env=env, connection="fedaug-site-test",
                     certs=make_dev_certificates(root / "certs"), link_port=link_port)
    (root / "link-state").mkdir()
    try:
        link = fed.start("superlink", superlink_command(state_dir=root / "link-state",
                                                        certs=fed.certs, port=link_port))
        add_connection(fed.connection, address=f"127.0.0.1:{link_port}",
                       root_cert=fed.certs.ca_cert, flwr_home=env["FLWR_HOME"])
        _wait_https(link_port, fed.certs.ca_cert, link)
        digits = load_digits_builtin("train", seed=0)
        half = np.random.default_rng(0).permutation(len(digits.labels))[:len(digits.labels) // 2]
        data = root / f"{SITE}.npz"
        np.savez(data, train_images=digits.images[half, ..., 0],
                 train_labels=digits.labels[half].reshape(-1, 1).astype(np.uint8))
        keys = make_node_keys(root / "keys", SITE)
        res = fed.flwr(*register_node_command(keys.public_key, connection=fed.connection)[1:],
                       "--format", "json")
        node_id = str(json.loads(res.stdout)["node-id"])
        fed.start(SITE, supernode_command(
            superlink_address=f"127.0.0.1:{link_port}", root_cert=fed.certs.ca_cert,
            auth_private_key=keys.private_key, data_path=data,
            state_dir=root / "sites" / SITE, site_name=SITE, epsilon_budget=BUDGET,
            delta=DELTA, runtime_port=site_port, max_wait_time=60))
        _wait_online(fed, {node_id})
        yield fed
    finally:
        fed.stop_all()


def _run_config(fed: Federation, name: str) -> dict[str, object]:
    """One round, one site, no warm start; the run asks for epsilon 50 (the site's node
    budget, 8, is what counts)."""
    return {**TINY, "num-server-rounds": 1, "image-size": 8, "channels": 1,
            "class-names": CLASSES, "out-dir": str(fed.root / f"out-{name}"), "min-sites": 1,
            "wait-for-sites-s": 60.0, "round-timeout-s": 240.0, "epsilon": 50.0,
            "warmup-noise-multiplier": 0.0}


def _ledger_epsilon(fed: Federation) -> float:
    return PrivacyLedger(fed.root / "sites" / SITE, site=SITE, delta=DELTA).epsilon()


@pytest.mark.integration
def test_a_package_naming_its_own_clientapp_gets_an_error_reply_and_spends_nothing(site):
    # Prepare: the server's app names its own ClientApp, which ignores the node budget
    fed = site
    app = _copy_app(fed.root / "app-own-component")
    marker = fed.root / "own-component-ran"
    (app / "evil.py").write_text(
        "from pathlib import Path\n\nfrom flwr.clientapp import ClientApp\n\n"
        "import fedaug.client.app as fedaug_app\n\n"
        f"Path({str(marker)!r}).write_text('ran')\napp = ClientApp()\n\n\n"
        "@app.train()\ndef train(msg, context):\n"
        "    context.node_config['epsilon-budget'] = 1000.0  # ignore the site's budget\n"
        "    return fedaug_app.handle_train(msg, context)\n")
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    assert text.count(f'clientapp = "{EXPECTED_COMPONENT}"') == 1
    pyproject.write_text(text.replace(f'clientapp = "{EXPECTED_COMPONENT}"',
                                      'clientapp = "evil:app"'), encoding="utf-8")
    before = _ledger_epsilon(fed)
    # Execute
    t0 = time.perf_counter()
    run, server_log = fed.wait_finished(fed.submit(app, _run_config(fed, "own-component")))
    seconds = time.perf_counter() - t0
    # Assert: the site answered with an error reply that says why; nothing ran or was spent
    assert run["status"] == "finished:completed", run
    assert "site error" in server_log and "SiteCodeError" in server_log, server_log[-3000:]
    assert f"accepts only '{EXPECTED_COMPONENT}'" in server_log
    assert "No round was aggregated" in server_log
    assert "names the ClientApp component 'evil:app'" in fed.log(SITE)
    assert not marker.exists()
    assert _ledger_epsilon(fed) == before
    print(f"site code: refused package in {seconds:.0f}s (submit to finished)")


@pytest.mark.integration
def test_a_package_with_its_own_fedaug_copy_cannot_change_what_the_site_spends(site):
    # Prepare: the normal component, and a fedaug/ copy whose site ignores the node budget
    fed = site
    app = _copy_app(fed.root / "app-fedaug-copy")
    copy = app / "fedaug"
    shutil.copytree(REPO / "shared", copy, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("client", "server"):
        shutil.copytree(REPO / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    marker = fed.root / "fedaug-copy-ran"
    with (copy / "client" / "site.py").open("a", encoding="utf-8") as f:
        f.write("\n\n# server-modified: ignore the hospital's own budget\n"
                "import dataclasses as _dc\n"
                f"Path({str(marker)!r}).write_text('ran')\n"
                "_resolve_site = resolve_site\n\n\n"
                "def resolve_site(node_config, run):\n"
                "    return _dc.replace(_resolve_site(node_config, run), epsilon_budget=1000.0)\n")
    # Execute
    t0 = time.perf_counter()
    run, _ = fed.wait_finished(fed.submit(app, _run_config(fed, "fedaug-copy")))
    seconds = time.perf_counter() - t0
    # Assert: the installed code trained, within the site's own budget
    assert run["status"] == "finished:completed", run
    card = json.loads((fed.root / "out-fedaug-copy" / "global" / "model_card.json").read_text())
    sites = {s["site"]: s for s in card["sites"]}
    assert sites[SITE]["budget"] == BUDGET
    assert 0 < _ledger_epsilon(fed) <= BUDGET
    assert _ledger_epsilon(fed) == pytest.approx(sites[SITE]["epsilon"])
    assert not marker.exists()
    assert f"Running the installed fedaug {_version()} ClientApp" in fed.log(SITE)
    print(f"site code: package with a fedaug copy, one round in {seconds:.0f}s "
          f"(submit to finished), epsilon {_ledger_epsilon(fed):.2f} of {BUDGET}")
