"""pyproject.toml: which TensorFlow and LiteRT each platform gets, the checked floors, the license.

pip and uv resolve a project for a foreign platform only partly (pip evaluates markers against the
machine it runs on), so the markers are evaluated here with `packaging`, the library pip itself
uses, for each platform's marker environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TENSORFLOWS = ("tensorflow", "tensorflow-cpu")

# The marker variables each platform's Python reports (sys.platform, platform.machine(), ...).
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "windows-amd64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                      "os_name": "nt"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
    # No TensorFlow >= 2.17 wheels at all; listed so a marker can't quietly send them tensorflow-cpu.
    "macos-x86_64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "windows-arm64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "ARM64",
                      "os_name": "nt"},
}

# What each platform must get: (TensorFlow distribution, whether LiteRT is installed). From
# `pip download --only-binary=:all: --platform ...` (see README "Install"): tensorflow-cpu has
# wheels only for Linux x86_64 and Windows x64; LiteRT 2.3 for the first four.
EXPECTED = {
    "linux-x86_64": ("tensorflow-cpu", True),
    "windows-amd64": ("tensorflow-cpu", True),
    "macos-arm64": ("tensorflow", True),
    "linux-aarch64": ("tensorflow", True),
    "macos-x86_64": ("tensorflow", False),
    "windows-arm64": ("tensorflow", False),
}


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def requirements(extra: str | None = None) -> list[Requirement]:
    table = project()["project"]
    lines = table["dependencies"] if extra is None else table["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def environment(platform: str, python: str = "3.11") -> dict:
    env = default_environment()
    env.update(PLATFORMS[platform], python_version=python, python_full_version=f"{python}.0", extra="")
    return env


def installed_on(platform: str, reqs: list[Requirement], python: str = "3.11") -> dict[str, Requirement]:
    """{name: requirement} of those in `reqs` that pip would install on `platform`."""
    env = environment(platform, python)
    return {r.name: r for r in reqs if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("platform", sorted(EXPECTED))
@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_each_platform_gets_one_tensorflow_and_litert_where_it_has_wheels(platform, python):
    tensorflow, litert = EXPECTED[platform]
    got = installed_on(platform, requirements(), python)
    assert [name for name in TENSORFLOWS if name in got] == [tensorflow]
    assert ("ai-edge-litert" in got) == litert
    # Everything else is for every platform.
    assert {"keras", "numpy", "pillow", "typer", "rich", "matplotlib"} <= set(got)


def test_every_os_and_machine_gets_exactly_one_tensorflow():
    """PEP 508 has no `not`: the tensorflow marker spells out the complement of tensorflow-cpu's."""
    reqs = requirements()
    for sys_platform in ("linux", "win32", "darwin", "freebsd14", "cygwin"):
        for machine in ("x86_64", "AMD64", "amd64", "arm64", "aarch64", "ARM64", "ppc64le", "s390x", "i686"):
            env = {**environment("linux-x86_64"), "sys_platform": sys_platform, "platform_machine": machine}
            chosen = [r.name for r in reqs if r.name in TENSORFLOWS and r.marker.evaluate(env)]
            assert len(chosen) == 1, (sys_platform, machine, chosen)


def test_the_running_machine_is_classified_like_its_platform():
    """This machine's own marker environment, not a hand-written one, picks what EXPECTED says."""
    import platform
    import sys

    key = {("linux", "x86_64"): "linux-x86_64", ("linux", "aarch64"): "linux-aarch64",
           ("darwin", "arm64"): "macos-arm64", ("win32", "AMD64"): "windows-amd64"}.get(
        (sys.platform, platform.machine()))
    if key is None:
        pytest.skip(f"no expectation for {sys.platform}/{platform.machine()}")
    reqs = requirements()
    got = {r.name for r in reqs if r.marker is None or r.marker.evaluate()}
    tensorflow, litert = EXPECTED[key]
    assert tensorflow in got and ("ai-edge-litert" in got) == litert


@pytest.mark.parametrize(("name", "too_old", "first_good"), [
    ("keras", "3.7.0", "3.8.0"),  # keras.layers.RandomShear appears in 3.8.0
    ("tensorflow", "2.16.2", "2.17.0"),  # 2.16's TFLiteConverter aborts on Keras 3 models
    ("tensorflow-cpu", "2.16.2", "2.17.0"),
    ("ai-edge-litert", "1.1.0", "1.1.1"),  # 1.0.x: built for NumPy 1; 1.1.0: num_threads crashes
])
def test_checked_version_floors(name, too_old, first_good):
    (req,) = [r for r in requirements() if r.name == name]
    assert too_old not in req.specifier and first_good in req.specifier


def test_the_litert_extra_installs_nothing_the_core_does_not():
    core = {str(r) for r in requirements() if r.name == "ai-edge-litert"}
    assert {str(r) for r in requirements("litert")} == core
    for platform in PLATFORMS:
        assert set(installed_on(platform, requirements("litert"))) <= set(installed_on(platform, requirements()))


@pytest.mark.parametrize(("name", "too_old", "first_good"), [
    ("tf2onnx", "1.16.1", "1.17.0"),  # 1.16.1 pins protobuf~=3.20, which TensorFlow 2.21 excludes
    ("onnxruntime", "1.18.1", "1.19.0"),  # 1.18.1 fails to import under NumPy 2
    ("onnx", "1.16.1", "1.16.2"),
])
def test_the_onnx_extra_floors_and_make_test_installs_it(name, too_old, first_good):
    (req,) = [r for r in requirements("onnx") if r.name == name]
    assert too_old not in req.specifier and first_good in req.specifier
    # `make test` installs [dev]: with the same packages, the ONNX tests run instead of skipping.
    assert str(req) in {str(r) for r in requirements("dev")}


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    """The TOML-table form prints a deprecation warning at every install; setuptools 77 reads this one."""
    data = project()
    assert data["project"]["license"] == "Apache-2.0"
    (setuptools,) = [Requirement(r) for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert "76.1" not in setuptools.specifier and "77.0" in setuptools.specifier
