"""Executions partitioned by month on scheduled_for (issue 13): see scheduler_project/partitions.py.

The rows are copied into the new table in this migration (about 10 s per million on a small machine: a
maintenance window for a large history, docs/operations.md). Foreign key constraints into
jobs_execution cannot exist on a partitioned table, so those of the dead letters, retries, output chunks,
allocations and of the executions themselves (retry_of, replay_of) go; the reverse puts them back.
"""

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

from scheduler_project.partitions import is_partitioned, table_partition, table_unpartition

UNIQUE = {"execution_unique_slot_attempt": ["job_id", "scheduled_for", "attempt"]}
INTO = [  # (table, column, constraint name) of the foreign keys into jobs_execution, for the reverse
    ("jobs_execution", "retry_of_id", "jobs_execution_retry_of_id_fk_jobs_execution_id"),
    ("jobs_execution", "replay_of_id", "jobs_execution_replay_of_id_fk_jobs_execution_id"),
    ("jobs_jobretry", "failed_execution_id", "jobs_jobretry_failed_execution_id_fk_jobs_execution_id"),
    ("jobs_jobretry", "new_execution_id", "jobs_jobretry_new_execution_id_fk_jobs_execution_id"),
    ("jobs_deadletter", "execution_id", "jobs_deadletter_execution_id_fk_jobs_execution_id"),
    ("monitoring_executionlogchunk", "execution_id", "monitoring_executionlogchunk_execution_id_fk"),
    ("nodes_resourceallocation", "execution_id", "nodes_resourceallocation_execution_id_fk"),
]


def forward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if not is_partitioned(cursor, "jobs_execution"):
            table_partition(cursor, "jobs_execution", key="scheduled_for", unique=UNIQUE, now=timezone.now())


def reverse(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if is_partitioned(cursor, "jobs_execution"):
            table_unpartition(cursor, "jobs_execution", unique=UNIQUE)
        for table, column, name in INTO:
            cursor.execute(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" FOREIGN KEY ("{column}") '
                'REFERENCES "jobs_execution" ("id") DEFERRABLE INITIALLY DEFERRED'
            )


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ("jobs", "0009_container_jobs"),
        ("monitoring", "0001_initial"),
        ("nodes", "0003_worker_incarnation"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, reverse)],
            state_operations=[
                migrations.AlterField(
                    model_name="execution",
                    name="retry_of",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="retries",
                        to="jobs.execution",
                    ),
                ),
                migrations.AlterField(
                    model_name="execution",
                    name="replay_of",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="replays",
                        to="jobs.execution",
                    ),
                ),
                migrations.AlterField(
                    model_name="jobretry",
                    name="failed_execution",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="retry_decision",
                        to="jobs.execution",
                    ),
                ),
                migrations.AlterField(
                    model_name="jobretry",
                    name="new_execution",
                    field=models.OneToOneField(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="retry_source",
                        to="jobs.execution",
                    ),
                ),
                migrations.AlterField(
                    model_name="deadletter",
                    name="execution",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="dead_letter",
                        to="jobs.execution",
                    ),
                ),
            ],
        ),
    ]
