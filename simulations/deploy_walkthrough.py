"""Run docs/deploy.md's walk-through as written, on this machine, and check its result.

The page's ```bash blocks are extracted in order and each one runs with bash from the
repository root, as a reader would paste them into a terminal:

* ``D`` starts as a fresh temporary folder, with ``HOME`` and ``FLWR_HOME`` fresh folders
  under it, so nothing of the user's (``~/.flwr``, ``~/.fedaug/spending``) is touched. The
  page's own ``export D=$HOME/fedaug-deploy`` then puts every file under that folder too.
  Variables a block exports carry over to the next blocks, as in one shell.
* A block whose command is a long-running server (``flower-superlink ...``,
  ``fedaug-supernode ...``) starts in the background, in its own process group, and is
  stopped at the end. The SuperLink is ready when its log says ``Uvicorn running``; after
  each hospital the script waits until ``flwr supernode ls <connection> --format json``
  shows every started hospital ``online``.
* The ``flwr run . <connection> ... --stream`` block runs in the foreground; the time from
  its start to the end of the stream is reported.
* Step 8's placeholder ``<run-id>`` becomes the run id from ``flwr ls <connection> --format
  json``. The run must be ``finished:completed``, and the model card must list every
  hospital of step 6 with an epsilon within that hospital's budget.

It prints the time of ``flwr run`` to the end of the stream, of the whole walk-through, and
the load average before and after. Exit status 0 when every block and check passed, 1
otherwise (the temporary folder, with each process's log, is kept on failure).

Usage::

    python simulations/deploy_walkthrough.py [--doc docs/deploy.md] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deploy.md"
SERVERS = ("flower-superlink", "fedaug-supernode")
#: tools whose absence the page answers with another command
FALLBACKS = {
    "openssl": "fedaug-server certs $D/certs (docs/deploy.md, step 1)",
    "ssh-keygen": "fedaug-server node-key $D/keys hospital-a (docs/deploy.md, step 2)",
}
#: variables of the shell itself, not carried from one block to the next
_SHELL_VARS = {"_", "PWD", "OLDPWD", "SHLVL"}


class WalkthroughError(RuntimeError):
    """A block or a check failed; the message says which and why."""


@dataclass
class Block:
    """One ```bash block of the page."""

    index: int
    line: int
    text: str

    @property
    def command(self) -> str:
        """The first word of the first non-comment line."""
        for line in self.text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split()[0]
        return ""

    @property
    def server(self) -> bool:
        return self.command in SERVERS

    @property
    def title(self) -> str:
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")
        return f"block {self.index} (docs line {self.line}): {first[:70]}"


def extract_blocks(markdown: str) -> list[Block]:
    """The ```bash blocks of a Markdown page, in order."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append(Block(len(blocks) + 1, start, "\n".join(body) + "\n"))
        i += 1
    return blocks


