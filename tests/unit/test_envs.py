"""The conda env file of the rules pins exactly what pyproject.toml pins (a file check: unit tier)."""

from __future__ import annotations

import tomllib

import yaml

from ..conftest import ROOT


def test_env_file_pins_match_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "circuitflow.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = sorted(p for p in pip_section if "==" in p)
    assert pinned == sorted(pyproject)
    assert "-e .." in pip_section
