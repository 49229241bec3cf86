"""Deployment faults with real processes (one SuperLink, hospitals started with
``fedaug-supernode``, TLS + node authentication, one round each):

* a hospital whose node config has a typo (``epsilon-budgt=1.0``) answers with an error
  reply naming the key it meant ("did you mean 'epsilon-budget'?"), shown as ``site error``
  in the ServerApp log, and spends nothing;
* with min-sites=2 and only one usable hospital, the round is not aggregated and the
  ServerApp log says "fewer than min-sites";
* a hospital that connects after the run started still gets the warm start (the warm start
  waits up to wait-for-sites-s for min-sites hospitals).

The helpers are copies of those in test_site_code.py / test_deploy.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from fedaug.data import load_digits_builtin
from fedaug.privacy import PrivacyLedger
from fedaug.server.certs import CertPaths, make_dev_certificates, make_node_keys
from fedaug.server.superlink import add_connection, register_node_command, superlink_command

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5
CLASSES = ",".join(str(i) for i in range(10))
RUN_TIMEOUT_S = 240.0
TYPO = "hospital-typo"


@dataclass
class Federation:
    """Handles on the running processes and their files (as in test_site_code.py)."""

    root: Path
    env: dict[str, str]
    connection: str
    certs: CertPaths
    link_port: int
    app: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    node_ids: dict[str, str] = field(default_factory=dict)

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

    def submit(self, run_config: dict[str, object]) -> int:
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        res = self.flwr("run", str(self.app), self.connection, "--run-config", pairs,
                        "--format", "json")
        assert res.returncode == 0, res.stdout + res.stderr
        return int(json.loads(res.stdout)["run-id"])

    def status(self, run_id: int) -> str:
        res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
        return json.loads(res.stdout)["runs"][0]["status"] if res.returncode == 0 else ""

    def wait_finished(self, run_id: int, timeout: float = RUN_TIMEOUT_S) -> tuple[str, str]:
        """The run's status and its ServerApp log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status, self.run_log(run_id)
            time.sleep(3)
        self.run_log(run_id)
        pytest.fail(f"run {run_id} did not finish within {timeout:.0f}s; see the logs in "
                    f"{self.root}")

    def run_log(self, run_id: int) -> str:
        res = self.flwr("log", str(run_id), self.connection, "--show", timeout=60)
        (self.root / f"run-{run_id}.log").write_text(res.stdout + res.stderr)
        return res.stdout + res.stderr

    def add_site(self, name: str, node_config: str, port: int) -> None:
        """Register a hospital's key and start it with ``fedaug-supernode``, passing its
        node config as given (not checked here: the site checks it)."""
        keys = make_node_keys(self.root / "keys", name)
        res = self.flwr(*register_node_command(keys.public_key, connection=self.connection)[1:],
                        "--format", "json")
        assert res.returncode == 0, res.stdout + res.stderr
        self.node_ids[name] = str(json.loads(res.stdout)["node-id"])
        self.start(name, ["fedaug-supernode", "--superlink", f"127.0.0.1:{self.link_port}",
                          "--root-certificates", str(self.certs.ca_cert),
                          "--auth-supernode-private-key", str(keys.private_key),
                          "--port", str(port), "--max-wait-time", "60.0",
                          "--node-config", node_config])


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


def _wait_online(fed: Federation, names: list[str], timeout: float = 120) -> None:
    want = {fed.node_ids[n] for n in names}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = fed.flwr("supernode", "ls", fed.connection, "--format", "json")
        if res.returncode == 0:
            online = {str(n["node-id"]) for n in json.loads(res.stdout)["nodes"]
                      if n["status"] == "online"}
            if want <= online:
                return
        time.sleep(2)
    pytest.fail(f"SuperNodes {names} did not come online within {timeout:.0f}s; logs:\n"
                + "\n".join(fed.log(n)[-1500:] for n in names))


def _node_config(fed: Federation, name: str, budget_item: str) -> str:
    """A hospital's node config as docs/deploy.md writes it, with ``budget_item`` for the
    budget (``epsilon-budget=8.0``, or a typo)."""
    return (f"data-path='{fed.root / f'{name}.npz'}' state-dir='{fed.root / 'sites' / name}' "
            f"site-name='{name}' {budget_item} delta={DELTA} "
            f"spending-registry='{fed.root / 'spending' / name}' torch-threads=1")


def _spent(fed: Federation, name: str) -> float:
    return PrivacyLedger(fed.root / "sites" / name, site=name, delta=DELTA).epsilon()


