"""The README's configuration table stays true: every variable settings.py reads is documented there."""

import re

from tests.conftest import ROOT


def test_every_environment_variable_read_by_settings_is_in_the_readme():
    settings_source = (ROOT / "scheduler_project" / "settings.py").read_text()
    readme = (ROOT / "README.md").read_text()
    read = set(re.findall(r'(?:env|knob)(?:\.\w+)?\(\s*"([A-Z][A-Z_0-9]+)"', settings_source))
    assert len(read) > 20  # the pattern still finds what settings.py reads
    missing = sorted(name for name in read if f"`{name}`" not in readme)
    assert missing == [], f"add these to README.md's configuration table: {missing}"
