"""Allocated cpu/memory counters on the node row, filled from the active allocations."""

from decimal import Decimal

from django.db import migrations, models
from django.db.models import Q


FILL = """
UPDATE nodes_node AS n
SET cpu_allocated = s.cpu, memory_mb_allocated = s.memory_mb
FROM (
    SELECT node_id, COALESCE(SUM(cpu), 0) AS cpu, COALESCE(SUM(memory_mb), 0) AS memory_mb
    FROM nodes_resourceallocation WHERE released_at IS NULL GROUP BY node_id
) AS s
WHERE n.id = s.node_id
"""


class Migration(migrations.Migration):
    dependencies = [("nodes", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="node",
            name="cpu_allocated",
            field=models.DecimalField(decimal_places=3, default=Decimal("0"), max_digits=9),
        ),
        migrations.AddField(
            model_name="node",
            name="memory_mb_allocated",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunSQL(FILL, reverse_sql=migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name="node",
            constraint=models.CheckConstraint(
                condition=Q(cpu_allocated__gte=0), name="node_cpu_allocated_gte_0"
            ),
        ),
        migrations.AddConstraint(
            model_name="node",
            constraint=models.CheckConstraint(
                condition=Q(memory_mb_allocated__gte=0), name="node_memory_mb_allocated_gte_0"
            ),
        ),
    ]
