"""The service images, as far as this machine can check them without a Docker engine: the one
Dockerfile's build steps are replayed for each declared service (its COPY sources into a fresh
context, its `uv sync` commands into a fresh venv, with the SERVICE build argument), and the
resulting venv migrates the service from a directory that holds no source, as the image's entry
point does."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .deploy_support import DEPLOY, REPO, SERVICES, run

pytestmark = pytest.mark.long(150)

DOCKERFILE = DEPLOY / "Dockerfile"


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_one_dockerfile_for_every_service() -> None:
    text = dockerfile()
    assert not list(REPO.glob("services/*/Dockerfile")), "one Dockerfile (deploy/Dockerfile), none per service"
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for name in SERVICES:
        assert not re.search(rf"\b{name}\b", instructions), f"the Dockerfile's instructions name {name}"
    assert len(re.findall(r"^FROM ", text, re.M)) == 2, "multi-stage: build + runtime"
    assert text.count("ARG SERVICE") == 2, "the build argument, in both stages"
    assert "uv sync --frozen --no-dev --no-install-workspace --package ${SERVICE}" in text
    assert "uv sync --frozen --no-dev --no-editable --package ${SERVICE}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M), "runs as the manifests' non-root uid"
    assert 'CMD ["serve"]' in text
    assert "KIZUNA_DATA_DIR=/tmp/" in text, "the only writable path is /tmp"
    # The dependency layer comes from the lock and the pyproject files only, found by pattern.
    dependency_layer = text.split("--no-install-workspace")[0]
    copies = re.findall(r"^COPY (.*)$", dependency_layer, re.M)
    assert copies == ["pyproject.toml uv.lock ./", "--parents libs/*/pyproject.toml services/*/pyproject.toml ./"]


def test_entry_point_runs_the_named_service(tmp_path: Path) -> None:
    """The image's ENTRYPOINT + CMD, run by a real shell: `python -m $KIZUNA_SERVICE serve`."""
    text = dockerfile()
    entry_line, cmd_line = re.search(r"^ENTRYPOINT (.*)$", text, re.M), re.search(r"^CMD (.*)$", text, re.M)
    assert entry_line and cmd_line, "the Dockerfile has an ENTRYPOINT and a CMD"
    entry = json.loads(entry_line.group(1))
    cmd = json.loads(cmd_line.group(1))
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "KIZUNA_SERVICE": next(iter(SERVICES))}
    result = run([*entry, *cmd], env=env)
    assert result.stdout.split() == ["-m", next(iter(SERVICES)), "serve"], result.stderr
    result = run([*entry, "migrate"], env=env)
    assert result.stdout.split() == ["-m", next(iter(SERVICES)), "migrate"], result.stderr


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/.venv", "**/.git", "**/node_modules", "**/__pycache__"):
        assert pattern in ignored


# The image's user: not root, and owning nothing but /tmp (the emptyDir).
IMAGE_UID = 10001


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A root-owned tree the image user can read but not write (pytest's tmp_path is root-only)."""
    if os.geteuid() != 0:
        pytest.fail("running the image's steps as its user (setpriv, chown) needs root", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="kizuna-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("service", SERVICES)
def test_image_build_steps_produce_a_runnable_service(service: str, tmp_path: Path, image_root: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv not found on PATH: `make install` installs it", pytrace=False)
    context, venv, workdir = tmp_path / "src", image_root / "venv", image_root / "app"
    context.mkdir()
    workdir.mkdir()
    build_stage = dockerfile().split("\nFROM ")[1].replace("${SERVICE}", service)
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_COMPILE_BYTECODE": "1",
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,
    }
    env.pop("VIRTUAL_ENV", None)
    steps = 0
    for line in re.sub(r"\\\n\s*", " ", build_stage).splitlines():
        line = line.strip()
        if line.startswith("COPY "):
            *sources, dest = shlex.split(line[5:])
            if sources[0] == "--parents":
                # Each match keeps its folders under the destination.
                for pattern in sources[1:]:
                    for match in sorted(glob.glob(pattern, root_dir=REPO)):
                        target = context / dest / match
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(REPO / match, target)
                continue
            for source in sources:
                src = REPO / source
                into_dir = dest.endswith("/") or dest == "."
                target = context / dest / src.name if into_dir and src.is_file() else context / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(
                        src,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "tests", ".venv", ".data"),
                    )
                else:
                    shutil.copy2(src, target)
        elif line.startswith("RUN ") and "uv sync" in line:
            command = line[line.index("uv sync") :]
            result = subprocess.run(
                [uv, *shlex.split(command)[1:]], cwd=context, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{command}:\n{result.stderr[-3000:]}"
            steps += 1
    assert steps == 2, "dependencies layer, then the service"

    python = venv / "bin" / "python"
    installed = run([python, "-c", f"import {service}, kizuna.kit; print({service}.__file__)"], cwd=workdir)
    assert installed.returncode == 0, installed.stderr
    assert str(venv) in installed.stdout, "installed into the venv, not from the source tree"
    # The declaration ships inside the package: tooling and the kit read it from the image.
    declared = run(
        [python, "-c", f"from kizuna.kit.declaration import of_package; print(of_package({service!r}).slot)"],
        cwd=workdir,
    )
    assert declared.returncode == 0, declared.stderr
    writable = image_root / "tmp"
    writable.mkdir()
    os.chown(writable, IMAGE_UID, IMAGE_UID)
    # As the image runs it: its user, its environment, nothing writable but the data dir.
    as_image_user = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    migrate = run(
        [*as_image_user, python, "-m", service, "migrate"],
        cwd=workdir,
        env={
            "PATH": os.environ["PATH"],
            "HOME": "/nonexistent",
            "NATS_URL": "nats://127.0.0.1:1",
            "KIZUNA_ISSUER": "http://127.0.0.1:1",
            "KIZUNA_DATA_DIR": str(writable / "kizuna"),
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert (writable / "kizuna" / f"{service}.db").exists()
