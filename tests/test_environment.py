import re
from importlib import metadata

import yaml

from conftest import ROOT


def pins(lines):
    return dict(re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)\s*$", x).groups() for x in lines if "==" in x)


def test_environment_yml_pins_the_same_versions_as_requirements():
    reqs = pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip) == reqs
    assert "-e ." in pip


def test_installed_versions_are_the_pinned_ones():
    reqs = pins((ROOT / "requirements.txt").read_text().splitlines())
    wrong = {name: (want, metadata.version(name)) for name, want in reqs.items() if metadata.version(name) != want}
    assert not wrong, f"installed versions differ from requirements.txt (wanted, got): {wrong}"
