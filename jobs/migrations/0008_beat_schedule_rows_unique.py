"""One django-celery-beat schedule row per value: merge the equal Clocked / Interval / Crontab rows that
concurrent job creations inserted (their PeriodicTasks move to the oldest), then make them unique, so that
jobs.schedules can insert-or-fetch with ON CONFLICT (issue 10).

Solar schedules are not ours (jobs never use them) and are left alone."""

from django.db import migrations

TASKS = "django_celery_beat_periodictask"
# (table, PeriodicTask column, the columns whose values make a row, unique index)
SCHEDULES = [
    ("django_celery_beat_clockedschedule", "clocked_id", "clocked_time", "jobs_beat_clocked_unique"),
    ("django_celery_beat_intervalschedule", "interval_id", "every, period", "jobs_beat_interval_unique"),
    (
        "django_celery_beat_crontabschedule",
        "crontab_id",
        # "timezone" is a varchar holding the zone name: rows are equal when their names are.
        'minute, hour, day_of_week, day_of_month, month_of_year, "timezone"',
        "jobs_beat_crontab_unique",
    ),
]

# No insert may add an equal row between the repair and the index (reads go on).
LOCK = "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE".format(", ".join(table for table, *_ in SCHEDULES))
# The repair queued the deferred checks of PeriodicTask's foreign keys, and CREATE INDEX refuses a table
# with pending trigger events: run them now.
CHECK_NOW = "SET CONSTRAINTS ALL IMMEDIATE"


def repair(table: str, fk: str, columns: str) -> list[str]:
    """Point the PeriodicTasks of each equal group at its lowest id, then delete the group's other rows."""
    keep = f"SELECT id, min(id) OVER (PARTITION BY {columns}) AS keep_id FROM {table}"
    return [
        f"UPDATE {TASKS} AS task SET {fk} = dup.keep_id FROM ({keep}) AS dup"
        f" WHERE task.{fk} = dup.id AND dup.id <> dup.keep_id",
        f"DELETE FROM {table} AS sched USING ({keep}) AS dup"
        " WHERE sched.id = dup.id AND dup.id <> dup.keep_id",
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_worker_incarnation"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunSQL(LOCK, reverse_sql=migrations.RunSQL.noop),
        *(
            migrations.RunSQL(repair(table, fk, columns), reverse_sql=migrations.RunSQL.noop)
            for table, fk, columns, _ in SCHEDULES
        ),
        migrations.RunSQL(CHECK_NOW, reverse_sql=migrations.RunSQL.noop),
        *(
            migrations.RunSQL(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} ({columns})",
                reverse_sql=f"DROP INDEX IF EXISTS {index}",
            )
            for table, _, columns, index in SCHEDULES
        ),
    ]
