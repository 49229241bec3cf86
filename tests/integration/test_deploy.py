"""Hospital deployment: command builders, development credentials, and a real federation
(one SuperLink, two SuperNodes, separate processes on 127.0.0.1, TLS + node authentication).

The real-process tests are slow: every round starts a fresh ClientApp process per hospital
that imports torch, so two rounds take about 3 to 4 minutes on 2 shared cores. They carry
the ``integration`` marker (``pytest -m "not integration"`` leaves them out). The crash test
waits for Flower's heartbeat timeout, about 2 minutes more, and is also marked ``slow``: it
runs with ``pytest -m slow``.
"""

from __future__ import annotations

import json
import logging
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
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.common.config import parse_config_args

from conftest import TINY
from fedaug.client.supernode import node_config_arg, supernode_command
from fedaug.data import load_digits_builtin
from fedaug.errors import ConfigError
from fedaug.privacy import PrivacyLedger
from fedaug.server.certs import CertPaths, make_dev_certificates, make_node_keys
from fedaug.server.superlink import (
    STATE_DB,
    add_connection,
    register_node_command,
    superlink_command,
)

REPO = Path(__file__).resolve().parents[2]
BUDGETS = {"hospital-a": 8.0, "hospital-b": 6.0}
DELTA = 1e-5
CLASSES = ",".join(str(i) for i in range(10))
RUN_TIMEOUT_S = 420.0


# ---- command builders and credentials (fast) -----------------------------------------

def test_superlink_command_has_tls_node_auth_database_and_no_dependency_install(tmp_path):
    # Prepare
    certs = make_dev_certificates(tmp_path / "certs")
    # Execute
    cmd = superlink_command(state_dir=tmp_path / "state", certs=certs, port=9123)
    # Assert
    assert cmd[0] == "flower-superlink"
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--ssl-ca-certfile") + 1] == str(certs.ca_cert)
    assert cmd[cmd.index("--ssl-certfile") + 1] == str(certs.server_cert)
    assert cmd[cmd.index("--ssl-keyfile") + 1] == str(certs.server_key)
    assert "--enable-supernode-auth" in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert cmd[cmd.index("--database") + 1] == str(tmp_path / "state" / STATE_DB)
    assert cmd[cmd.index("--port") + 1] == "9123"


