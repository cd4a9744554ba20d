"""The scheduled deployment: the flow served from this process on a cron schedule in an explicit timezone,
and on arrival: the watcher's `char-rnn.corpus.arrived` event for this deployment starts a run too
(`pipelines.arrivals`).

Concurrency limit 1 with the ENQUEUE strategy: a run that comes due while another is running waits
(state AwaitingConcurrencySlot) instead of running alongside it, since both would write the same
files and DVC cannot run twice in one workspace. The schedule names its timezone (UTC by default),
so that 02:00 is 02:00 there wherever the server runs; Prefect 3.9's schedule card omits the zone (and
lists the next runs in the browser's), so the deployment's description names it.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from pipelines.arrivals import ARRIVED, resource
from pipelines.flow import char_rnn_pipeline


def serve(root: Path, cron: str, timezone: str, name: str, skip_if_unchanged: bool, train_timeout_s: float) -> None:
    """Register the deployment and run its flow runs until interrupted (Ctrl-C pauses the schedule)."""
    parameters = {
        "root": str(root.resolve()),
        "skip_if_unchanged": skip_if_unchanged,
        "train_timeout_s": train_timeout_s,
    }
    arrival = DeploymentEventTrigger(
        name="new text arrived",
        description=f"`python -m pipelines watch --deployment {name}` saw new text under data/raw",
        expect={ARRIVED},
        match={"prefect.resource.id": resource(name)},
        parameters={**parameters, "skip_if_unchanged": True},  # a stale event finds nothing to do
    )
    char_rnn_pipeline.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        triggers=[arrival],
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters=parameters,
        description=f"The pipeline of {root.resolve()} through DVC, on cron {cron!r} ({timezone}) and when new text"
        " arrives (`python -m pipelines watch`); one run at a time.",
        tags=["char-rnn"],
    )
