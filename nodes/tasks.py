"""Thin Celery tasks for the node sweeps (scheduled by CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from nodes.placement import capacity_counters_repair


@shared_task(name="nodes.repair_counters", ignore_result=True)
def repair_counters() -> list[str]:
    """Set drifted allocated counters back to the sum of the nodes' active allocations."""
    return capacity_counters_repair()
