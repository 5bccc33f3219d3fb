"""Output chunks partitioned by month on their execution's scheduled_for (copied into each chunk), aligned
with the executions' partitions so retention drops both (issue 13; scheduler_project/partitions.py)."""

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

from scheduler_project.partitions import is_partitioned, table_partition, table_unpartition

TABLE = "monitoring_executionlogchunk"


def forward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if is_partitioned(cursor, TABLE):
            return
        cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN scheduled_for timestamptz")
        cursor.execute(
            f"UPDATE {TABLE} AS c SET scheduled_for = e.scheduled_for FROM jobs_execution AS e "
            "WHERE e.id = c.execution_id"
        )
        cursor.execute(f"DELETE FROM {TABLE} WHERE scheduled_for IS NULL")  # none: the constraint was there
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN scheduled_for SET NOT NULL")
        cursor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT logchunk_unique_seq")
        unique = {"logchunk_unique_seq": ["execution_id", "seq", "scheduled_for"]}
        table_partition(cursor, TABLE, key="scheduled_for", unique=unique, now=timezone.now())


def reverse(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if not is_partitioned(cursor, TABLE):
            return
        cursor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT logchunk_unique_seq")
        table_unpartition(cursor, TABLE, unique={"logchunk_unique_seq": ["execution_id", "seq"]})
        cursor.execute(f"ALTER TABLE {TABLE} DROP COLUMN scheduled_for")


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0001_initial"),
        ("jobs", "0010_partitioned_history"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, reverse)],
            state_operations=[
                migrations.RemoveConstraint(model_name="executionlogchunk", name="logchunk_unique_seq"),
                migrations.AddField(
                    model_name="executionlogchunk",
                    name="scheduled_for",
                    field=models.DateTimeField(help_text="its execution's slot: the partition key"),
                    preserve_default=False,
                ),
                migrations.AlterField(
                    model_name="executionlogchunk",
                    name="execution",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="log_chunks",
                        to="jobs.execution",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="executionlogchunk",
                    constraint=models.UniqueConstraint(
                        fields=("execution", "seq", "scheduled_for"), name="logchunk_unique_seq"
                    ),
                ),
            ],
        ),
    ]
