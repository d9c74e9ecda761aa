"""Shared fixtures: where the meshctl binary is, and a scratch folder per test."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def meshctl() -> pathlib.Path:
    """The meshctl binary scripts/test built (override with $MESHCTL)."""
    path = pathlib.Path(os.environ.get("MESHCTL", REPO / "target" / "debug" / "meshctl"))
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it with `cargo build --bin meshctl`")
    return path


@pytest.fixture
def run(meshctl, tmp_path):
    """Runs meshctl in the test's scratch folder and returns the completed process."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(meshctl), *args], cwd=tmp_path, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            pytest.fail(f"meshctl {' '.join(args)} failed: {done.stderr}")
        return done

    return run
