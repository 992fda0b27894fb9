"""Checks of the Helm chart, run by .ci/run with PyPI's helm-python-sdk (Helm v4's SDK,
no helm binary) and kubernetes-validate, all offline.

Renders helm/cedar-pdp with the default values and with every optional part switched
on; lints it strictly; validates every rendered manifest against the Kubernetes schemas
of several versions; asserts the security settings, probes and rollout checksum; checks
that values.schema.json refuses wrong values; and starts the real binary with the
arguments the Deployment renders, on the policies its ConfigMap renders.

Usage: python .ci/chart_test.py path/to/cedar-pdp-binary
Prints a line per check and `test result: ok|FAILED. N passed; M failed;` at the end.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "cedar-pdp"
# The oldest version the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
# Kinds of the Prometheus Operator: no Kubernetes schema exists for them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Policies for the ConfigMap: the example set's files (ConfigMap keys hold no folders, so
# the one in tenants/ is left out).
EXAMPLE_FILES = {
    p.name: p.read_text()
    for p in sorted((ROOT / "policies").iterdir())
    if p.is_file()
}



def docs_ext_authz():
    """The [ext_authz] table of the example config in docs/envoy.md."""
    text = (ROOT / "docs" / "envoy.md").read_text()
    for block in text.split("```toml\n")[1:]:
        block = block.split("\n```")[0]
        if block.startswith("[ext_authz]"):
            return tomllib.loads(block)["ext_authz"]
    raise AssertionError("docs/envoy.md has no ```toml block starting with [ext_authz]")


EXT_AUTHZ = docs_ext_authz()

ALL_ON = {
    "policies": {"files": EXAMPLE_FILES},
    "autoscaling": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"namespaceSelector": {"matchLabels": {"mesh": "on"}}}],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "config": {"audit": {"contextKeys": ["mfa", "source_ip"]}, "extAuthz": EXT_AUTHZ},
}

GIT_SYNC = {
    "policies": {
        "source": "gitSync",
        "gitSync": {
            "repo": "https://example.com/team/policies.git",
            "subPath": "prod/",
            "credentialsSecret": "git-token",
        },
    }
}


def render(values):
    """Every rendered object, by (kind, name)."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="pdp", namespace="auth")
    objects = {}
    for path, text in manifests.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(objects, kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(objects):
    return sorted({k for k, _ in objects})


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def lint_is_clean_in_strict_mode():
    for values in [{}, ALL_ON, GIT_SYNC]:
        report = helm.lint(str(CHART), values, strict=True)
        above_info = [m for m in report["messages"] if m["severity"] > 1]
        assert not report["errors"] and not above_info, report


@check
def default_values_render_the_core_objects_only():
    assert kinds(render({})) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ], kinds(render({}))


@check
def every_optional_part_renders_when_enabled():
    got = kinds(render(ALL_ON))
    for kind in [
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
    ]:
        assert kind in got, got
    deployment = one(render(ALL_ON), "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


@check
def manifests_validate_against_kubernetes_schemas():
    for values in [{}, ALL_ON, GIT_SYNC]:
        for (kind, name), obj in render(values).items():
            if kind in CUSTOM_KINDS:
                continue
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)


