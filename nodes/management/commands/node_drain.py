"""manage.py node_drain NAME: the node takes no new work and finishes what it runs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.models import Node
from nodes.services import node_drain


class Command(BaseCommand):
    help = "Mark a node draining: no new placements; its running executions finish."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="node name, NAME@HOST (see node_list)")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        try:
            changed = node_drain(name=name)
        except Node.DoesNotExist as exc:
            raise CommandError(f"name: no node named {name!r} (see manage.py node_list)") from exc
        status = Node.objects.values_list("status", flat=True).get(name=name)
        if changed:
            self.stdout.write(self.style.SUCCESS(f"{name} is draining"))
        elif status == Node.Status.DRAINING:
            self.stdout.write(f"{name} was already draining")
        else:
            raise CommandError(f"{name} is {status}: only an online node can be drained")
