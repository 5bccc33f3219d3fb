"""manage.py node_undrain NAME: a draining node takes new work again."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.models import Node
from nodes.services import node_undrain


class Command(BaseCommand):
    help = "Mark a draining node online again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="node name, NAME@HOST (see node_list)")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        try:
            changed = node_undrain(name=name)
        except Node.DoesNotExist as exc:
            raise CommandError(f"name: no node named {name!r} (see manage.py node_list)") from exc
        status = Node.objects.values_list("status", flat=True).get(name=name)
        if changed:
            self.stdout.write(self.style.SUCCESS(f"{name} is online"))
        elif status == Node.Status.ONLINE:
            self.stdout.write(f"{name} was already online")
        else:
            raise CommandError(f"{name} is {status}: it comes back online when its worker starts")
