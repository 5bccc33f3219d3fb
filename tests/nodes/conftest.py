"""Helpers of the nodes tests."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from jobs.models import Job
from tests.factories import JobFactory, UserFactory


def make_job(**fields: Any) -> Job:
    """A job owned by one shared user (hashing a password per job would dominate the test time)."""
    owner = get_user_model().objects.filter(username="nodes-owner").first() or UserFactory(
        username="nodes-owner"
    )
    return JobFactory.create(owner=owner, **fields)
