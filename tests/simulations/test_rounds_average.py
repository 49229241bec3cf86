"""simulations/benchmarks/rounds_average.py recovers each round's raw weights from what the
server published (its EMA) and re-averages them: checked against the server's own EMA."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedaug.server.strategy import FedAugStrategy


def _published(raw: list[dict[str, np.ndarray]], decay: float) -> list[dict[str, torch.Tensor]]:
    """What the server publishes after each round, by its own EMA code."""
    server = SimpleNamespace(ema_decay=decay, _ema=None)
    out = []
    for arrays in raw:
        record = FedAugStrategy._update_ema(server, ArrayRecord(
            {k: Array(v) for k, v in arrays.items()}))
        out.append({k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()})
    return out


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_raw_rounds_and_averages_match_the_server(decay: float, benchmark_script) -> None:
    ra = benchmark_script("rounds_average")
    rng = np.random.default_rng(0)
    raw = [{"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=4).astype(np.float32)} for _ in range(6)]
    published = _published(raw, decay)
    recovered = ra.raw_rounds(published, decay)
    for want, got in zip(raw, recovered, strict=True):
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k], atol=1e-5)
    # the run's own decay gives back its last published model; another decay the server's
    # EMA of that decay over the same rounds; "mean" the plain mean
    np.testing.assert_allclose(ra.average(recovered, str(decay))["w"].numpy(),
                               published[-1]["w"].numpy(), atol=1e-5)
    other = _published(raw, 0.75)[-1]["w"].numpy()
    np.testing.assert_allclose(ra.average(recovered, "0.75")["w"].numpy(), other, atol=1e-5)
    np.testing.assert_allclose(ra.average(recovered, "mean")["w"].numpy(),
                               np.mean([r["w"] for r in raw], axis=0), atol=1e-5)
    np.testing.assert_allclose(ra.average(recovered, "0")["w"].numpy(), raw[-1]["w"],
                               atol=1e-5)