def _start_federation(root: Path, names: tuple[str, ...]) -> Federation:
    """A SuperLink, and a MedMNIST-layout .npz file per name (half the built-in digits)."""
    missing = [exe for exe in ("flower-superlink", "flower-supernode", "flwr",
                               "fedaug-supernode", "fedaug-superexec", "fedaug-clientapp")
               if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"executables not on PATH: {missing} (pip install -e .)")
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "HOME": str(root / "home"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PYTHONUNBUFFERED": "1"}
    link_port = _free_ports(1)[0]
    fed = Federation(root=root, env=env, connection="fedaug-fault-test",
                     certs=make_dev_certificates(root / "certs"), link_port=link_port,
                     app=_copy_app(root / "app"))
    (root / "link-state").mkdir()
    link = fed.start("superlink", superlink_command(state_dir=root / "link-state",
                                                    certs=fed.certs, port=link_port))
    add_connection(fed.connection, address=f"127.0.0.1:{link_port}",
                   root_cert=fed.certs.ca_cert, flwr_home=env["FLWR_HOME"])
    _wait_https(link_port, fed.certs.ca_cert, link)
    digits = load_digits_builtin("train", seed=0)
    order = np.random.default_rng(0).permutation(len(digits.labels))
    for i, name in enumerate(names):
        idx = order[i::len(names)]
        np.savez(root / f"{name}.npz", train_images=digits.images[idx, ..., 0],
                 train_labels=digits.labels[idx].reshape(-1, 1).astype(np.uint8))
    return fed


def _run_config(fed: Federation, name: str, **changes: object) -> dict[str, object]:
    return {**TINY, "num-server-rounds": 1, "image-size": 8, "channels": 1,
            "class-names": CLASSES, "out-dir": str(fed.root / f"out-{name}"), "min-sites": 2,
            "server-threads": 1, "wait-for-sites-s": 60.0, "round-timeout-s": 180.0,
            **changes}


# ---- a typo in one hospital's node config, min-sites=2 ----------------------------------

@pytest.fixture(scope="module")
def typo_run(tmp_path_factory):
    """hospital-a (correct node config) + hospital-typo (``epsilon-budgt=1.0``); one round,
    min-sites=2, no warm start. Yields (federation, status, ServerApp log, seconds)."""
    root = tmp_path_factory.mktemp("deploy-faults")
    fed = _start_federation(root, ("hospital-a", TYPO))
    try:
        ports = _free_ports(2)
        fed.add_site("hospital-a", _node_config(fed, "hospital-a", "epsilon-budget=8.0"),
                     ports[0])
        fed.add_site(TYPO, _node_config(fed, TYPO, "epsilon-budgt=1.0"), ports[1])
        _wait_online(fed, ["hospital-a", TYPO])
        t0 = time.perf_counter()
        run_id = fed.submit(_run_config(fed, "typo", **{"warmup-noise-multiplier": 0.0}))
        status, server_log = fed.wait_finished(run_id)
        yield fed, status, server_log, time.perf_counter() - t0
    finally:
        fed.stop_all()


@pytest.mark.integration
def test_a_node_config_typo_is_an_error_reply_that_names_the_key_and_spends_nothing(typo_run):
    fed, status, server_log, seconds = typo_run
    # Assert: the ServerApp log shows the site's error reply and the key it meant
    assert status == "finished:completed", status
    lines = [ln for ln in server_log.splitlines() if "site error" in ln]
    assert lines, server_log[-3000:]
    assert any("epsilon-budgt" in ln and "did you mean 'epsilon-budget'" in ln for ln in lines), \
        "\n".join(lines)
    assert "did you mean 'epsilon-budget'" in fed.log(TYPO)
    # Assert: nothing was spent or even written at the refused hospital
    assert not (fed.root / "sites" / TYPO).exists()
    assert not (fed.root / "spending" / TYPO).exists()
    # the SuperNode itself keeps running: a fixed node config needs only a restart
    assert fed.procs[TYPO].poll() is None
    print(f"deploy faults: node-config typo run in {seconds:.0f}s (submit to finished)")


@pytest.mark.integration
def test_one_usable_hospital_of_min_sites_two_is_not_aggregated(typo_run):
    fed, status, server_log, _ = typo_run
    # Assert: the round ended without aggregation and said why
    assert "fewer than min-sites=2" in server_log, server_log[-3000:]
    assert "not aggregated" in server_log
    assert "No round was aggregated" in server_log
    assert not (fed.root / "out-typo" / "global" / "model_card.json").exists()
    # hospital-a trained (and spent, within its budget) before the server could know
    assert 0 < _spent(fed, "hospital-a") <= 8.0


# ---- a hospital that connects after the run started ------------------------------------

@pytest.mark.integration
def test_a_hospital_that_connects_after_the_run_started_gets_the_warm_start(tmp_path):
    # Prepare: one hospital online, the run submitted, then the second hospital starts
    fed = _start_federation(tmp_path, ("hospital-a", "hospital-b"))
    try:
        ports = _free_ports(2)
        fed.add_site("hospital-a", _node_config(fed, "hospital-a", "epsilon-budget=8.0"),
                     ports[0])
        _wait_online(fed, ["hospital-a"])
        t0 = time.perf_counter()
        run_id = fed.submit(_run_config(fed, "late", **{"wait-for-sites-s": 120.0}))
        # the ServerApp has logged its first line (the warm start comes right after it)
        deadline = time.monotonic() + 120
        while "fedaug run " not in fed.run_log(run_id):
            assert time.monotonic() < deadline, f"run {run_id}: {fed.status(run_id)}"
            time.sleep(2)
        time.sleep(5)  # the warm start is now waiting for min-sites=2
        started_after = time.perf_counter() - t0
        # Execute
        fed.add_site("hospital-b", _node_config(fed, "hospital-b", "epsilon-budget=6.0"),
                     ports[1])
        status, server_log = fed.wait_finished(run_id)
        seconds = time.perf_counter() - t0
    finally:
        fed.stop_all()
    # Assert: the warm start waited for hospital-b; both released and trained
    assert status == "finished:completed", server_log[-3000:]
    assert "sites connected within" not in server_log  # the warning when it gives up
    assert "warm-up: 2 of 2 sites released noised class sums" in server_log, server_log[-3000:]
    card = json.loads((tmp_path / "out-late" / "global" / "model_card.json").read_text())
    sites = {s["site"]: s for s in card["sites"]}
    assert set(sites) == {"hospital-a", "hospital-b"}
    assert all(s["warm-start"] for s in sites.values()), sites
    for name, budget in (("hospital-a", 8.0), ("hospital-b", 6.0)):
        assert 0 < sites[name]["epsilon"] <= budget
        assert _spent(fed, name) == pytest.approx(sites[name]["epsilon"])
    print(f"deploy faults: hospital-b started {started_after:.0f}s after submit (5 s "
          f"after the ServerApp's first line); warm start + one round in {seconds:.0f}s")
