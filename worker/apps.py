from django.apps import AppConfig


class WorkerConfig(AppConfig):
    """The worker side (no models); an app so that Celery's autodiscovery finds worker.tasks."""

    name = "worker"
    verbose_name = "Worker"
