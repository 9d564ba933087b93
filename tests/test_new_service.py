"""`make new-service`: a sixth service scaffolded into a throwaway copy of this repository, as a new
developer would make it, touches at most three files outside its own folders and none of another
service; its own tests pass against the real points and fintech services (a purchase with points
+ card that earns through the common contract); the manifests render with it included, its
network flows derived from its declaration."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "bookstore"
# The new service's own folders: its code, its contract, and the code generated from that contract.
OWN = (f"services/{NAME}/", f"proto/kizuna/{NAME}/", f"libs/contracts/src/kizuna/{NAME}/")

pytestmark = [pytest.mark.long(75), pytest.mark.slow, pytest.mark.timeout(900)]


def _run(
    argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; on a timeout the whole group is killed."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{' '.join(argv)} did not finish in {timeout:.0f}s:\n{out[-4000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, "")


def _uv() -> list[str]:
    """uv as the Makefile finds it: on PATH, else the uv wheel of the system's Python."""
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def _git(copy: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.email=dev@kizuna.example", "-c", "user.name=Kizuna", *args],
        cwd=copy,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This repository's files (tracked and new, not ignored) in a fresh git repository."""
    target = tmp_path_factory.mktemp("workspace") / "kizuna"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = ROOT / raw.decode()
        if source.is_file():
            (target / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / raw.decode())
    _git(target, "init", "-q")
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "before the new service")
    yield target
    shutil.rmtree(target, ignore_errors=True)


@pytest.fixture(scope="module")
def scaffolded(copy: Path) -> Path:
    """What `make new-service name=bookstore` does: the scaffold, then uv bringing the lock up to date."""
    made = _run([sys.executable, "-m", "kizuna.kit.scaffold", NAME, "--label", "Book Store"], copy, 120)
    assert made.returncode == 0, made.stdout
    # `make new-service` runs `uv sync --all-packages`; locking is the part that changes files. From
    # uv's cache when it holds every package's metadata; a fresh machine's cache may lack what the
    # lock's other Python versions need, which uv then reads from the index, as `make` does.
    locked = _run([*_uv(), "lock", "--offline"], copy, 120)
    if locked.returncode != 0 and "network was disabled" in locked.stdout:
        locked = _run([*_uv(), "lock"], copy, 300)
    assert locked.returncode == 0, locked.stdout
    return copy


def test_the_makefile_target_runs_the_scaffold() -> None:
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "new-service", f"name={NAME}", "label=Book Store"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert f'-m kizuna.kit.scaffold "{NAME}" --label "Book Store"' in dry.stdout, dry.stdout
    refused = subprocess.run(
        ["make", "--no-print-directory", "new-service"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "usage: make new-service name=<service>" in refused.stderr


def test_at_most_three_files_change_outside_its_folders(scaffolded: Path) -> None:
    changed = [line[3:] for line in _git(scaffolded, "status", "--porcelain", "-uall").splitlines()]
    assert any(path.startswith(OWN[0]) for path in changed), changed
    outside = sorted(path for path in changed if not path.startswith(OWN))
    assert len(outside) <= 3, outside
    others = [p for p in outside if p.startswith(("services/", "proto/", "libs/contracts/"))]
    assert others == [], f"the new service changed another service or contract: {others}"


def test_a_taken_or_bad_name_is_refused(scaffolded: Path) -> None:
    for name, why in ((NAME, "exists already"), ("points", "exists already"), ("Bad-Name", "cannot name a service")):
        result = _run([sys.executable, "-m", "kizuna.kit.scaffold", name], scaffolded, 60)
        assert result.returncode == 2 and why in result.stdout, (name, result.stdout)


def test_its_own_tests_pass_against_real_points_and_fintech(scaffolded: Path) -> None:
    env = {
        **os.environ,
        # The new package and its generated contract, importable without reinstalling the workspace.
        "PYTHONPATH": os.pathsep.join(
            [str(scaffolded / "services" / NAME / "src"), str(scaffolded / "libs" / "contracts" / "src")]
        ),
    }
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    # Its own tests, and the workspace's check that every page it shows speaks Japanese and English.
    result = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"services/{NAME}",
            "tests/ui/test_translations.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
        ],
        scaffolded,
        600,
        env,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert " failed" not in result.stdout and " error" not in result.stdout, result.stdout[-3000:]
    assert f"services/{NAME}/src/{NAME}/templates" in _collected(scaffolded, env), "its templates were not checked"


def test_it_passes_make_typecheck(scaffolded: Path) -> None:
    """CI's `make typecheck` (mypy strict on the kit and every service) finds the new service by
    itself and finds nothing wrong with what the scaffold wrote."""
    # -o install: the copy shares this workspace's environment rather than syncing its own.
    result = _run(
        ["make", "--no-print-directory", "-o", "install", "typecheck", f"PY={sys.executable}"], scaffolded, 300
    )
    assert f"-p {NAME}" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0, result.stdout[-6000:]


def _collected(copy: Path, env: dict[str, str]) -> str:
    listed = _run(
        [sys.executable, "-m", "pytest", "tests/ui/test_translations.py", "--collect-only", "-q", "-p", "no:xdist"],
        copy,
        120,
        env,
    )
    return listed.stdout


def test_manifests_render_with_it_and_its_flows_are_derived(scaffolded: Path, tmp_path: Path) -> None:
    out = tmp_path / "generated"
    rendered = _run([sys.executable, "deploy/render.py", "--out", str(out)], scaffolded, 120)
    assert rendered.returncode == 0, rendered.stdout
    base = [d for d in yaml.safe_load_all((out / "base" / f"{NAME}.yaml").read_text()) if d]
    deployment = next(d for d in base if d["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == NAME
    policies = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((out / "network-policies" / "network-policies.yaml").read_text())
        if d
    }

    def grpc_callers(service: str, port: int) -> set[str]:
        callers: set[str] = set()
        for rule in policies[f"{service}-ingress"]["spec"]["ingress"]:
            if any(p["port"] == port for p in rule.get("ports", [])):
                for peer in rule.get("from", []):
                    name = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                    if name:
                        callers.add(name)
        return callers

    # bookstore declares it calls points and fintech: both now admit it on their gRPC port, and
    # nothing admits it anywhere else (travel and shop are called by nobody new).
    assert NAME in grpc_callers("points", 50051)
    assert NAME in grpc_callers("fintech", 50054)
    assert NAME not in grpc_callers("travel", 50053)
    assert f"{NAME}-ingress" in policies and f"{NAME}-egress" in policies