@check
def custom_resources_carry_what_the_operator_needs():
    objects = render(ALL_ON)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    rule = one(objects, "PrometheusRule")
    source = yaml.safe_load((CHART / "alerts" / "cedar-pdp-rules.yaml").read_text())
    assert rule["spec"] == source, "the PrometheusRule carries the unit-tested alerts as is"
    alert = rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]
    assert "{{ $labels.instance }}" in alert, "alert templates are not eaten by Helm"
    dashboard = objects[("ConfigMap", "pdp-cedar-pdp-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["cedar-pdp.json"] == (
        CHART / "dashboards" / "cedar-pdp.json"
    ).read_text().rstrip("\n")


def containers(deployment):
    return deployment["spec"]["template"]["spec"]["containers"]


@check
def pods_run_unprivileged_with_a_read_only_root_and_no_token():
    for values in [{}, ALL_ON, GIT_SYNC]:
        objects = render(values)
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "add" not in sc["capabilities"], container["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", container["name"]
            assert "privileged" not in sc or sc["privileged"] is False
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{container['name']} needs a writable /tmp"


@check
def probes_are_native_grpc_health_checks():
    deployment = one(render({}), "Deployment")
    pdp = containers(deployment)[0]
    assert pdp["livenessProbe"]["grpc"] == {"port": 50051}
    assert pdp["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "cedarpdp.v1.Authorizer",
    }
    service = one(render({}), "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http-metrics"]["port"] == 9464


def checksum(values):
    deployment = one(render(values), "Deployment")
    return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/args"]


@check
def settings_roll_the_pods_and_policy_changes_do_not():
    base = checksum({})
    assert checksum({"config": {"logLevel": "debug"}}) != base
    assert checksum({"config": {"limits": {"maxBatchItems": 10}}}) != base
    # The config file is read at start only: a change to it rolls the pods too.
    with_mapping = one(render({"config": {"extAuthz": EXT_AUTHZ}}), "Deployment")
    changed = one(render({"config": {"extAuthz": {**EXT_AUTHZ, "headers": ["x-other"]}}}), "Deployment")
    annotations = lambda d: d["spec"]["template"]["metadata"]["annotations"]
    assert annotations(with_mapping)["checksum/config"] != annotations(changed)["checksum/config"]
    # Policies are hot-reloaded from the ConfigMap: no rollout for them.
    assert checksum({"policies": {"files": {"a.cedar": "permit(principal, action, resource);"}}}) == base


@check
def git_sync_runs_beside_the_server_and_serves_its_checkout():
    deployment = one(render(GIT_SYNC), "Deployment")
    names = [c["name"] for c in containers(deployment)]
    assert names == ["cedar-pdp", "git-sync"], names
    pod = deployment["spec"]["template"]["spec"]
    init = pod["initContainers"]
    assert [c["name"] for c in init] == ["git-sync-init"], init
    assert "--one-time" in init[0]["args"], "the first checkout is made before the server starts"
    assert "--one-time" not in containers(deployment)[1]["args"]
    env = {e["name"]: e for e in containers(deployment)[1]["env"]}
    assert env["GITSYNC_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "git-token", "key": "username"}
    assert env["GITSYNC_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "git-token", "key": "password"}
    args = containers(deployment)[0]["args"]
    assert "--policies=/git/current/prod" in args, args
    sync = containers(deployment)[1]["args"]
    assert "--repo=https://example.com/team/policies.git" in sync, sync
    assert "--link=current" in sync and "--root=/git" in sync, sync


def refused(values, needle):
    try:
        render(values)
    except helm.HelmError as e:
        assert needle in str(e), f"{needle!r} not in: {e}"
        return
    raise AssertionError(f"rendered with {values}")


@check
def policy_files_reach_the_config_map_byte_for_byte():
    files = {
        "indented.cedar": "  permit(principal, action, resource);\n",
        "comment-first.cedar": "\n  // leading blank line and indent\nforbid(principal, action, resource);\n\n",
        "control.cedar": "// an escape \x1b character\npermit(principal, action, resource);",
        "123": "numeric-looking name",
        "true": "boolean-looking name",
        "1.10": "float-looking name",
    }
    objects = render({"policies": {"files": files}})
    assert objects[("ConfigMap", "pdp-cedar-pdp-policies")]["data"] == files


@check
def the_ext_authz_mapping_reaches_the_config_file_intact():
    objects = render({"config": {"extAuthz": EXT_AUTHZ}})
    config = objects[("ConfigMap", "pdp-cedar-pdp-config")]["data"]["config.toml"]
    assert tomllib.loads(config) == {"ext_authz": EXT_AUTHZ}, config
    pdp = containers(one(objects, "Deployment"))[0]
    assert "--config=/etc/cedar-pdp/config/config.toml" in pdp["args"], pdp["args"]
    mounts = {m["name"]: m["mountPath"] for m in pdp["volumeMounts"]}
    assert mounts["config"] == "/etc/cedar-pdp/config", mounts
    # Without a mapping there is no config file at all.
    plain = render({})
    assert ("ConfigMap", "pdp-cedar-pdp-config") not in plain
    assert not any(a.startswith("--config") for a in containers(one(plain, "Deployment"))[0]["args"])


@check
def startup_is_given_time_before_liveness_counts():
    pdp = containers(one(render({}), "Deployment"))[0]
    assert pdp["startupProbe"]["grpc"] == {"port": 50051}
    assert pdp["startupProbe"]["periodSeconds"] * pdp["startupProbe"]["failureThreshold"] >= 60


@check
def the_values_schema_refuses_wrong_values():
    refused({"replicaCount": "two"}, "replicaCount")
    refused({"config": {"policyValidation": "lax"}}, "policyValidation")
    refused({"config": {"audit": {"allowSampleRate": 2}}}, "allowSampleRate")
    refused({"autoscaling": {"enabld": True}}, "enabld")
    refused({"service": {"grpcPort": 70000}}, "grpcPort")
    refused({"policies": {"files": {"tenants/acme.cedar": ""}}}, "tenants/acme.cedar")
    refused({"policies": {"source": "gitSync"}}, "policies.gitSync.repo is required")
    refused({"policies": {"source": "existingConfigMap"}}, "existingConfigMap is required")
    refused({"policies": {"files": {"..data": ""}}}, "..data")
    refused({"resources": {"requests": {"cpu": True}}}, "cpu")
    refused({"config": {"extAuthz": {"rotues": []}}}, "rotues")
    refused({"config": {"extAuthz": {"principal": [{"from": "cookie", "type": "User"}]}}}, "from")
    refused(
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "minReplicas must not be greater",
    )
    refused(
        {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
        "needs resources.requests.cpu",
    )


@check
def the_binary_starts_with_the_rendered_arguments_and_policies(binary=None):
    binary = binary or BINARY
    objects = render(ALL_ON)
    files = objects[("ConfigMap", "pdp-cedar-pdp-policies")]["data"]
    assert set(files) == set(EXAMPLE_FILES), sorted(files)
    args = containers(one(objects, "Deployment"))[0]["args"]
    with tempfile.TemporaryDirectory() as tmp:
        policies = pathlib.Path(tmp) / "policies"
        policies.mkdir()
        for name, text in files.items():
            (policies / name).write_text(text)
        config = pathlib.Path(tmp) / "config.toml"
        config.write_text(objects[("ConfigMap", "pdp-cedar-pdp-config")]["data"]["config.toml"])
        # The same arguments, but on this machine: the rendered policy directory and
        # loopback ports the OS picks.
        local = []
        for arg in args:
            if arg.startswith("--policies="):
                arg = f"--policies={policies}"
            elif arg.startswith("--listen="):
                arg = "--listen=127.0.0.1:0"
            elif arg.startswith("--metrics-listen="):
                arg = "--metrics-listen=127.0.0.1:0"
            elif arg.startswith("--config="):
                arg = f"--config={config}"
            local.append(arg)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEDAR_PDP_")}
        # validate --config also checks the rendered [ext_authz] table.
        validated = subprocess.run(
            [binary, "validate", str(policies), f"--config={config}"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert validated.returncode == 0, validated.stdout + validated.stderr
        count = int(re.search(r"ok: (\d+) policies", validated.stdout).group(1))
        proc = subprocess.Popen(
            [binary, *local],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            deadline = time.time() + 30
            seen = []
            while time.time() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(line)
                if '"message":"listening"' in line:
                    assert f'"policy_count":{count},' in line, (count, line)
                    return
            raise AssertionError("no 'listening' line:\n" + "".join(seen))
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def main():
    global BINARY
    BINARY = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "cedar-pdp")
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn()
            print(f"check {fn.__name__} ... ok")
            passed += 1
        except Exception:
            print(f"check {fn.__name__} ... FAILED")
            traceback.print_exc()
            failed += 1
    state = "ok" if failed == 0 else "FAILED"
    print(f"test result: {state}. {passed} passed; {failed} failed; (helm chart)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
