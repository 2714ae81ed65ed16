#!/usr/bin/env python3
"""Selects from rendered manifests what `podman kube play` runs here and
writes it to a new file: the ConfigMaps, Secrets and Deployments of the
named apps (default: discosrv, relaysrv).

One rewrite, because podman 4.3.1 (Debian 12) crashes with a nil pointer
in kube.VolumeFromSecret on any `secret:` volume: each Secret volume is
written to files under SECRET_DIR and mounted as a hostPath with the same
contents instead. Everything else is played as rendered (ConfigMaps by
envFrom, probes, securityContext, resources). Kinds podman cannot play
(Services of type LoadBalancer, PodDisruptionBudget, NetworkPolicy,
StatefulSet, ServiceMonitor) are left out and listed on stderr.

usage: ship-kube-play.py RENDERED.yaml OUT.yaml SECRET_DIR [APP...]
"""
import base64
import os
import sys

import yaml

src, out, secret_dir = sys.argv[1:4]
apps = sys.argv[4:] or ["discosrv", "relaysrv"]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


def wanted(d):
    name = d["metadata"]["name"]
    return d["kind"] in ("ConfigMap", "Secret", "Deployment") and any(
        name == a or name.startswith(a + "-") for a in apps
    )


keep, skipped = [], []
for d in docs:
    if not wanted(d):
        skipped.append(f'{d["kind"]}/{d["metadata"]["name"]}')
        continue
    if d["kind"] == "Deployment":
        for v in d["spec"]["template"]["spec"].get("volumes", []):
            if "secret" not in v:
                continue
            name = v["secret"]["secretName"]
            path = os.path.join(secret_dir, name)
            os.makedirs(path, exist_ok=True)
            for key, value in secrets[name].get("data", {}).items():
                f = os.path.join(path, key)
                with open(f, "wb") as fh:
                    fh.write(base64.b64decode(value))
                # Readable by the image's uid 10001 (the pod's fsGroup does
                # not apply to hostPath volumes).
                os.chmod(f, 0o444)
            os.chmod(path, 0o755)
            del v["secret"]
            v["hostPath"] = {"path": path, "type": "Directory"}
    keep.append(d)

# Secrets are consumed as files now; podman would also store them.
keep = [d for d in keep if d["kind"] != "Secret"]
with open(out, "w") as fh:
    yaml.safe_dump_all(keep, fh)
print("kube play: " + ", ".join(f'{d["kind"]}/{d["metadata"]["name"]}' for d in keep), file=sys.stderr)
print("not played here: " + ", ".join(skipped), file=sys.stderr)
