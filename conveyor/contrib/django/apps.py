"""The Django app config: installing the app is what switches the integration on."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):
    """``"conveyor.contrib.django"`` in INSTALLED_APPS (app label ``conveyor``)."""

    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Explicit opt-in: these hooks exist only in projects that installed
        # the app, in every process that sets Django up (web, worker, beat).
        from conveyor.contrib.django import _connections as connections
        from conveyor.contrib.django import _transaction as transaction

        connections.install()
        transaction.install()

__all__ = ["ConveyorConfig"]
