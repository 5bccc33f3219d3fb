from typing import Any

from django.apps import AppConfig


def _place_when_capacity_comes(sender: Any = None, **kwargs: Any) -> None:
    from jobs.messages import place_soon  # noqa: PLC0415 - apps load before their modules may be imported

    place_soon(force=True)


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        from nodes.signals import capacity_available  # noqa: PLC0415 - see above

        # A node came (registered, online again, undrained): pending work may fit on it now.
        capacity_available.connect(_place_when_capacity_comes, dispatch_uid="jobs.place_on_capacity")
