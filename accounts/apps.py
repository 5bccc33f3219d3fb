from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender: AppConfig, using: str = "default", **kwargs: Any) -> None:
    # Permissions exist only after migrate's own post_migrate handler created them; grant them to the
    # role groups then, so a permission another app adds later (jobs.run_shell) reaches its roles.
    # post_migrate is sent once per app: act on the last one, when every app's permissions exist.
    from django.apps import apps

    from accounts import services

    if sender is not [config for config in apps.get_app_configs() if config.models_module][-1]:
        return

    services.roles_sync(using=using)


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Connected without a sender so it runs once, after every app's permissions were created.
        post_migrate.connect(_sync_roles, dispatch_uid="accounts.roles_sync")
