"""Deployment files, checked offline: Kubernetes manifests and the systemd unit.

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_deploy.py

Kubernetes: kustomize (the engine inside `kubectl apply -k`; tests/system-tools.sh puts it in the
venv) renders the base and the example overlay; every rendered object is validated against the Kubernetes OpenAPI schemas
shipped in the `kubernetes-validate` package, strictly (unknown fields fail), for the oldest and
newest versions we target. Security is asserted explicitly below: checkov (3.3.30) passes the
rendered overlay offline in ~4 s, but installing it into this venv would downgrade packaging,
networkx and python-dateutil under torch and bentoml, so its checks that matter are spelled out
here instead (the manifests carry checkov skip annotations, with reasons, for the three accepted
findings).

systemd: `systemd-analyze verify` (Debian 12's systemd 252, installed by tests/system-tools.sh) on the unit inside
a throw-away root that holds the system's own units and a stand-in for the venv's bentoml, since
verify refuses an ExecStart that does not exist; and `systemd-analyze security --offline=true` for
the hardening score.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBE = REPO_ROOT / "deploy" / "kubernetes"
UNIT = REPO_ROOT / "deploy" / "systemd" / "sound-classifier.service"
K8S_VERSIONS = ["1.30.0", "1.37.0"]
LAYOUTS = {"base": KUBE / "base", "example": KUBE / "overlays" / "example"}
MEASURED_PEAK_RSS_GIB = 1117 / 1024  # bentoml serve + 2 workers after a hostile burst, see deploy/kubernetes/base/deployment.yaml
KUSTOMIZE = Path(sys.executable).parent / "kustomize"  # installed by tests/system-tools.sh
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}


def render(folder: Path) -> list[dict]:
    done = subprocess.run([str(KUSTOMIZE), "build", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(LAYOUTS[request.param])


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["kind"] for d in docs])
    return found[0]


def container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|)", q)
    assert m, q
    return int(m.group(1)) * QUANTITY[m.group(2)]


# --- Kubernetes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schemas(rendered, version):
    _, docs = rendered
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_the_validator_rejects_a_misspelt_field(rendered):
    _, docs = rendered
    deployment = yaml.safe_load(yaml.safe_dump(one(docs, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_pod_security_restricted_and_read_only(rendered):
    """What Pod Security "restricted" and checkov's pod checks require, asserted one by one."""
    _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod["volumes"])
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the read-only root filesystem leaves /tmp writable, and everything that writes points there
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp[0]["name"])
    env = {e["name"]: e["value"] for e in c["env"]}
    for var in ("BENTOML_HOME", "HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert env[var].startswith("/tmp"), var


def test_resources_follow_the_measurement(rendered):
    _, docs = rendered
    c = container(docs)
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert 0 < cpu(requests["cpu"]) <= cpu(limits["cpu"])
    assert MEASURED_PEAK_RSS_GIB * 2**30 <= memory(requests["memory"]) <= memory(limits["memory"])
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["SOUND_ENGINE_THREADS"]) == cpu(limits["cpu"]), "engine threads must match the CPU limit"


def test_ports_probes_and_wiring(rendered):
    from soundclassifier.config import Settings

    _, docs = rendered
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    bentofile = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    grpc_port = int(bentofile["docker"]["env"]["SOUND_GRPC_PORT"])
    assert ports == {"http": 3000, "grpc": grpc_port} and grpc_port == Settings().grpc_port
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (3000, "http"), "grpc": (grpc_port, "grpc")}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    liveness = c["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 30, "a dead worker must restart the pod in 30 s"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "startup must allow for model loading"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    for selecting in (selector, service["spec"]["selector"], one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                      one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert selecting.items() <= pod_labels.items(), selecting
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    allowed = {p["port"] for rule in one(docs, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"http", "grpc"}


def test_example_overlay_patches_replicas_image_and_namespace():
    base, example = render(LAYOUTS["base"]), render(LAYOUTS["example"])
    assert container(base)["image"] == "sound_classifier:latest"
    assert container(example)["image"] == "registry.example.com/sound/sound_classifier:0.1.0"
    assert one(base, "Deployment")["spec"]["replicas"] == 2
    assert one(example, "Deployment")["spec"]["replicas"] == 3
    assert one(example, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    namespace = one(example, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in example:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc["kind"]


# --- systemd --------------------------------------------------------------------------------------


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd keys repeat, which configparser does not allow)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_analyze_verify(tmp_path):
    settings = unit_settings()
    executable = settings["Service"]["ExecStart"][0].split()[0]
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    subprocess.run(["cp", "-a", "/usr/lib/systemd/system", str(root / "usr/lib/systemd/")], check=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(UNIT.read_text())
    stand_in = root / executable.lstrip("/")
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", UNIT.name],
                          capture_output=True, text=True, timeout=60)
    # verify only warns ("Unknown key ..., ignoring") for many mistakes: any output is a failure
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_systemd_hardening_exposure():
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    m = re.search(r"Overall exposure level for sound-classifier\.service: ([\d.]+) (\w+)", done.stdout)
    assert m, done.stdout[-2000:]
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)


def test_systemd_unit_key_settings():
    s = unit_settings()
    service = {k: v[-1] for k, v in s["Service"].items()}
    assert service["User"] == "sound-classifier" and service["Group"] == "sound-classifier"
    assert service["ExecStart"].endswith("/bentoml serve sound_classifier:latest --port 3000")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGINT" and 0 < int(service["TimeoutStopSec"]) <= 60
    env = dict(e.split("=", 1) for e in s["Service"]["Environment"])
    assert env["BENTOML_HOME"].startswith(f"/var/lib/{service['StateDirectory']}/")
    assert env["SOUND_GRPC_PORT"] == "50051"
    for flag in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "RestrictSUIDSGID"):
        assert service[flag] == "yes", flag
    assert service["ProtectSystem"] == "strict" and service["CapabilityBoundingSet"] == ""
    assert "MemoryDenyWriteExecute" not in service, "OpenVINO and oneDNN need JIT memory"
    assert s["Install"]["WantedBy"] == ["multi-user.target"]


def test_no_launcher_sets_what_the_service_sets_itself():
    """Keep-alive and the connection deadlines are settings of the service (SOUND_KEEP_ALIVE_S ...,
    serving/edge.py), the same however it is started: no launcher passes its own value."""
    launchers = ["Makefile", "deploy/Dockerfile.template", "deploy/systemd/sound-classifier.service",
                 "deploy/kubernetes/base/deployment.yaml", "testkit/server.py"]
    for name in launchers:
        assert "--timeout-keep-alive" not in (REPO_ROOT / name).read_text(), name
