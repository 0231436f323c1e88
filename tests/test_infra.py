"""infra/ and configs/ checked offline: YAML parses, schemas hold, nothing is exposed or leaked.

- Kubernetes built-in kinds and every Ray pod template: kubernetes-validate's bundled
  schemas (strict: unknown fields fail).
- RayJob / RayCronJob: KubeRay v1.7.0's CRD schema (infra/kuberay/schema/, pod templates
  cut out and checked as above, unknown fields fail).
- infra/aws/cluster.yaml: Ray's own cluster-launcher schema, after Ray fills its defaults.
- Security: token auth on everywhere, no LoadBalancer/NodePort/Ingress for 8265/10001,
  no security-group rule opening them, no credential literal in any infra file.
- The Dockerfile installs from requirements.lock the way scripts/install.sh does.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import REPO as ROOT

INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
AWS_CLUSTER = INFRA / "aws" / "cluster.yaml"
DOCKERFILE = INFRA / "Dockerfile"
K8S_VERSION = "1.33"  # an EKS version in standard support; the schemas bundle up to 1.37
RAY_PORTS = {8265, 10001}  # dashboard/job API, Ray Client
PRIVATE_PORTS = RAY_PORTS | {6379}  # + GCS

YAML_FILES = sorted(
    [p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")]
    + [p for p in (ROOT / "configs").glob("*") if p.suffix in (".yaml", ".yml")]
)
INFRA_TEXT_FILES = sorted(
    p for p in INFRA.rglob("*") if p.is_file() and p.suffix not in (".pyc",) and "__pycache__" not in p.parts
) + [ROOT / "configs" / "cluster.yaml"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def _rayjob_specs() -> list[tuple[str, dict]]:
    """(name, RayJobSpec) of every RayJob and every RayCronJob's jobTemplate."""
    out = []
    for path, doc in _k8s_docs():
        if doc["kind"] == "RayJob":
            out.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] == "RayCronJob":
            out.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]["jobTemplate"]))
    return out


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    cluster = spec["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


# ---------------------------------------------------------------- parsing


def test_there_is_something_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in YAML_FILES}
    assert {
        "infra/kuberay/rayjob.yaml",
        "infra/kuberay/rayjob-nightly.yaml",
        "infra/kuberay/serviceaccount.yaml",
        "infra/aws/cluster.yaml",
        "configs/cluster.yaml",
    } <= names
    assert DOCKERFILE.exists()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_cluster_profile_is_a_valid_config():
    config = pytest.importorskip("r2p1d_batch.config", reason="the labeling job's config module is not merged yet")
    cfg = config.load(ROOT / "configs" / "cluster.yaml")
    assert cfg.model.weights == "kinetics400"
    assert cfg.model.device == "cuda" and cfg.model.num_gpus == 1
    assert cfg.model.batch_size == 64
    assert tuple(cfg.model.concurrency) == (1, 4)
    assert cfg.decode.concurrency is None
    assert cfg.decode.device == "cpu"  # until NVDEC is measured on a GPU node


def test_cluster_profile_keys_are_known_sections():
    """Without the config module: at least the sections and key names are the typed config's."""
    known = {
        "ray": {"address", "num_cpus", "object_store_memory_mb", "progress_bars"},
        "sampling": {"mode", "clip_len", "fps", "stride_sec", "num_clips", "short_video"},
        "decode": {"scaler", "threads", "num_cpus", "concurrency", "clips_per_block", "max_pixels", "seek_gap_sec",
                   "label_selector", "resources", "device", "nvdec", "crop_taps", "skip_frames",
                   "skip_loop_filter_min_side", "codec_options"},
        "model": {"weights", "seed", "runtime", "device", "batch_size", "num_gpus", "num_cpus",
                  "concurrency", "topk", "amp", "label_selector", "resources"},
        "run": {"mode", "stale_after_sec", "stall_timeout_sec"},
        "storage": {"endpoint_url", "region", "anon"},
        "output": {"path", "rows_per_file"},
    }
    profile = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    for section, keys in profile.items():
        assert section in known, section
        assert set(keys) <= known[section], (section, set(keys) - known[section])


# ---------------------------------------------------------------- schemas



@pytest.fixture(scope="module")
def k8s_validate():
    mod = pytest.importorskip("kubernetes_validate")
    return mod


