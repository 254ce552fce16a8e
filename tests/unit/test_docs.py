"""The documentation: the generated config reference is current, the README stays short, and
every relative link in README.md and docs/*.md points at an existing file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current():
    generator = load_generator()
    current = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert current == generator.render(), "docs/config-reference.md is stale: run python tools/config_reference.py"


def test_config_reference_check_flags_a_stale_file(tmp_path, monkeypatch, capsys):
    generator = load_generator()
    stale = tmp_path / "config-reference.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    assert generator.main(["--check"]) == 1
    assert "config-reference.md" in capsys.readouterr().err
    stale.write_text(generator.render(), encoding="utf-8")
    assert generator.main(["--check"]) == 0


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def _outside_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc):
    missing = []
    for target in LINK.findall(_outside_code(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URL, mailto:, or an anchor in the same file
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def test_the_vllm_judge_script_parses_and_asks_the_profiles_gpu_partition():
    """profiles/slurm/vllm-judge.sbatch (docs/judge.md's recipe) is valid bash, and its #SBATCH
    partition and account are the ones profiles/slurm/config.yaml gives the GPU rules."""
    import subprocess

    import yaml

    script = ROOT / "profiles/slurm/vllm-judge.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    directives = dict(line.split()[1].lstrip("-").split("=", 1) for line in script.read_text().splitlines()
                      if line.startswith("#SBATCH") and "=" in line.split()[1])
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert directives["partition"] == profile["set-resources"]["train_transcoders"]["slurm_partition"]
    assert directives["account"] == profile["default-resources"]["slurm_account"]
    assert directives["gpus"] == "1" and "profiles/slurm/vllm-judge.sbatch" in (ROOT / "docs/judge.md").read_text()
