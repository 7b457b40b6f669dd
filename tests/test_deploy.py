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

systemd: `systemd-analyze verify` (Debian 12's systemd 252, installed by tests/system-tools.sh) on each unit
inside a throw-away root that holds the system's own units and a stand-in for its program (the
venv's bentoml, podman), since verify refuses an ExecStart that does not exist; and `systemd-analyze
security --offline=true` for the hardening score of the venv unit.

Knative (deploy/kubernetes/knative, scale to zero): no schema of Knative's CRDs ships offline, so its
revision template is checked as what Knative turns it into, a Pod, against the same Kubernetes
schemas, plus the fields Knative accepts in a container and its autoscaling annotations.

The image: `make image` builds what BentoML renders from bentofile.yaml and deploy/Dockerfile.template;
that Dockerfile is rendered here the same way (BentoML's own generator, offline), and every deployment
file must agree with it: image name, ports, user, the writable /tmp. tests/test_image.py checks the
built image itself.
"""

from __future__ import annotations

import functools
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
CONTAINER_UNIT = REPO_ROOT / "deploy" / "systemd" / "sound-classifier-container.service"
KNATIVE = KUBE / "knative"
IMAGE = "sound_classifier:latest"  # what `make image` tags (deploy/image/build.sh: <service name>:latest)
K8S_VERSIONS = ["1.30.0", "1.37.0"]
LAYOUTS = {"base": KUBE / "base", "example": KUBE / "overlays" / "example"}
MEASURED_PEAK_RSS_GIB = 1117 / 1024  # bentoml serve + 2 workers after a hostile burst, see deploy/kubernetes/base/deployment.yaml
KUSTOMIZE = Path(sys.executable).parent / "kustomize"  # installed by tests/system-tools.sh
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}


@functools.cache
def kustomize_build(folder: Path) -> str:
    # Once per folder and session: a build takes 1-2 s, and a dozen tests read the same three folders.
    done = subprocess.run([str(KUSTOMIZE), "build", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(folder: Path) -> list[dict]:
    # Parsed on every call: each test gets its own objects, so none sees another's edits.
    return [doc for doc in yaml.safe_load_all(kustomize_build(folder)) if doc]


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


def unit_settings(unit: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd keys repeat, which configparser does not allow);
    continuation lines (ending in a backslash) joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in unit.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(" ".join(value.split()))
    return sections


@pytest.mark.parametrize("unit", [UNIT, CONTAINER_UNIT], ids=lambda u: u.name)
def test_systemd_analyze_verify(tmp_path, unit):
    settings = unit_settings(unit)
    executables = {line.lstrip("-").split()[0] for key in ("ExecStartPre", "ExecStart", "ExecStop")
                   for line in settings["Service"].get(key, [])}
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    subprocess.run(["cp", "-a", "/usr/lib/systemd/system", str(root / "usr/lib/systemd/")], check=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / unit.name).write_text(unit.read_text())
    for executable in executables:
        stand_in = root / executable.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", unit.name],
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


def test_container_unit_runs_the_image_as_kubernetes_does():
    service = unit_settings(CONTAINER_UNIT)["Service"]
    run = service["ExecStart"][0].split()
    assert run[:2] == ["/usr/bin/podman", "run"] and run[-1] == IMAGE
    assert int(service["TimeoutStopSec"][0]) > int(service["ExecStop"][0].split("--time ")[1].split()[0])


# --- the image and the files that deploy it ----------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> dict:
    """The Dockerfile `make image` builds, as BentoML renders it from bentofile.yaml's docker options
    and deploy/Dockerfile.template: its exposed ports, user (name and uid), environment."""
    import os

    from bentoml._internal.bento.build_config import CondaOptions, DockerOptions
    from bentoml._internal.container.generate import generate_containerfile

    docker = DockerOptions(**yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())["docker"]).with_defaults()
    here = os.getcwd()
    os.chdir(REPO_ROOT)  # BentoML reads a template only below its working directory
    try:
        text = generate_containerfile(docker, ".", conda=CondaOptions(), bento_fs=REPO_ROOT, enable_buildkit=False)
    finally:
        os.chdir(here)
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    env = {k: args.get(v[1:], v) if v.startswith("$") else v for k, v in re.findall(r"^ENV (\w+)=(\S*)$", text, re.M)}
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert "apt-get" not in text and "build-essential" not in text, "the lean template installs no system packages"
    return {"ports": {int(p) for p in re.findall(r"^EXPOSE (\d+)$", text, re.M)}, "user": users[-1],
            "uid": int(args["BENTO_USER_UID"]), "gid": int(args["BENTO_USER_GID"]), "user_name": args["BENTO_USER"],
            "env": env}


def tmp_env(container_spec: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_spec["env"] if e["value"].startswith("/tmp")}


def test_the_image_runs_as_the_user_the_deployment_files_name(dockerfile):
    assert dockerfile["user"] == dockerfile["user_name"] != "root"
    pod = one(render(LAYOUTS["base"]), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (dockerfile["uid"], dockerfile["gid"])
    knative = knative_container()
    assert (knative["securityContext"]["runAsUser"], knative["securityContext"]["runAsGroup"]) == (dockerfile["uid"], dockerfile["gid"])
    run = unit_settings(CONTAINER_UNIT)["Service"]["ExecStart"][0].split()
    assert run[run.index("--user") + 1] == f"{dockerfile['uid']}:{dockerfile['gid']}"


def test_the_deployment_files_name_the_image_and_its_ports(dockerfile):
    assert container(render(LAYOUTS["base"]))["image"] == IMAGE == knative_container()["image"]
    assert unit_settings(CONTAINER_UNIT)["Service"]["ExecStart"][0].split()[-1] == IMAGE
    ports = {p["containerPort"] for p in container(render(LAYOUTS["base"]))["ports"]}
    assert ports <= dockerfile["ports"] and int(dockerfile["env"]["SOUND_GRPC_PORT"]) in ports
    assert {p["containerPort"] for p in knative_container()["ports"]} == {3000} <= dockerfile["ports"]
    run = unit_settings(CONTAINER_UNIT)["Service"]["ExecStart"][0].split()
    published = {int(run[i + 1].split(":")[1]) for i, word in enumerate(run) if word == "--publish"}
    assert published == ports


def test_tmp_is_the_one_writable_place_everywhere(dockerfile):
    """The image points every writer at /tmp; each deployment mounts the root read-only and /tmp writable."""
    image_tmp = {k: v for k, v in dockerfile["env"].items() if v.startswith("/tmp")}
    assert {"BENTOML_HOME", "HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"} <= image_tmp.keys()
    for spec, volumes in ((container(render(LAYOUTS["base"])), one(render(LAYOUTS["base"]), "Deployment")["spec"]["template"]["spec"]["volumes"]),
                          (knative_container(), knative_revision()["spec"]["volumes"])):
        assert tmp_env(spec) == image_tmp, "the manifest repeats the image's own /tmp settings, unchanged"
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        tmp = [m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in next(v for v in volumes if v["name"] == tmp[0]["name"])
    run = unit_settings(CONTAINER_UNIT)["Service"]["ExecStart"][0].split()
    assert "--read-only" in run and run[run.index("--tmpfs") + 1].startswith("/tmp:rw")


# --- Knative: scale to zero ----------------------------------------------------------------------

# The fields Knative Serving keeps in a revision's container and pod spec without feature flags
# (knative/serving pkg/apis/serving/fieldmask.go: ContainerMask, PodSpecMask); it drops or refuses
# any other (lifecycle, terminationGracePeriodSeconds, a pod securityContext, ...).
KNATIVE_CONTAINER_FIELDS = {"name", "args", "command", "env", "envFrom", "image", "imagePullPolicy", "livenessProbe",
                            "ports", "readinessProbe", "resources", "securityContext",
                            "terminationMessagePath", "terminationMessagePolicy", "volumeMounts", "workingDir"}


def knative_revision() -> dict:
    docs = render(KNATIVE)
    assert [d["kind"] for d in docs] == ["Service"] and docs[0]["apiVersion"] == "serving.knative.dev/v1"
    return docs[0]["spec"]["template"]


def knative_container() -> dict:
    containers = knative_revision()["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_knative_revision_is_a_valid_pod(version):
    revision = knative_revision()
    spec = {k: v for k, v in revision["spec"].items() if k not in ("containerConcurrency", "timeoutSeconds",
                                                                  "responseStartTimeoutSeconds", "idleTimeoutSeconds")}
    # As Knative does when it makes the pod: a probe without a port gets the container's one port.
    spec = yaml.safe_load(yaml.safe_dump(spec))
    for c in spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            c[probe]["httpGet"].setdefault("port", c["ports"][0]["containerPort"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "revision", **revision["metadata"]}, "spec": spec}
    kubernetes_validate.validate(pod, version, strict=True)
    assert set(knative_container()) <= KNATIVE_CONTAINER_FIELDS, set(knative_container()) - KNATIVE_CONTAINER_FIELDS
    assert set(spec) <= {"containers", "volumes", "serviceAccountName", "enableServiceLinks", "imagePullSecrets"}


def test_knative_scales_to_zero_with_the_measured_figures():
    revision = knative_revision()
    notes = revision["metadata"]["annotations"]
    c = knative_container()
    assert notes["autoscaling.knative.dev/min-scale"] == "0", "scale to zero"
    assert notes["autoscaling.knative.dev/metric"] == "concurrency"
    target, hard = int(notes["autoscaling.knative.dev/target"]), revision["spec"]["containerConcurrency"]
    assert 0 < target <= hard, "the autoscaler aims below the pod's hard limit"
    env = {e["name"]: e["value"] for e in c["env"]}
    from soundclassifier.config import Settings

    assert hard <= Settings().max_requests_in_flight, "Knative must queue before the pod refuses"
    assert revision["spec"]["timeoutSeconds"] == Settings().request_timeout_s
    assert env["SOUND_GRPC_PORT"] == "0", "one port per revision: HTTP"
    assert [p["name"] for p in c["ports"]] == ["http1"], "HTTP/1.1 and its WebSocket upgrade (/listen)"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz"} and c["livenessProbe"]["httpGet"] == {"path": "/livez"}
    assert int(env["SOUND_ENGINE_THREADS"]) == cpu(c["resources"]["limits"]["cpu"])
    assert MEASURED_PEAK_RSS_GIB * 2**30 <= memory(c["resources"]["requests"]["memory"])
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