@dataclass
class Walkthrough:
    """The shell state and the background processes of one walk-through."""

    root: Path
    env: dict[str, str]
    connection: str = "hospitals"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    hospitals: dict[str, float] = field(default_factory=dict)  # site name -> budget
    run_id: int | None = None
    run_seconds: float | None = None

    # -- blocks ---------------------------------------------------------------------------
    def _script(self, text: str, env_out: Path) -> str:
        return f"set -e\n{text}\nenv -0 > {shlex.quote(str(env_out))}\n"

    def _take_env(self, env_out: Path) -> None:
        if not env_out.is_file():
            return
        for item in env_out.read_bytes().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep and key not in _SHELL_VARS:
                self.env[key] = value

    def run_foreground(self, block: Block, text: str, *, timeout: float,
                       echo: bool = True) -> str:
        """Run one block with bash; its output (also printed) or WalkthroughError."""
        log = self.root / "logs" / f"block-{block.index:02d}.log"
        env_out = self.root / "logs" / f"block-{block.index:02d}.env"
        with log.open("w") as out:
            proc = subprocess.Popen(["bash", "-c", self._script(text, env_out)], cwd=REPO,
                                    env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            fired: list[bool] = []

            def stop() -> None:
                fired.append(True)
                _kill_group(proc, signal.SIGKILL)

            watchdog = threading.Timer(timeout, stop)
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:  # streams `flwr run --stream` as it comes
                    out.write(line)
                    if echo:
                        print("    " + line, end="", flush=True)
                proc.wait()
            finally:
                watchdog.cancel()
            if fired:
                raise WalkthroughError(f"{block.title} did not end within {timeout:.0f}s "
                                       f"and was stopped; its output is in {log}")
        output = log.read_text(errors="replace")
        if proc.returncode != 0:
            missing = [tool for tool in FALLBACKS if tool in text and shutil.which(tool) is None]
            hint = "".join(f"\n  {tool} is not installed; the page's fallback is "
                           f"`{FALLBACKS[tool]}`." for tool in missing)
            raise WalkthroughError(f"{block.title} failed with exit code {proc.returncode}"
                                   f"{hint}\n--- its output (last lines) ---\n"
                                   + _tail(output))
        self._take_env(env_out)
        return output

    def start_server(self, block: Block, timeout: float) -> None:
        """Start a SuperLink or hospital block in the background and wait until ready."""
        name = _server_name(block)
        log = self.root / "logs" / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {block.text.strip()}"], cwd=REPO,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        if block.command == "flower-superlink":
            self._wait_for(lambda: "Uvicorn running" in log.read_text(errors="replace"),
                           proc, log, "the SuperLink to print `Uvicorn running`", timeout)
        else:
            site, budget = _site_and_budget(block.text)
            self.hospitals[site] = budget
            want = len(self.hospitals)
            self._wait_for(lambda: self.online_nodes() >= want, proc, log,
                           f"{want} hospital(s) to be `online` in `flwr supernode ls "
                           f"{self.connection}`", timeout)
        print(f"    started {name} (pid {proc.pid}); ready. Log: {log}", flush=True)

    def _wait_for(self, ready, proc: subprocess.Popen, log: Path, what: str,
                  timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise WalkthroughError(f"waiting for {what}: the process exited with code "
                                       f"{proc.returncode}\n--- {log} ---\n"
                                       + _tail(log.read_text(errors="replace")))
            if time.monotonic() > deadline:
                raise WalkthroughError(f"waited {timeout:.0f}s for {what}\n--- {log} ---\n"
                                       + _tail(log.read_text(errors="replace")))
            time.sleep(1.0)

    # -- the flwr CLI ---------------------------------------------------------------------
    def flwr_json(self, *args: str) -> dict | None:
        res = subprocess.run(["flwr", *args, "--format", "json"], cwd=REPO, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return None
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError:
            return None

    def online_nodes(self) -> int:
        reply = self.flwr_json("supernode", "ls", self.connection) or {}
        return sum(1 for n in reply.get("nodes", []) if n.get("status") == "online")

    def latest_run(self) -> dict:
        reply = self.flwr_json("ls", self.connection) or {}
        runs = reply.get("runs", [])
        if not runs:
            raise WalkthroughError(f"`flwr ls {self.connection} --format json` lists no run")
        return max(runs, key=lambda r: int(r["run-id"]))

    def wait_finished(self, run_id: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            reply = self.flwr_json("ls", self.connection, "--run-id", str(run_id)) or {}
            runs = reply.get("runs", [])
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return runs[0]
            if time.monotonic() > deadline:
                raise WalkthroughError(f"run {run_id} not finished {timeout:.0f}s after the "
                                       f"stream ended: {runs}")
            time.sleep(2.0)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):  # hospitals first
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def _server_name(block: Block) -> str:
    if block.command == "flower-superlink":
        return "superlink"
    site, _ = _site_and_budget(block.text)
    return site


def _site_and_budget(text: str) -> tuple[str, float]:
    site = re.search(r"site-name='([^']+)'", text)
    budget = re.search(r"epsilon-budget=([0-9.eE+-]+)", text)
    if not site or not budget:
        raise WalkthroughError("a fedaug-supernode block without site-name='...' and "
                               f"epsilon-budget=...:\n{text}")
    return site.group(1), float(budget.group(1))


def _ports(blocks: list[Block]) -> list[int]:
    """The fixed ports of the page's servers (SuperLink --port, each SuperNode --port)."""
    return [int(p) for b in blocks if b.server for p in re.findall(r"--port (\d+)", b.text)]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def check_model_card(card_path: Path, hospitals: dict[str, float]) -> list[str]:
    """Problems with the model card: every hospital listed, epsilon within its budget."""
    if not card_path.is_file():
        return [f"no model card at {card_path}"]
    card = json.loads(card_path.read_text())
    sites = {s["site"]: s for s in card.get("sites", [])}
    problems = []
    for name, budget in hospitals.items():
        if name not in sites:
            problems.append(f"{name} is not in the model card (sites: {sorted(sites)})")
        elif not 0 < float(sites[name]["epsilon"]) <= budget:
            problems.append(f"{name}: epsilon {sites[name]['epsilon']} not within (0, {budget}]")
    return problems


def walk(doc: Path, root: Path, *, run_timeout: float, ready_timeout: float) -> dict:
    """Run the page's blocks; the measurements, or WalkthroughError."""
    blocks = extract_blocks(doc.read_text(encoding="utf-8"))
    if not blocks:
        raise WalkthroughError(f"no ```bash blocks in {doc}")
    busy = [p for p in _ports(blocks) if _port_in_use(p)]
    if busy:
        raise WalkthroughError(f"port(s) {busy} on 127.0.0.1 are in use; the page's servers "
                               "need them (is another SuperLink or SuperNode running?)")
    (root / "logs").mkdir(parents=True)
    home = root / "home"
    (home / ".flwr").mkdir(parents=True)
    env = {**os.environ, "D": str(root), "HOME": str(home), "FLWR_HOME": str(home / ".flwr"),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    w = Walkthrough(root=root, env=env)
    for b in blocks:
        m = re.search(r"fedaug-server connect (\S+)", b.text)
        if m:
            w.connection = m.group(1)
    result: dict = {"blocks": len(blocks)}
    try:
        for block in blocks:
            print(f"\n== {block.title}", flush=True)
            if block.server:
                w.start_server(block, ready_timeout)
            elif re.search(r"^\s*flwr run\b", block.text, re.M):
                t0 = time.perf_counter()
                w.run_foreground(block, block.text, timeout=run_timeout)
                w.run_seconds = result["run_seconds"] = time.perf_counter() - t0
                run = w.latest_run()
                w.run_id = int(run["run-id"])
                print(f"    run {w.run_id}: `flwr run` to the end of the stream "
                      f"{w.run_seconds:.0f}s", flush=True)
            elif "<run-id>" in block.text:
                if w.run_id is None:
                    raise WalkthroughError(f"{block.title} needs a run id, but no run was "
                                           "submitted before it")
                run = w.wait_finished(w.run_id, timeout=120)
                w.run_foreground(block, block.text.replace("<run-id>", str(w.run_id)),
                                 timeout=180)
                result["run"] = run
                if run["status"] != "finished:completed":
                    raise WalkthroughError(f"run {w.run_id} ended {run['status']!r}, not "
                                           "'finished:completed'; see `flwr log "
                                           f"{w.run_id} {w.connection} --show`")
            else:
                w.run_foreground(block, block.text, timeout=ready_timeout)
        if w.run_id is None:
            raise WalkthroughError("the page has no `flwr run` block")
        if "run" not in result:  # a page without step 8: check the status here
            result["run"] = w.wait_finished(w.run_id, timeout=120)
            if result["run"]["status"] != "finished:completed":
                raise WalkthroughError(f"run {w.run_id} ended {result['run']['status']!r}")
        d = Path(w.env["D"])
        result["D"] = str(d)
        problems = check_model_card(d / "server" / "out" / "global" / "model_card.json",
                                    w.hospitals)
        if not w.hospitals:
            problems.append("the page started no hospital (fedaug-supernode block)")
        if problems:
            raise WalkthroughError("model card: " + "; ".join(problems))
        result["hospitals"] = w.hospitals
        return result
    finally:
        w.stop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="deploy_walkthrough",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("Usage::")[0].strip())
    p.add_argument("--doc", type=Path, default=DOC, help="the page (default: %(default)s)")
    p.add_argument("--dir", type=Path, default=None,
                   help="an empty or new folder to use instead of a fresh temporary one")
    p.add_argument("--keep", action="store_true",
                   help="keep the folder after a successful walk-through (kept on failure)")
    p.add_argument("--run-timeout", type=float, default=900.0,
                   help="seconds allowed for the `flwr run ... --stream` block "
                   "(default: %(default)s)")
    p.add_argument("--ready-timeout", type=float, default=180.0,
                   help="seconds allowed for any other block, and for a server to become "
                   "ready (default: %(default)s)")
    args = p.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        if any(args.dir.iterdir()):
            p.error(f"--dir {args.dir} is not empty")
        root = args.dir.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="fedaug-walkthrough-")).resolve()
    load_before = _load()
    cores = os.cpu_count()
    print(f"deploy walk-through of {args.doc} in {root} ({cores} cores, load average "
          f"{load_before})", flush=True)
    t0 = time.perf_counter()
    try:
        result = walk(args.doc, root, run_timeout=args.run_timeout,
                      ready_timeout=args.ready_timeout)
    except (WalkthroughError, OSError, subprocess.SubprocessError) as exc:
        total = time.perf_counter() - t0
        print(f"\nFAILED after {total:.0f}s: {exc}\nLoad average before {load_before}, "
              f"after {_load()}. Logs and files are kept in {root}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    load_after = _load()
    sites = ", ".join(f"{k} (budget {v:g})" for k, v in result["hospitals"].items())
    print(f"\nOK: {result['blocks']} blocks ran as written; run {result['run']['run-id']} "
          f"finished:completed; the model card lists {sites} within budget.\n"
          f"flwr run to the end of the stream: {result['run_seconds']:.0f}s\n"
          f"whole walk-through: {total:.0f}s\n"
          f"load average (1/5/15 min) before {load_before}, after {load_after} "
          f"({cores} cores)", flush=True)
    if args.keep or args.dir is not None:
        print(f"files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
