"""The wheel, as a user installs it: built from a copy of the repo, installed into a fresh venv outside it, run
from another folder. Guards what an editable checkout hides (issue 20): recipes and prompts not shipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("dkdm", "pipelines", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a clean copy: setuptools' build/ in the checkout keeps deleted modules and would hide a gap."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True, timeout=120)
    (whl,) = out.glob("dkdm-*.whl")
    return whl


def test_wheel_ships_every_package_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(p.relative_to(REPO)) for p in sorted((REPO / "dkdm").rglob("*"))
               if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(REPO)) not in names]
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages / package-data): {missing}"
    shipped = {p.name for p in (REPO / "pipelines").iterdir() if p.suffix in (".toml", ".txt")}
    assert shipped and {n for n in shipped if f"dkdm/pipelines/{n}" not in names} == set()


def test_installed_wheel_resolves_recipes_and_runs_help(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies come from the shared venv (a path line, so its editable dkdm finder is not loaded)
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, timeout=120)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    probe = ("import dkdm, pathlib; from dkdm.config import load_recipe; "
             "r = load_recipe('digits'); t = load_recipe('digits-t2i'); "
             "assert pathlib.Path(t.generate.prompts).is_file(), t.generate.prompts; "
             "print(dkdm.__file__); print(r.generate.trajectories); print(len(open(t.generate.prompts).read().split(chr(10))))")
    res = subprocess.run([str(py), "-c", probe], cwd=away, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    where, trajectories, _ = res.stdout.split()
    assert Path(where).is_relative_to(site) and int(trajectories) > 0
    res = subprocess.run([str(venv / "bin" / "dkdm"), "demo", "--help"], cwd=away, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--teacher" in res.stdout, res.stderr
    res = subprocess.run([str(venv / "bin" / "dkdm"), "generate", "--recipe", "no-such-recipe"], cwd=away, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "digits-t2i" in res.stderr and "Traceback" not in res.stderr


def test_lock_pins_every_declared_dependency():
    """requirements.lock is regenerated when pyproject changes (scripts/lock.sh): each dependency of the core
    and of every extra has exactly one pin, torch the CPU 2.13.0 the README promises."""
    import re
    import tomllib

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
                for req in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]}
    declared.discard("dkdm")
    pins = [line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines()
            if line and not line.startswith((" ", "#"))]
    assert all(len(p) == 2 for p in pins), [p for p in pins if len(p) != 2]
    names = [norm(n) for n, _ in pins]
    assert len(names) == len(set(names)) and declared <= set(names), declared - set(names)
    assert dict(pins)["torch"] == "2.13.0"