@pytest.mark.parametrize("path,doc", [(p, d) for p, d in _k8s_docs() if d["apiVersion"] != "ray.io/v1"],
                         ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", ""))
def test_builtin_kinds_match_kubernetes_schema(k8s_validate, path, doc):
    k8s_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name,spec", _rayjob_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_ray_pod_templates_match_kubernetes_schema(k8s_validate, name, spec):
    for group, template in _pod_templates(spec):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
        try:
            k8s_validate.validate(wrapped, K8S_VERSION, strict=True)
        except Exception as e:  # name the group in the failure
            raise AssertionError(f"{name} {group}: {e}") from None


@pytest.mark.parametrize("path,doc", [(p, d) for p, d in _k8s_docs() if d["apiVersion"] == "ray.io/v1"],
                         ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", ""))
def test_kuberay_resources_match_crd_schema(path, doc):
    schema = json.loads((KUBERAY / "schema" / f"{doc['kind'].lower()}.v1.json").read_text())
    jsonschema.Draft7Validator(schema).validate(doc)


def test_crd_schema_is_strict():
    """The trimmed CRD schema really rejects a misspelt field (so the test above means something)."""
    path, doc = next((p, d) for p, d in _k8s_docs() if d["kind"] == "RayJob")
    schema = json.loads((KUBERAY / "schema" / "rayjob.v1.json").read_text())
    bad = json.loads(json.dumps(doc))
    bad["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)


def test_aws_cluster_matches_ray_launcher_schema():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(AWS_CLUSTER.read_text())
    validate_config(fillout_defaults(config))
    assert config["provider"]["type"] == "aws"


# ---------------------------------------------------------------- what the job runs


def test_rayjobs_run_the_label_job_with_the_cluster_profile():
    for name, spec in _rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        assert argv[:2] == ["python", "jobs/label.py"], name
        assert argv[2].startswith("s3://"), name
        assert argv[argv.index("--output") + 1].startswith("s3://"), name
        assert argv[argv.index("--config") + 1] == "configs/cluster.yaml", name
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["rayClusterSpec"]["rayVersion"] == _locked_version("ray"), name


def test_nightly_template_is_the_one_off_job_plus_schedule():
    (_, one_off), = [(n, s) for n, s in _rayjob_specs() if n.startswith("rayjob.yaml")]
    (_, nightly), = [(n, s) for n, s in _rayjob_specs() if n.startswith("rayjob-nightly.yaml")]
    assert nightly["rayClusterSpec"] == one_off["rayClusterSpec"]
    differ = {k for k in set(one_off) | set(nightly) if one_off.get(k) != nightly.get(k)}
    assert differ == {"entrypoint", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
    cron = next(d for _, d in _k8s_docs() if d["kind"] == "RayCronJob")
    assert cron["spec"]["schedule"] == "0 2 * * *"
    # No overlap: a run is stopped before the next night starts.
    assert nightly["activeDeadlineSeconds"] < 24 * 3600


def test_worker_groups_cpu_decode_and_gpu():
    for name, spec in _rayjob_specs():
        groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
        assert set(groups) == {"cpu-decode", "gpu"}, name
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert str(gpu["limits"]["nvidia.com/gpu"]) == "1", name
        cpu = groups["cpu-decode"]["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in cpu.get("limits", {}), name
        for group, template in _pod_templates(spec):
            for c in template["spec"]["containers"]:
                assert c["image"].endswith("/r2p1d-batch:0.1.0"), (name, group)


def test_node_labels_put_decode_off_gpu_nodes_and_the_classifier_on_them():
    """configs/cluster.yaml's label selectors against the labels infra/ gives each node group:
    decode fits the CPU group only, the classifier the GPU group only (placement.py)."""
    config = pytest.importorskip("r2p1d_batch.config")
    from r2p1d_batch.planning.placement import _label_matches

    cfg = config.load(ROOT / "configs" / "cluster.yaml")
    assert cfg.decode.label_selector and cfg.model.label_selector

    def fits(selector, labels):
        return all(_label_matches(labels.get(k), v) for k, v in selector.items())

    groups = [(f"{n}:{g['groupName']}", g["groupName"], g.get("labels", {}))
              for n, spec in _rayjob_specs() for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    aws = yaml.safe_load(AWS_CLUSTER.read_text())["available_node_types"]
    groups += [(f"aws:{t}", t, v.get("labels", {})) for t, v in aws.items() if t != "head"]
    for name, group, labels in groups:
        gpu = group == "gpu"
        assert fits(cfg.model.label_selector, labels) == gpu, (name, labels)
        assert fits(cfg.decode.label_selector, labels) == (not gpu), (name, labels)


def _driver_caps(value: str) -> set[str]:
    return {c.strip() for c in value.split(",")}


def test_gpu_containers_get_the_video_driver_capability():
    """NVDEC needs libnvcuvid, which the NVIDIA runtime mounts only with the `video` capability."""
    envs = [rest for op, rest in _dockerfile_instructions() if op == "ENV" and "NVIDIA_DRIVER_CAPABILITIES" in rest]
    (env,) = envs
    assert "video" in _driver_caps(env.split("NVIDIA_DRIVER_CAPABILITIES=", 1)[1].split()[0])
    for name, spec in _rayjob_specs():
        gpu = next(g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
        for c in gpu["template"]["spec"]["containers"]:
            caps = {e["name"]: e.get("value", "") for e in c.get("env", [])}.get("NVIDIA_DRIVER_CAPABILITIES")
            assert caps is not None and {"compute", "utility", "video"} <= _driver_caps(caps), (name, c["name"])
    opts = yaml.safe_load(AWS_CLUSTER.read_text())["available_node_types"]["gpu"]["docker"]["worker_run_options"]
    (opt,) = [o for o in opts if "NVIDIA_DRIVER_CAPABILITIES" in o]
    assert "video" in _driver_caps(opt.split("=", 1)[1])


def test_aws_cluster_has_cpu_decode_and_gpu_worker_types():
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu-decode", "gpu"}
    assert types["gpu"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "--gpus all" in types["gpu"]["docker"]["worker_run_options"]
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"]  # S3 from the role, not keys


# ---------------------------------------------------------------- nobody else gets in


def test_token_auth_on_every_kuberay_cluster():
    for name, spec in _rayjob_specs():
        assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token", name
        # A hand-set RAY_AUTH_MODE would fight KubeRay's: it must come from authOptions only.
        for group, template in _pod_templates(spec):
            for c in template["spec"]["containers"]:
                names = {e["name"] for e in c.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, (name, group)


def test_token_auth_on_every_aws_node():
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cmds = config[key]
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
        fetch = [c for c in cmds if "auth_token" in c]
        assert fetch and cmds.index(fetch[0]) < cmds.index(starts[0]), key
        assert all("umask 077" in c for c in fetch), key


def test_dashboard_never_exposed_publicly():
    for path, doc in _k8s_docs():
        kinds = [doc] + [{"kind": "RayJobSpec", "spec": s} for n, s in _rayjob_specs() if n.startswith(path.name)]
        assert doc["kind"] != "Ingress", path
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path
        for k in kinds:
            cluster = k.get("spec", {}).get("rayClusterSpec")
            if not cluster:
                continue
            head = cluster["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", path
            assert not head.get("enableIngress", False), path
            assert not cluster.get("headServiceAnnotations"), path
            for c in head["template"]["spec"]["containers"]:
                for port in c.get("ports", []):
                    assert "hostPort" not in port, (path, port)
    config = yaml.safe_load(AWS_CLUSTER.read_text())
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
        assert not any(lo <= p <= hi for p in PRIVATE_PORTS), rule
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_credentials_come_from_roles_and_secrets():
    sa = next(d for _, d in _k8s_docs() if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for name, spec in _rayjob_specs():
        for group, template in _pod_templates(spec):
            pod = template["spec"]
            assert pod.get("serviceAccountName") == sa["metadata"]["name"], (name, group)
            for c in pod["containers"]:
                for e in c.get("env", []):
                    secretish = re.search(r"(KEY|TOKEN|SECRET|PASSWORD)", e["name"])
                    assert not (secretish and "value" in e), (name, group, e["name"])
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        qaihub = next(v for v in head["volumes"] if v["name"] == "qaihub")
        assert qaihub["secret"]["secretName"]


# Patterns for things that must never be committed: AWS key ids and secrets, private keys,
# bearer tokens, GitHub tokens, hex/base64 blobs assigned to token/secret/password keys.
CREDENTIAL_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"aws_secret_access_key\s*[:=]", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    re.compile(r"(api_token|auth_token|password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/_=-]{20,}", re.I),
    # a literal value (not "$(...)" or "$VAR") for a credential variable
    re.compile(r"(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|RAY_AUTH_TOKEN)\s*[:=]\s*['\"]?[^\s'\"$]{6,}"),
    # a Kubernetes env entry whose name says secret and whose value is inline
    re.compile(r"name:\s*['\"]?\w*(TOKEN|SECRET|PASSWORD|ACCESS_KEY)\w*['\"]?\s*\n\s*value:", re.I),
]


@pytest.mark.parametrize("path", INFRA_TEXT_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_credential_literal(path):
    text = path.read_text(errors="replace")
    for pat in CREDENTIAL_PATTERNS:
        m = pat.search(text)
        assert m is None, f"{path.relative_to(ROOT)}: looks like a credential: {m.group(0)[:12]}..."


def test_credential_patterns_catch_the_usual_suspects():
    samples = [
        "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "auth_token: 0123456789abcdef0123456789abcdef",
        "- name: RAY_AUTH_TOKEN\n  value: abc",
        "RAY_AUTH_TOKEN=abcdef123456",
        "export AWS_SECRET_ACCESS_KEY='wJalrXUtnFEMI'",
    ]
    for s in samples:
        assert any(p.search(s) for p in CREDENTIAL_PATTERNS), s
    # ...but not the documented way of reading one from a Secret at run time
    fine = 'export RAY_AUTH_TOKEN="$(kubectl get secret "$CLUSTER" -o jsonpath=...)"'
    assert not any(p.search(fine) for p in CREDENTIAL_PATTERNS)


# ---------------------------------------------------------------- the image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def _pip_installs(text: str) -> list[str]:
    return re.findall(r"-m pip install[^&;|\n]*", text)


def test_dockerfile_installs_from_the_lock_like_install_sh():
    install_sh = (ROOT / "scripts" / "install.sh").read_text()
    (sh_install,) = [c for c in _pip_installs(install_sh) if "requirements.lock" in c]
    sh_flags = shlex.split(sh_install.split("2>")[0])[3:]  # after "-m pip install"
    assert "-m venv" in install_sh

    ins = _dockerfile_instructions()
    runs = [rest for op, rest in ins if op == "RUN"]
    copies = [rest for op, rest in ins if op == "COPY"]
    lock_copy = next(i for i, (op, rest) in enumerate(ins) if op == "COPY" and rest.split()[0] == "requirements.lock")
    lock_install = next(i for i, (op, rest) in enumerate(ins) if op == "RUN" and "requirements.lock" in rest)
    assert lock_copy < lock_install
    # Same command as install.sh: a venv, then pip install with the same flags from the lock.
    (docker_install,) = [c for r in runs for c in _pip_installs(r) if "requirements.lock" in c]
    assert shlex.split(docker_install)[3:] == sh_flags
    assert "-m venv" in ins[lock_install][1]
    # Nothing else gets resolved: the only other pip install is the package itself, --no-deps.
    others = [c for r in runs for c in _pip_installs(r) if "requirements.lock" not in c]
    assert others and all("--no-deps" in c and c.rstrip().endswith(" .") for c in others), others
    # The code the job runs is in the image.
    for path in ("r2p1d_batch/", "jobs/"):  # configs/ ships inside the package, linked as in the checkout
        assert any(c.split()[0] == path for c in copies), path
    assert any(op == "RUN" and "ln -s r2p1d_batch/configs configs" in rest for op, rest in ins)
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs" / "cluster.yaml").is_file()


def test_dockerfile_base_user_and_no_secrets():
    ins = _dockerfile_instructions()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for op, rest in ins if op == "ARG" and "=" in rest}
    base = args.get("PYTHON_IMAGE", "")
    assert base.startswith("python:3.11-slim"), base
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "RUN" and "ffmpeg" in rest and "apt-get install" in rest for op, rest in ins)
    for op, rest in ins:
        if op in ("ARG", "ENV"):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)", rest.split("=")[0], re.I), rest
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.aws|\.ray|client\.ini|\.env\b|credentials", rest), rest


def _locked_version(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} not in requirements.lock")


def test_docs_show_the_same_install_and_port_forwarding():
    doc = (ROOT / "infra" / "README.md").read_text()
    assert "kubectl port-forward" in doc
    assert "ray dashboard infra/aws/cluster.yaml" in doc
    assert "RAY_AUTH_MODE=token" in doc
    assert "docker build -f infra/Dockerfile" in doc