def test_superlink_refuses_to_run_without_tls_unless_asked(tmp_path):
    with pytest.raises(ConfigError, match="needs TLS certificates unless insecure"):
        superlink_command(state_dir=tmp_path, certs=None)
    with pytest.raises(ConfigError, match="authentication needs TLS"):
        superlink_command(state_dir=tmp_path, certs=None, insecure=True)
    missing = CertPaths(tmp_path / "ca.crt", tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(ConfigError, match="certificate file.*not found"):
        superlink_command(state_dir=tmp_path, certs=missing)


def test_insecure_superlink_is_logged_as_a_warning(tmp_path, caplog):
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedaug.deploy"):
        cmd = superlink_command(state_dir=tmp_path, certs=None, insecure=True, node_auth=False)
    # Assert
    assert "--insecure" in cmd and "--enable-supernode-auth" not in cmd
    assert "WITHOUT TLS" in caplog.text


def test_supernode_node_config_parses_back_with_flowers_parser(tmp_path):
    # Prepare
    data = tmp_path / "my data" / "site a.npz"  # a space in the path
    # Execute
    arg = node_config_arg(data_path=data, state_dir=tmp_path / "state", site_name="hospital-a",
                          epsilon_budget=8, delta=1e-5)
    parsed = parse_config_args([arg])
    # Assert
    assert parsed == {"data-path": str(data), "state-dir": str(tmp_path / "state"),
                      "site-name": "hospital-a", "epsilon-budget": 8.0, "delta": 1e-5}


def test_supernode_command_has_tls_key_port_and_node_config(tmp_path):
    # Prepare
    certs = make_dev_certificates(tmp_path / "certs")
    keys = make_node_keys(tmp_path / "keys", "hospital-a")
    # Execute
    cmd = supernode_command(superlink_address="127.0.0.1:9123", root_cert=certs.ca_cert,
                            auth_private_key=keys.private_key, data_path=tmp_path / "a.npz",
                            state_dir=tmp_path / "sa", site_name="hospital-a",
                            epsilon_budget=8.0, delta=1e-5, runtime_port=9200)
    # Assert
    assert cmd[:3] == ["fedaug-supernode", "--superlink", "127.0.0.1:9123"]
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(keys.private_key)
    assert cmd[cmd.index("--port") + 1] == "9200"
    assert "--insecure" not in cmd
    assert "site-name='hospital-a'" in cmd[cmd.index("--node-config") + 1]


@pytest.mark.parametrize(("changes", "message"), [
    ({"site_name": "o'brien"}, "single quote"),
    ({"epsilon_budget": 0.0}, "epsilon-budget must be > 0"),
    ({"delta": 1.0}, r"delta must be in \(0, 1.0\)"),
    ({"superlink_address": "https://127.0.0.1:8000"}, "host:port without a scheme"),
    ({"root_cert": None}, "needs the CA certificate and its private key"),
])
def test_supernode_command_rejects_bad_settings(tmp_path, changes, message):
    # Prepare
    certs = make_dev_certificates(tmp_path / "certs")
    keys = make_node_keys(tmp_path / "keys", "a")
    kwargs = dict(superlink_address="127.0.0.1:9123", root_cert=certs.ca_cert,
                  auth_private_key=keys.private_key, data_path=tmp_path / "a.npz",
                  state_dir=tmp_path / "s", site_name="a", epsilon_budget=8.0, delta=1e-5)
    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        supernode_command(**{**kwargs, **changes})


def test_dev_credentials_have_the_formats_flower_reads(tmp_path):
    # Execute
    certs = make_dev_certificates(tmp_path / "certs", hosts=("10.0.0.5", "link.example"))
    keys = make_node_keys(tmp_path / "keys", "hospital-a")
    # Assert: the node keys load the way flower-supernode / `flwr supernode register` do
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()
    assert keys.private_key.stat().st_mode & 0o077 == 0
    # Assert: the server certificate is signed by the CA and names every address
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == {"10.0.0.5", "127.0.0.1"}  # 127.0.0.1 always: the ServerApp connects there
    assert san.get_values_for_type(x509.DNSName) == ["link.example"]
    key = load_pem_private_key(certs.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    # A TLS context accepts the pair
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        certs.server_cert, certs.server_key)


def test_add_connection_is_read_by_the_flwr_cli(tmp_path, monkeypatch):
    # Prepare
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    ca = tmp_path / "ca.crt"
    # Execute
    add_connection("hospitals", address="127.0.0.1:9123", root_cert=ca)
    add_connection("hospitals", address="127.0.0.1:9123", root_cert=ca)  # idempotent
    conn = read_superlink_connection("hospitals")
    # Assert
    assert conn.address == "127.0.0.1:9123"
    assert conn.root_certificates == str(ca.resolve())
    assert read_superlink_connection().name == "local"  # the default is untouched
    with pytest.raises(ConfigError, match="already has a different connection"):
        add_connection("hospitals", address="127.0.0.1:1", root_cert=ca)


def test_deploy_clis_write_credentials_and_refuse_plain_http(tmp_path, capsys):
    # Prepare
    from fedaug.client.cli import main as client_main
    from fedaug.server.cli import main as server_main

    # Execute / Assert: credentials
    assert server_main(["certs", str(tmp_path / "certs")]) == 0
    assert server_main(["node-key", str(tmp_path / "keys"), "h"]) == 0
    assert (tmp_path / "certs" / "server.pem").is_file()
    assert (tmp_path / "keys" / "h.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    # Execute / Assert: no TLS without asking, no client without its data
    assert server_main(["serve", "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedaug server: error: ") and "needs TLS certificates" in err
    assert client_main(["--superlink", "127.0.0.1:8000", "--data-path", str(tmp_path / "no"),
                        "--state-dir", str(tmp_path / "s"), "--site-name", "a",
                        "--epsilon-budget", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedaug client: error: ") and "data path does not exist" in err


def test_register_node_command():
    assert register_node_command("k.pub", connection="hospitals", name="a") == [
        "flwr", "supernode", "register", "k.pub", "hospitals", "--name", "a"]


# ---- a real federation over 127.0.0.1 --------------------------------------------------

@dataclass
class Federation:
    """Handles on the running processes and their files."""

    root: Path
    env: dict[str, str]
    connection: str
    app: Path
    certs: CertPaths
    link_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    seconds: float = 0.0

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

    def wait_finished(self, run_id: int, timeout: float = RUN_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
            if res.returncode == 0:
                run = json.loads(res.stdout)["runs"][0]
                if run["status"].startswith("finished"):
                    self.save_run_log(run_id)
                    return run
            time.sleep(3)
        self.save_run_log(run_id)
        pytest.fail(f"run {run_id} did not finish within {timeout:.0f}s; see the logs in "
                    f"{self.root}. SuperLink log:\n" + self.log("superlink")[-3000:])

    def save_run_log(self, run_id: int) -> None:
        res = self.flwr("log", str(run_id), self.connection, "--show", timeout=60)
        (self.root / f"run-{run_id}.log").write_text(res.stdout + res.stderr)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group (each was started in its own session), even when its
    leader already exited: Flower's SuperExec children live in the same group."""
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
    """The Flower app without `[tool.flwr.federations]` (flwr 1.41 would rewrite the
    project's pyproject.toml to migrate it) and without tests."""
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


def _write_sites(root: Path, names: tuple[str, str] = ("hospital-a", "hospital-b"),
                 split: str = "train") -> dict[str, Path]:
    """Two disjoint halves of a split of the built-in digits as MedMNIST-layout .npz files."""
    digits = load_digits_builtin(split, seed=0)
    order = np.random.default_rng(0).permutation(len(digits.labels))
    half = len(order) // 2
    paths = {}
    for name, idx in zip(names, (order[:half], order[half:]), strict=True):
        path = root / f"{name}.npz"
        np.savez(path, train_images=digits.images[idx, ..., 0],
                 train_labels=digits.labels[idx].reshape(-1, 1).astype(np.uint8))
        paths[name] = path
    return paths


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
            return  # TLS handshake and HTTP worked
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the SuperLink did not answer on port {port} within {timeout:.0f}s")


def _site_cmd(fed: Federation, name: str, key: Path, data: Path, port: int) -> list[str]:
    return supernode_command(superlink_address=f"127.0.0.1:{fed.link_port}",
                             root_cert=fed.certs.ca_cert, auth_private_key=key,
                             data_path=data, state_dir=fed.root / "sites" / name,
                             site_name=name, epsilon_budget=BUDGETS.get(name, 5.0),
                             delta=DELTA, runtime_port=port, max_wait_time=60)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """SuperLink + hospital-a + hospital-b (registered) + a rogue SuperNode (not
    registered); one two-round run of the tiny config, submitted with `flwr run`."""
    missing = [exe for exe in ("flower-superlink", "flower-supernode", "flwr",
                               "fedaug-supernode", "fedaug-superexec", "fedaug-clientapp")
               if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"Flower executables not on PATH: {missing} (pip install -e .)")
    root = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "HOME": str(root / "home"),
           "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    link_port, *site_ports = _free_ports(4)
    fed = Federation(root=root, env=env, connection="fedaug-test",
                     app=_copy_app(root / "app"),
                     certs=make_dev_certificates(root / "certs"), link_port=link_port)
    (root / "link-state").mkdir()
    try:
        link = fed.start("superlink", superlink_command(state_dir=root / "link-state",
                                                        certs=fed.certs, port=link_port))
        add_connection(fed.connection, address=f"127.0.0.1:{link_port}",
                       root_cert=fed.certs.ca_cert, flwr_home=env["FLWR_HOME"])
        _wait_https(link_port, fed.certs.ca_cert, link)
        data = _write_sites(root)
        for i, name in enumerate(("hospital-a", "hospital-b")):
            keys = make_node_keys(root / "keys", name)
            res = fed.flwr(*register_node_command(keys.public_key, connection=fed.connection)[1:])
            assert "registered successfully" in res.stdout, res.stdout + res.stderr
            fed.start(name, _site_cmd(fed, name, keys.private_key, data[name], site_ports[i]))
        rogue = make_node_keys(root / "keys", "rogue")
        fed.start("rogue", _site_cmd(fed, "rogue", rogue.private_key, data["hospital-a"],
                                     site_ports[2]))
        t0 = time.perf_counter()
        run_id = fed.submit({**TINY, "num-server-rounds": 2, "image-size": 8, "channels": 1,
                             "class-names": CLASSES, "out-dir": str(root / "out"),
                             "wait-for-sites-s": 120.0})
        fed.run = fed.wait_finished(run_id)
        fed.seconds = time.perf_counter() - t0
        yield fed
    finally:
        fed.stop_all()


@pytest.mark.integration
def test_two_hospitals_train_over_tls_with_node_auth(federation):
    # Assert: the run finished normally
    assert federation.run["status"] == "finished:completed", federation.run
    out = federation.root / "out" / "global"
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    assert unet.config.num_class_embeds == 10
    card = json.loads((out / "model_card.json").read_text())
    assert card["rounds"] == 2
    assert card["classes"] == CLASSES.split(",")
    sites = {s["site"]: s for s in card["sites"]}
    assert set(sites) == set(BUDGETS)  # the rogue node never took part
    for name, budget in BUDGETS.items():
        assert 0 < sites[name]["epsilon"] <= budget
        assert sites[name]["budget"] == budget
        ledger = PrivacyLedger(federation.root / "sites" / name, site=name, delta=DELTA)
        assert ledger.epsilon() == pytest.approx(sites[name]["epsilon"])
    print(f"deployment: two rounds in {federation.seconds:.0f}s (submit to finished)")


@pytest.mark.integration
def test_unregistered_hospital_is_refused(federation):
    # Assert: the SuperNode with an unregistered key gave up with Flower's exit code 305
    rogue = federation.procs["rogue"]
    rogue.wait(timeout=60)
    log = federation.log("rogue")
    assert rogue.returncode != 0
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log
    assert not (federation.root / "sites" / "rogue").exists()


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
    pytest.fail(f"SuperNodes {sorted(node_ids)} did not come online within {timeout:.0f}s")


@pytest.mark.integration
@pytest.mark.slow  # about 2 min more: waits for Flower's heartbeat timeout (-m slow)
def test_a_hospital_crash_mid_round_leaves_the_run_and_the_other_ledger_intact(federation):
    # Prepare: the first two hospitals spent their budgets; two fresh ones, with data of
    # their own (the spending record keeps a data set's spending whatever its state folder),
    # take over
    fed = federation
    for name in BUDGETS:
        _kill_group(fed.procs[name], signal.SIGTERM)
        fed.procs[name].wait(timeout=30)
    data = _write_sites(fed.root, ("hospital-c", "hospital-d"), split="test")
    ports, ids = _free_ports(2), {}
    for port, name in zip(ports, ("hospital-c", "hospital-d"), strict=True):
        keys = make_node_keys(fed.root / "keys", name)
        res = fed.flwr("supernode", "register", str(keys.public_key), fed.connection,
                       "--format", "json")
        ids[name] = str(json.loads(res.stdout)["node-id"])
        fed.start(name, _site_cmd(fed, name, keys.private_key, data[name], port))
    _wait_online(fed, set(ids.values()))
    # Execute: hospital-d dies (SIGKILL) as soon as its first training message arrives
    run_id = fed.submit({**TINY, "num-server-rounds": 2, "image-size": 8, "channels": 1,
                         "class-names": CLASSES, "out-dir": str(fed.root / "out-fault"),
                         "min-sites": 1, "round-timeout-s": 300.0, "wait-for-sites-s": 60.0})
    deadline = time.monotonic() + 180
    while "Receiving: train message" not in fed.log("hospital-d"):
        assert time.monotonic() < deadline, "hospital-d never received a training message"
        time.sleep(0.5)
    _kill_group(fed.procs["hospital-d"], signal.SIGKILL)
    run = fed.wait_finished(run_id)
    # Assert: the run finished on the surviving hospital; its ledger is intact
    assert run["status"] == "finished:completed", run
    card = json.loads((fed.root / "out-fault" / "global" / "model_card.json").read_text())
    assert card["rounds"] == 2
    sites = {s["site"]: s for s in card["sites"]}
    assert sites["hospital-c"]["last-round"] == 2
    assert sites.get("hospital-d", {}).get("last-round", 0) < 2
    ledger = PrivacyLedger(fed.root / "sites" / "hospital-c", site="hospital-c", delta=DELTA)
    assert {1, 2} <= {e.round for e in ledger.entries}  # (+ round 0 for a warm start)
    assert ledger.epsilon() == pytest.approx(sites["hospital-c"]["epsilon"])
    assert 0 < ledger.epsilon() <= 5.0
