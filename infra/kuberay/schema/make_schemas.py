"""Regenerate rayjob.v1.json / raycronjob.v1.json from KubeRay's CRDs.

    python infra/kuberay/schema/make_schemas.py ray.io_rayjobs.yaml ray.io_raycronjobs.yaml

Input: ray-operator/config/crd/bases/ray.io_{rayjobs,raycronjobs}.yaml of the KubeRay
release in use (these were made from v1.7.0, commit 59d663aeec13760646da3db9c1cf8cfe883e30b7).
Output: the v1 openAPIV3Schema with two changes so tests can use it offline and strictly:
- every embedded PodTemplateSpec is cut out (tests validate those against the real
  Kubernetes PodTemplate schema from kubernetes-validate);
- every object that lists properties and does not preserve unknown fields gets
  additionalProperties: false, i.e. `kubectl apply --validate=strict` (a misspelt field
  fails instead of being pruned silently by the API server).
"""
import json
import sys
from pathlib import Path

import yaml

POD_TEMPLATE = {
    "type": "object",
    "description": "PodTemplateSpec: validated against Kubernetes' PodTemplate schema",
    "x-kubernetes-preserve-unknown-fields": True,
}


def strict(node):
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    props = node.get("properties")
    if isinstance(props, dict) and "spec" in props and "containers" in props["spec"].get("properties", {}):
        return dict(POD_TEMPLATE)
    out = {k: strict(v) for k, v in node.items()}
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def main(paths):
    here = Path(__file__).resolve().parent
    for p in paths:
        crd = yaml.load(Path(p).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        kind = crd["spec"]["names"]["kind"]
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = v1["schema"]["openAPIV3Schema"]
        schema["properties"].pop("status", None)
        # metadata is checked by Kubernetes itself; allow any ObjectMeta here.
        schema["properties"]["metadata"] = {"type": "object"}
        out = here / f"{kind.lower()}.v1.json"
        out.write_text(json.dumps(strict(schema), indent=1, sort_keys=True) + "\n")
        print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
