"""The front door: pyproject.toml, environment.yml and the Makefile agree on dependencies and pins."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def pyproject_cpu_requirements() -> dict[str, str]:
    """What the CPU environment installs: the base dependencies, overridden by the exact `cpu` pins,
    plus every other extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = dict(split(r) for r in project["dependencies"])
    extras = project["optional-dependencies"]
    reqs.update(split(r) for r in extras["cpu"])
    for name, group in extras.items():
        if name != "cpu":
            for r in group:
                key, spec = split(r)
                assert key not in reqs or reqs[key] == spec, f"{key} pinned differently in two places"
                reqs[key] = spec
    return reqs


def environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(split(r) for r in pip)


def test_pyproject_and_environment_name_the_same_dependencies_and_pins():
    ours, conda = pyproject_cpu_requirements(), environment_requirements()
    assert set(ours) == set(conda), f"only in pyproject: {set(ours) - set(conda)}; only in environment.yml: " \
                                    f"{set(conda) - set(ours)}"
    for name in ours:
        assert ours[name] == conda[name], f"{name}: pyproject says {ours[name]!r}, environment.yml {conda[name]!r}"


def test_cpu_environment_pins_torch_and_triton_exactly():
    ours = pyproject_cpu_requirements()
    assert ours["torch"] == "==2.13.0"
    assert ours["triton"].startswith("==")


def test_makefile_default_specs_come_from_the_cpu_pins():
    def make_var(name):
        out = subprocess.run(["make", "-s", "--no-print-directory", f"print-{name}"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    ours = pyproject_cpu_requirements()
    assert make_var("TORCH_SPEC") == "torch" + ours["torch"]
    assert make_var("TRITON_SPEC") == "triton" + ours["triton"]


def test_system_deps_asks_for_a_package_when_its_command_is_missing():
    """npm is wanted as a command, not as Debian's package (a Node.js from elsewhere brings its own npm)."""
    assert "npm:npm" in subprocess.run(["make", "-s", "--no-print-directory", "print-APT_COMMANDS"], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout.split()
    # as an unprivileged user, so that nothing is installed: the missing command's package is named
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.getuid() == 0 else []
    out = subprocess.run([*as_nobody, "make", "-s", "--no-print-directory", "system-deps", "APT_PACKAGES=",
                          "APT_COMMANDS=no-such-command-here:some-package npm:never-asked-for"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "missing Debian packages: some-package" in out.stdout + out.stderr
    assert "never-asked-for" not in out.stdout + out.stderr


def test_installed_versions_satisfy_the_pins():
    import torch
    import triton

    assert torch.__version__.split("+")[0] == "2.13.0" or "+cu" in torch.__version__  # GPU users bring their own
    from packaging.version import Version

    assert Version(triton.__version__) >= Version("3.6")


def test_kernels_are_importable_only_inside_the_package():
    assert (ROOT / "attn_course" / "kernels").resolve() == (ROOT / "kernels").resolve()
    assert "kernels" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
