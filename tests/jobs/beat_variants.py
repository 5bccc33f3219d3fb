"""Beat scheduler variants that only tests start (by dotted path, in their own `celery beat` process)."""

import os
import signal

from jobs import messages
from jobs.beat import JobScheduler
from jobs.beat.lease import LEASE_KEY


class UnleasedScheduler(JobScheduler):
    """A lease key of its own per process: every such beat leads, so every one sends every slot."""

    lease_key = f"{LEASE_KEY}:unleased:{os.getpid()}"


class KilledBeforePublishScheduler(JobScheduler):
    """Dies by SIGKILL right after its firing transaction committed, before publishing `jobs.execute`."""

    def fire_slots(self, batch):  # type: ignore[no-untyped-def]
        messages.execute_publish_now = _die  # type: ignore[assignment]
        return super().fire_slots(batch)


def _die(*args: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
