"""checkov finds nothing in the rendered overlays but the failures deploy/checkov-skips.yaml
lists, each with its reason; and every listed skip still matches a failure."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_support import DEPLOY, OVERLAYS, REPO, SERVICES, Rendered, run, tool

pytestmark = pytest.mark.long(70)

SKIPS_FILE = DEPLOY / "checkov-skips.yaml"


def skips() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load(SKIPS_FILE.read_text())["skips"]
    for entry in entries:
        assert set(entry) == {"check", "overlays", "resources", "reason"}, entry
        assert len(entry["reason"].split()) >= 10, f"{entry['check']}: write the reason out"
        assert set(entry["overlays"]) <= set(OVERLAYS), entry
        entry["resources"] = [
            pattern.replace("{service}", name) if "{service}" in pattern else pattern
            for pattern in entry["resources"]
            for name in (SERVICES if "{service}" in pattern else [None])
        ]
    return entries


def pinned_version() -> str:
    match = re.search(r"^CHECKOV_VERSION \?= (\S+)$", (REPO / "mk" / "deploy.mk").read_text(), re.M)
    assert match, "mk/deploy.mk pins CHECKOV_VERSION"
    return match.group(1)


@pytest.fixture(scope="module")
def checkov() -> Path:
    checkov = tool("checkov")
    # The uv tool receipt names the installed version (faster than `checkov --version`).
    receipt = REPO / ".tools" / "uv" / "checkov" / "uv-receipt.toml"
    found = re.search(r'specifier = "==([^"]+)"', receipt.read_text()) if receipt.exists() else None
    version = found.group(1) if found else run([checkov, "--version"]).stdout.strip()
    if version != pinned_version():
        pytest.fail(f"checkov {version} installed, {pinned_version()} pinned: run `make deploy-tools`", pytrace=False)
    return checkov


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes_but_for_listed_skips(
    rendered: dict[str, Rendered], checkov: Path, tmp_path: Path, overlay: str
) -> None:
    (tmp_path / "rendered.yaml").write_text(rendered[overlay].text)
    result = run(
        [checkov, "--framework", "kubernetes", "--skip-download", "--quiet", "-o", "json", "-d", tmp_path], timeout=300
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= len(rendered[overlay].objects) - 5
    failed = {(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]}

    entries = [s for s in skips() if overlay in s["overlays"]]

    def skipped(check: str, resource: str) -> bool:
        return any(
            s["check"] == check and any(fnmatch.fnmatchcase(resource, p) for p in s["resources"]) for s in entries
        )

    unexpected = sorted(f for f in failed if not skipped(*f))
    assert not unexpected, (
        f"checkov fails on {overlay}: {unexpected}; fix the manifests, or add the check to "
        f"{SKIPS_FILE.relative_to(REPO)} with a reason"
    )
    unused = [s["check"] for s in entries if not any(c == s["check"] for c, _ in failed)]
    assert not unused, f"skips no longer needed on {overlay}: {unused}; remove them"
