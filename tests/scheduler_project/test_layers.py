"""The shape of the code: imports run one way, no import hides in a function, one writer of the status."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ["worker", "monitoring", "jobs", "nodes", "accounts", "scheduler_project"]
STATE_MODULE = Path("jobs/services/executions.py")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _sources() -> list[Path]:
    return sorted(
        path.relative_to(ROOT)
        for app in APPS
        for path in (ROOT / app).rglob("*.py")
        if "migrations" not in path.parts
    )


# --- imports run one way --------------------------------------------------------------------------


def test_import_contracts_hold():
    result = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_catch_nodes_importing_jobs(tmp_path):
    """The same contracts on a copy of the apps with one import against the direction: lint-imports fails."""
    for app in APPS:
        shutil.copytree(
            ROOT / app, tmp_path / app, ignore=shutil.ignore_patterns("__pycache__", "migrations")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "nodes" / "sneaky.py").write_text("from jobs.models import Execution  # noqa\n")
    result = subprocess.run(
        [str(LINT_IMPORTS)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "nodes.sneaky -> jobs.models" in result.stdout


# --- no imports hidden in functions -----------------------------------------------------------------


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Imports of the project's own modules inside functions, except in an AppConfig's ready()."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or fn.name == "ready":
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith(".") or name.split(".")[0] in APPS:
                    found.append((node.lineno, name))
    return found


def test_no_project_import_is_hidden_inside_a_function():
    # App configs (apps.py) load before any model may be imported, so their hooks import lazily, as Django
    # documents; nothing else does.
    hidden = [
        f"{path}:{line}: {name}"
        for path in _sources()
        if path.name != "apps.py"
        for line, name in _function_imports(ast.parse((ROOT / path).read_text()))
    ]
    assert hidden == []


def test_the_hidden_import_check_finds_one():
    code = (
        "def f():\n    from jobs.models import Job\n    import json\n\n"
        "class A:\n    def ready(self):\n        from . import x\n"
    )
    assert _function_imports(ast.parse(code)) == [(2, "jobs.models")]


# --- one writer of Execution.status -----------------------------------------------------------------

WRITE_CALLS = {"update", "create", "bulk_create", "bulk_update", "get_or_create", "update_or_create"}


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that write Execution rows' status (ORM calls on Execution, or SQL on jobs_execution)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            on_execution = receiver.startswith("Execution.") or "Execution.objects" in receiver
            if node.func.attr in WRITE_CALLS and on_execution:
                keywords = {kw.arg for kw in node.keywords}
                if node.func.attr.startswith("bulk") or node.func.attr == "create" or "status" in keywords:
                    lines.append(node.lineno)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            sql = " ".join(node.value.split()).upper()
            if "UPDATE JOBS_EXECUTION" in sql or "INSERT INTO JOBS_EXECUTION" in sql:
                lines.append(node.lineno)
    return lines


def test_every_execution_status_write_is_in_the_state_module():
    writes = {
        str(path): lines
        for path in _sources()
        if path != STATE_MODULE and (lines := _status_writes(ast.parse((ROOT / path).read_text())))
    }
    assert writes == {}
    assert _status_writes(ast.parse((ROOT / STATE_MODULE).read_text()))  # and it is where they are


@pytest.mark.parametrize(
    "code",
    [
        "Execution.objects.filter(pk=1).update(status='lost')",
        "Execution.objects.create(job=j, scheduled_for=t)",
        "cursor.execute('UPDATE jobs_execution SET status = %s', ['x'])",
        "cursor.execute('''INSERT INTO\n jobs_execution (job_id) VALUES (1)''')",
    ],
)
def test_the_status_write_check_finds_one(code):
    assert _status_writes(ast.parse(textwrap.dedent(code))) == [1]


def test_the_status_write_check_leaves_other_writes_alone():
    code = (
        "Execution.objects.filter(pk=1).update(output='x')\nJob.objects.filter(pk=1).update(status='paused')"
    )
    assert _status_writes(ast.parse(code)) == []
