"""Cluster plumbing that Lightning and submitit need from us: the SLURM environment plugin."""

from __future__ import annotations

import signal

from lightning_fabric.plugins.environments import SLURMEnvironment


def slurm_environment(
    requeue_signal: str = "SIGUSR2", auto_requeue: bool = True
) -> SLURMEnvironment:
    """Lightning's SLURM environment, requeueing on the signal submitit sends before time-out."""
    return SLURMEnvironment(
        auto_requeue=auto_requeue, requeue_signal=signal.Signals[requeue_signal]
    )
