"""An in-process Flower Grid: many simulated sites in one process, sequentially.

``fedaug simulate`` runs the very same ``ClientApp`` and ``ServerApp`` code as a deployment
or ``flwr run .``, but delivers each message by calling the ClientApp directly instead of
through Ray workers. On a small CPU machine that starts in a second, keeps one copy of
torch and the data in memory whatever the number of sites, and is deterministic. Every
message a site sends can be captured (``capture=``), which the privacy tests use.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]

log = logging.getLogger("fedaug.simulation")


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every simulated site runs.
    node_configs : dict of node id -> node config
        One entry per simulated site (``partition-id``, ``num-partitions``, ...).
    run_config : dict
        The run config every site's Context carries.
    capture : list, optional
        If given, every reply a site sends is appended to it.
    progress : bool (default: True)
        Show a progress bar over the sites of each round.
    """

    def __init__(self, client_app: ClientApp, node_configs: dict[int, dict[str, Any]],
                 run_config: dict[str, Any], *, run_id: int = 1,
                 capture: list[Message] | None = None, progress: bool = True) -> None:
        self._app = client_app
        self._contexts = {
            node: Context(run_id=run_id, node_id=node, node_config=dict(cfg),
                          state=RecordDict(), run_config=dict(run_config))
            for node, cfg in node_configs.items()
        }
        self._run = Run.create_empty(run_id=run_id)
        # The Message constructor reads the sender's identity from here (as in Flower's own
        # simulation runtime): this process acts as the SuperLink side.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._pending: dict[str, Message] = {}
        self._capture = capture
        self._progress = progress
        self.down: set[int] = set()  # nodes that "died": tests use this for faults

    def set_run(self, run: Run) -> None:
        """Set the run (kept for the Grid interface)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """Create an instruction message (deprecated in Flower; kept for the interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the simulated sites that are up."""
        return [n for n in self._contexts if n not in self.down]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue messages for their sites."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run each queued message's site now and return its reply."""
        ids = [i for i in message_ids if i in self._pending]
        bar = None
        if self._progress and ids and sys.stderr.isatty():  # bars stay out of log files
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="sites", unit="site", leave=False)
        replies = []
        for mid in ids:
            msg = self._pending.pop(mid)
            node = msg.metadata.dst_node_id
            if node in self.down:
                continue  # no reply, as from a dead node
            reply = self._deliver(msg, node)
            if self._capture is not None:
                self._capture.append(reply)
            replies.append(reply)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push the messages, run every site, return the replies."""
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message, node: int) -> Message:
        t0 = time.perf_counter()
        try:
            reply = self._app(msg, self._contexts[node])
        except Exception as err:  # one bad site never takes the federation down
            log.error("site on node %d failed: %s\n%s", node, err, traceback.format_exc(limit=3))
            return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
        log.debug("node %d replied in %.1fs", node, time.perf_counter() - t0)
        return reply
