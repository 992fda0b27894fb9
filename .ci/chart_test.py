"""Checks of the Helm chart, run by .ci/run with PyPI's helm-python-sdk (Helm v4's SDK,
no helm binary) and kubernetes-validate, all offline.

Renders helm/cedar-pdp with the default values and with every optional part switched
on; lints it strictly; validates every rendered manifest against the Kubernetes schemas
of several versions; asserts the security settings, probes and rollout checksum; checks
that values.schema.json refuses wrong values; and starts the real binary with the
arguments the Deployment renders, on the policies its ConfigMap renders, once in
plaintext and once with mutual TLS on a throwaway CA and certificates that `openssl`
makes at run time (nothing secret is stored in the repository); and, with the AuthZEN
API on, checks the rendered [authzen] table with `validate --config` and fetches the
AuthZEN metadata from the server it configures, in plaintext and over mutual TLS.

Usage: python .ci/chart_test.py path/to/cedar-pdp-binary
Prints a line per check and `test result: ok|FAILED. N passed; M failed;` at the end.
"""

import http.client
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
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

# Mutual TLS from a Secret such as a cert-manager Certificate writes, with allow-lists of
# SPIFFE URIs and DNS names as a mesh or a gateway would present them.
CLIENT_ID = "spiffe://test.example/ns/edge/sa/gateway"
TLS_ON = {
    **ALL_ON,
    "tls": {
        "enabled": True,
        "secretName": "pdp-tls",
        "mutual": True,
        "authorizerCallers": [CLIENT_ID, "batch.test.example"],
        "extAuthzCallers": ["spiffe://test.example/ns/istio-system/sa/ingress"],
    },
}

# The AuthZEN API with every key of its table set, beside every other optional part (the
# config file then holds [ext_authz] and [authzen]).
AUTHZEN = {
    "enabled": True,
    "namespace": "Platform",
    "policyDecisionPoint": "https://pdp.example.com",
    "defaultPageLimit": 20,
    "maxPageLimit": 200,
    "maxSearchEvaluations": 5000,
}
AUTHZEN_FROM = [{"namespaceSelector": {"matchLabels": {"authzen": "on"}}}]
AUTHZEN_ON = {
    **ALL_ON,
    "authzen": AUTHZEN,
    "networkPolicy": {**ALL_ON["networkPolicy"], "authzenFrom": AUTHZEN_FROM},
}
# And over mutual TLS, with an allow-list for it.
AUTHZEN_TLS = {
    **AUTHZEN_ON,
    "tls": {**TLS_ON["tls"], "authzenCallers": [CLIENT_ID]},
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
    for values in [{}, ALL_ON, GIT_SYNC, TLS_ON, AUTHZEN_ON, AUTHZEN_TLS]:
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
    for values in [{}, ALL_ON, GIT_SYNC, TLS_ON, AUTHZEN_ON, AUTHZEN_TLS]:
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
    for values in [{}, ALL_ON, GIT_SYNC, TLS_ON, AUTHZEN_ON, AUTHZEN_TLS]:
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


def ports_named(obj, name):
    if obj["kind"] == "Deployment":
        ports = containers(obj)[0]["ports"]
        return [p["containerPort"] for p in ports if p["name"] == name]
    return [p["port"] for p in obj["spec"]["ports"] if p["name"] == name]


def config_toml(objects):
    return objects[("ConfigMap", "pdp-cedar-pdp-config")]["data"]["config.toml"]


@check
def authzen_is_off_by_default():
    for values in [{}, ALL_ON, TLS_ON]:
        objects = render(values)
        for kind in ["Deployment", "Service"]:
            assert not ports_named(one(objects, kind), "authzen"), (kind, values)
        args = containers(one(objects, "Deployment"))[0]["args"]
        assert not any(a.startswith(("--authzen", "--tls-authzen")) for a in args), args
        if ("ConfigMap", "pdp-cedar-pdp-config") in objects:
            assert "authzen" not in tomllib.loads(config_toml(objects)), values
    # Only the gRPC and metrics ports are let in.
    policy = one(render(ALL_ON), "NetworkPolicy")
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [50051, 9464], ports
    # Nothing else turns on a config file.
    assert ("ConfigMap", "pdp-cedar-pdp-config") not in render({})


@check
def tracing_is_off_by_default_and_renders_its_flags_when_set():
    args = containers(one(render({}), "Deployment"))[0]["args"]
    assert not any(a.startswith(("--otlp", "--trace")) for a in args), args
    assert "env" not in containers(one(render({}), "Deployment"))[0]
    objects = render({"tracing": {"otlpEndpoint": "http://otel-collector:4317",
                                  "sampleRatio": 0.01, "queueCapacity": 512,
                                  "env": {"OTEL_SERVICE_NAME": "pdp-edge"}}})
    container = containers(one(objects, "Deployment"))[0]
    args = container["args"]
    assert "--otlp-endpoint=http://otel-collector:4317" in args, args
    assert "--trace-sample-ratio=0.01" in args, args
    assert "--trace-queue-capacity=512" in args, args
    assert {"name": "OTEL_SERVICE_NAME", "value": "pdp-edge"} in container["env"], container
    refused({"tracing": {"sampleRatio": 2}}, "sampleRatio")
    refused({"tracing": {"otlpEndpoint": "otel-collector:4317"}}, "otlpEndpoint")


@check
def shadow_is_off_by_default_and_mounts_its_config_map_when_named():
    deployment = one(render({}), "Deployment")
    args = containers(deployment)[0]["args"]
    assert not any(a.startswith("--shadow") for a in args), args
    objects = render({"shadow": {"existingConfigMap": "candidate-policies",
                                 "sampleRate": 0.25, "queueCapacity": 64}})
    deployment = one(objects, "Deployment")
    container = containers(deployment)[0]
    args = container["args"]
    assert "--shadow-policies=/etc/cedar-pdp/shadow-policies" in args, args
    assert "--shadow-sample-rate=0.25" in args, args
    assert "--shadow-queue-capacity=64" in args, args
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["shadow-policies"]["mountPath"] == "/etc/cedar-pdp/shadow-policies"
    assert mounts["shadow-policies"]["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shadow-policies"]["configMap"]["name"] == "candidate-policies", volumes
    refused({"shadow": {"sampleRate": 2}}, "sampleRate")


@check
def authzen_renders_its_port_and_config_table_when_enabled():
    objects = render({"authzen": {"enabled": True}})
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    assert ports_named(deployment, "authzen") == [8080]
    assert ports_named(service, "authzen") == [8080]
    port = {p["name"]: p for p in service["spec"]["ports"]}["authzen"]
    assert port["targetPort"] == "authzen" and port["appProtocol"] == "http", port
    # Only the listener: every other key is left to the server's defaults.
    assert tomllib.loads(config_toml(objects)) == {"authzen": {"listen": "0.0.0.0:8080"}}
    pdp = containers(deployment)[0]
    assert "--config=/etc/cedar-pdp/config/config.toml" in pdp["args"], pdp["args"]
    assert {m["name"]: m["mountPath"] for m in pdp["volumeMounts"]}["config"] == "/etc/cedar-pdp/config"
    # Every key set, beside the [ext_authz] mapping, on another port.
    objects = render({**AUTHZEN_ON, "authzen": {**AUTHZEN, "port": 8181}})
    assert tomllib.loads(config_toml(objects)) == {
        "ext_authz": EXT_AUTHZ,
        "authzen": {
            "listen": "0.0.0.0:8181",
            "namespace": "Platform",
            "policy_decision_point": "https://pdp.example.com",
            "default_page_limit": 20,
            "max_page_limit": 200,
            "max_search_evaluations": 5000,
        },
    }
    assert ports_named(one(objects, "Deployment"), "authzen") == [8181]
    assert ports_named(one(objects, "Service"), "authzen") == [8181]
    # Let in the way the gRPC port is, from its own list of peers.
    ingress = one(objects, "NetworkPolicy")["spec"]["ingress"]
    rules = {r["ports"][0]["port"]: r for r in ingress}
    assert sorted(rules) == [8181, 9464, 50051], ingress
    assert rules[8181] == {"ports": [{"port": 8181, "protocol": "TCP"}], "from": AUTHZEN_FROM}
    assert rules[50051]["from"] == ALL_ON["networkPolicy"]["grpcFrom"]
    # With TLS it is HTTPS, and its allow-list becomes a flag like the others.
    objects = render(AUTHZEN_TLS)
    port = {p["name"]: p for p in one(objects, "Service")["spec"]["ports"]}["authzen"]
    assert port["appProtocol"] == "https", port
    args = containers(one(objects, "Deployment"))[0]["args"]
    assert tls_flags(args)[-1] == f"--tls-authzen-callers={CLIENT_ID}", tls_flags(args)
    # Its settings roll the pods; a change to them changes the config file's checksum.
    annotations = lambda v: one(render(v), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert checksum({"authzen": {"enabled": True}}) != checksum({})
    assert annotations(AUTHZEN_ON)["checksum/config"] != annotations(ALL_ON)["checksum/config"]
    changed = {**AUTHZEN_ON, "authzen": {**AUTHZEN, "maxPageLimit": 300}}
    assert annotations(changed)["checksum/config"] != annotations(AUTHZEN_ON)["checksum/config"]


@check
def authzen_mistakes_are_refused():
    on = {"enabled": True}
    refused({"authzen": {**on, "lisen": "0.0.0.0:8080"}}, "lisen")
    refused({"authzen": {**on, "port": 0}}, "port")
    refused({"authzen": {**on, "port": "8080"}}, "port")
    refused({"authzen": {**on, "namespace": "App::"}}, "namespace")
    refused({"authzen": {**on, "namespace": "my-app"}}, "namespace")
    refused({"authzen": {**on, "policyDecisionPoint": "https://pdp.example.com/"}}, "policyDecisionPoint")
    refused({"authzen": {**on, "policyDecisionPoint": "pdp.example.com"}}, "policyDecisionPoint")
    refused({"authzen": {**on, "maxPageLimit": 0}}, "maxPageLimit")
    refused({"authzen": {**on, "defaultPageLimit": 2.5}}, "defaultPageLimit")
    refused({"authzen": {**on, "maxSearchEvaluations": "many"}}, "maxSearchEvaluations")
    refused({"authzen": {**on, "port": 50051}}, "authzen.port (50051) must differ")
    refused({"authzen": {**on, "port": 9464}}, "authzen.port (9464) must differ")
    refused({"networkPolicy": {"authzenFrom": "everyone"}}, "authzenFrom")
    server_only = {"enabled": True, "secretName": "pdp-tls"}
    refused({"tls": {**server_only, "authzenCallers": [CLIENT_ID]}}, "tls.authzenCallers needs tls.mutual")
    refused({"tls": {**server_only, "mutual": True, "authzenCallers": []}}, "authzenCallers")
    refused({"tls": {**server_only, "mutual": True, "authzenCallers": ["a,b"]}}, "authzenCallers")


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


def pod_spec(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def tls_flags(args):
    return [a for a in args if a.startswith("--tls-")]


@check
def tls_mounts_the_whole_secret_folder_read_only_and_names_its_files():
    objects = render(TLS_ON)
    pod = pod_spec(objects)
    secret = {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]
    assert secret["secretName"] == "pdp-tls", secret
    assert "items" not in secret, "the whole Secret is mounted, ca.crt included"
    # Owner (root) and group read; fsGroup makes the group the server's.
    assert secret["defaultMode"] == 0o440, oct(secret["defaultMode"])
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    pdp = pod["containers"][0]
    mounts = [m for m in pdp["volumeMounts"] if m["name"] == "tls"]
    # A subPath mount would never see a renewal: only a folder follows the `..data` swap.
    assert mounts == [{"name": "tls", "mountPath": "/etc/cedar-pdp/tls", "readOnly": True}], mounts
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            if mount["name"] == "tls":
                assert "subPath" not in mount and "subPathExpr" not in mount, container["name"]
    assert tls_flags(pdp["args"]) == [
        "--tls-cert=/etc/cedar-pdp/tls/tls.crt",
        "--tls-key=/etc/cedar-pdp/tls/tls.key",
        "--tls-client-ca=/etc/cedar-pdp/tls/ca.crt",
        f"--tls-authorizer-callers={CLIENT_ID},batch.test.example",
        "--tls-ext-authz-callers=spiffe://test.example/ns/istio-system/sa/ingress",
    ], tls_flags(pdp["args"])
    # Server TLS only: no client CA, no allow-lists; one list set: only its flag.
    server_only = render({"tls": {"enabled": True, "secretName": "pdp-tls"}})
    assert tls_flags(containers(one(server_only, "Deployment"))[0]["args"]) == [
        "--tls-cert=/etc/cedar-pdp/tls/tls.crt",
        "--tls-key=/etc/cedar-pdp/tls/tls.key",
    ]
    one_list = {"enabled": True, "secretName": "pdp-tls", "mutual": True, "extAuthzCallers": ["gw.test.example"]}
    args = containers(one(render({"tls": one_list}), "Deployment"))[0]["args"]
    assert tls_flags(args)[2:] == [
        "--tls-client-ca=/etc/cedar-pdp/tls/ca.crt",
        "--tls-ext-authz-callers=gw.test.example",
    ], tls_flags(args)
    # Off by default: no volume, no flags.
    plain = render({})
    assert "tls" not in {v["name"] for v in pod_spec(plain)["volumes"]}
    assert not tls_flags(containers(one(plain, "Deployment"))[0]["args"])


PROBES = ["startupProbe", "livenessProbe", "readinessProbe"]


@check
def probes_switch_to_http_on_the_metrics_port_with_tls():
    pdp = containers(one(render(TLS_ON), "Deployment"))[0]
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert pdp[probe].get("httpGet") == {"path": path, "port": 9464}, (probe, pdp[probe])
    assert {p["name"]: p["containerPort"] for p in pdp["ports"]}["http-metrics"] == 9464
    # The same timings as the gRPC probes; only the handler changes.
    plain = containers(one(render({}), "Deployment"))[0]
    for probe in PROBES:
        assert "grpc" not in pdp[probe], probe
        assert "httpGet" not in plain[probe] and "grpc" in plain[probe], probe
        timings = lambda p: {k: v for k, v in p.items() if k not in ("grpc", "httpGet")}
        assert timings(pdp[probe]) == timings(plain[probe]), probe
    moved = containers(one(render({**TLS_ON, "service": {"metricsPort": 9100}}), "Deployment"))[0]
    for probe in PROBES:
        assert moved[probe]["httpGet"]["port"] == 9100, probe
    assert "--metrics-listen=0.0.0.0:9100" in moved["args"]


@check
def a_renewed_tls_secret_does_not_roll_the_pods():
    # The chart never reads the Secret (no lookup, no checksum of it): a renewal reaches
    # the running server through the mounted folder, without a rollout.
    for template in (CHART / "templates").iterdir():
        assert "lookup" not in template.read_text(), template.name
    annotations = one(render(TLS_ON), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"checksum/args", "checksum/config"}, annotations
    # Turning TLS on, or mutual, changes the flags and so rolls the pods.
    server_only = {"enabled": True, "secretName": "pdp-tls"}
    sums = [
        checksum({}),
        checksum({"tls": server_only}),
        checksum({"tls": {**server_only, "mutual": True}}),
        checksum({"tls": {**server_only, "mutual": True, "authorizerCallers": [CLIENT_ID]}}),
    ]
    assert len(set(sums)) == len(sums), sums


def flag(args, name):
    found = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(found) == 1, (name, args)
    return found[0]


@check
def the_drain_reaches_the_server_within_the_termination_grace_period():
    objects = render({})
    args = containers(one(objects, "Deployment"))[0]["args"]
    drain = int(flag(args, "--drain-seconds"))
    grace = int(flag(args, "--shutdown-grace-seconds"))
    assert drain > 0, "Services and meshes get time to stop sending before the port closes"
    assert pod_spec(objects)["terminationGracePeriodSeconds"] >= drain + grace + 5
    assert checksum({"config": {"drainSeconds": 8}}) != checksum({})
    # Exactly drain + grace + 5 is enough.
    at_limit = {"config": {"drainSeconds": 10, "shutdownGraceSeconds": 15}}
    assert flag(containers(one(render(at_limit), "Deployment"))[0]["args"], "--drain-seconds") == "10"


@check
def tls_and_shutdown_mistakes_are_refused():
    refused({"tls": {"enabled": True}}, "tls.enabled needs tls.secretName")
    refused({"tls": {"mutual": True}}, "tls.mutual needs tls.enabled")
    server_only = {"enabled": True, "secretName": "pdp-tls"}
    refused({"tls": {**server_only, "authorizerCallers": [CLIENT_ID]}}, "tls.authorizerCallers needs tls.mutual")
    refused({"tls": {**server_only, "extAuthzCallers": [CLIENT_ID]}}, "tls.extAuthzCallers needs tls.mutual")
    refused({"tls": {"authorizerCallers": [CLIENT_ID]}}, "tls.authorizerCallers needs tls.mutual")
    mutual = {**server_only, "mutual": True}
    # An empty list could be read as "nobody", but no flag can say that: refused.
    refused({"tls": {**mutual, "authorizerCallers": []}}, "authorizerCallers")
    refused({"tls": {**mutual, "extAuthzCallers": ["a.example,b.example"]}}, "extAuthzCallers")
    refused({"tls": {**mutual, "extAuthzCallers": [" " + CLIENT_ID]}}, "extAuthzCallers")
    refused({"tls": {**mutual, "authorizerCallers": CLIENT_ID}}, "authorizerCallers")
    refused({"tls": {"enabled": "yes"}}, "enabled")
    refused({"tls": {"certManager": {"issuer": "ca"}}}, "certManager")
    refused({"config": {"drainSeconds": -1}}, "drainSeconds")
    refused({"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds (15) must be at least")
    refused({"config": {"drainSeconds": 30}}, "i.e. 45")


def local_args(args, policies, config=None, tls_mount=None, tls_dir=None):
    """The rendered arguments, on this machine: the local policy directory, config file
    and Secret folder, and loopback ports the OS picks."""
    local = []
    for arg in args:
        name, _, value = arg.partition("=")
        if name == "--policies":
            arg = f"--policies={policies}"
        elif name == "--listen":
            arg = "--listen=127.0.0.1:0"
        elif name == "--metrics-listen":
            arg = "--metrics-listen=127.0.0.1:0"
        elif name == "--config":
            arg = f"--config={config}"
        elif name in ("--tls-cert", "--tls-key", "--tls-client-ca"):
            # Every TLS file is a key of the mounted Secret.
            assert tls_mount and value.startswith(tls_mount + "/"), (arg, tls_mount)
            arg = f"{name}={tls_dir / value[len(tls_mount) + 1:]}"
        local.append(arg)
    return local


def write_rendered_policies(objects, tmp):
    files = objects[("ConfigMap", "pdp-cedar-pdp-policies")]["data"]
    assert set(files) == set(EXAMPLE_FILES), sorted(files)
    policies = pathlib.Path(tmp) / "policies"
    policies.mkdir()
    for name, text in files.items():
        (policies / name).write_text(text)
    config = pathlib.Path(tmp) / "config.toml"
    config.write_text(objects[("ConfigMap", "pdp-cedar-pdp-config")]["data"]["config.toml"])
    return policies, config


class Server:
    """The binary, started with `args`; a thread collects its JSON log lines."""

    def __init__(self, binary, args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEDAR_PDP_")}
        self.proc = subprocess.Popen(
            [binary, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, message, timeout=30):
        """The first log record with this message."""
        deadline = time.time() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {message!r} line:\n" + "".join(self.seen))
            self.seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == message:
                return record

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@check
def the_binary_starts_with_the_rendered_arguments_and_policies(binary=None):
    binary = binary or BINARY
    objects = render(ALL_ON)
    args = containers(one(objects, "Deployment"))[0]["args"]
    with tempfile.TemporaryDirectory() as tmp:
        policies, config = write_rendered_policies(objects, tmp)
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
        server = Server(binary, local_args(args, policies, config))
        try:
            listening = server.wait_for("listening")
            assert listening["policy_count"] == count, (count, listening)
        finally:
            server.stop()


def openssl(*args, cwd):
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def make_certificates(folder):
    """A throwaway CA, two server certificates (the second for a renewal) and a client
    certificate with a SPIFFE id, made by the openssl CLI: EC P-256, valid one day."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=chart-test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    leaves = {
        "server": ("serverAuth", "DNS:localhost,IP:127.0.0.1", 1001),
        "renewed": ("serverAuth", "DNS:localhost,IP:127.0.0.1", 1002),
        "client": ("clientAuth", f"URI:{CLIENT_ID}", 1003),
    }
    for name, (usage, san, serial) in leaves.items():
        (folder / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\n"
            f"subjectAltName={san}\n"
        )
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "1", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt",
            cwd=folder,
        )
    return {name: serial for name, (_, _, serial) in leaves.items()}


def publish_secret(mount, pki, server, generation):
    """Writes the Secret's keys into `mount` the way the kubelet does: files in a
    timestamped folder, the `..data` link swapped to it atomically, and each key a link
    through `..data` (made once)."""
    version = mount / f"..2026_01_01_00_00_0{generation}.000000000"
    version.mkdir()
    shutil.copy(pki / f"{server}.crt", version / "tls.crt")
    shutil.copy(pki / f"{server}.key", version / "tls.key")
    shutil.copy(pki / "ca.crt", version / "ca.crt")
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(version.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        if not (mount / key).is_symlink():
            os.symlink(f"..data/{key}", mount / key)
    if old:
        shutil.rmtree(mount / old)


def tls_handshake(port, pki, client_cert):
    """The server certificate's serial number and the negotiated ALPN protocol, over a
    handshake that trusts the test CA, with or without the client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki / "ca.crt")
    context.set_alpn_protocols(["h2"])
    if client_cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            # TLS 1.3 refuses a missing client certificate after the client's Finished:
            # read the server's first bytes (its HTTP/2 SETTINGS) to see the verdict.
            first = conn.recv(9)
            if not first:
                raise ConnectionError("closed without a word")
            return int(conn.getpeercert()["serialNumber"], 16), conn.selected_alpn_protocol()


def http_status(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def port_of(address):
    return int(address.rsplit(":", 1)[1])


@check
def the_binary_serves_mutual_tls_from_a_folder_laid_out_like_the_secret(binary=None):
    binary = binary or BINARY
    assert shutil.which("openssl"), "the openssl CLI makes the test's throwaway certificates"
    values = {**TLS_ON, "config": {**TLS_ON["config"], "drainSeconds": 3}}
    objects = render(values)
    pdp = containers(one(objects, "Deployment"))[0]
    tls_mount = {m["name"]: m["mountPath"] for m in pdp["volumeMounts"]}["tls"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        policies, config = write_rendered_policies(objects, tmp)
        pki = tmp / "pki"
        pki.mkdir()
        serials = make_certificates(pki)
        mount = tmp / "tls"
        mount.mkdir()
        publish_secret(mount, pki, "server", 1)
        args = local_args(pdp["args"], policies, config, tls_mount, mount)
        assert f"--tls-client-ca={mount}/ca.crt" in args, args
        server = Server(binary, args)
        try:
            listening = server.wait_for("listening")
            tls = server.wait_for("gRPC port serves TLS 1.2/1.3 only")
            assert tls["mutual"] is True, tls
            grpc_port = port_of(listening["addr"])
            metrics_port = port_of(listening["metrics_addr"])
            # What the probes ask, on the plain-HTTP metrics port.
            assert http_status(metrics_port, "/healthz") == 200
            assert http_status(metrics_port, "/readyz") == 200
            # The gRPC port speaks TLS with h2, and only to a client with a certificate.
            assert tls_handshake(grpc_port, pki, client_cert=True) == (serials["server"], "h2")
            try:
                tls_handshake(grpc_port, pki, client_cert=False)
            except (ssl.SSLError, ConnectionError, socket.timeout):
                pass
            else:
                raise AssertionError("a client without a certificate was served")
            # A renewal, as the kubelet writes it into the mounted folder: picked up
            # without a restart.
            publish_secret(mount, pki, "renewed", 2)
            deadline = time.time() + 10
            while tls_handshake(grpc_port, pki, client_cert=True)[0] != serials["renewed"]:
                assert time.time() < deadline, "the renewed certificate was not picked up"
                time.sleep(0.1)
            assert server.proc.poll() is None
            # SIGTERM: /readyz turns 503 at once while the port still answers (drain).
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 3
            while http_status(metrics_port, "/readyz") != 503:
                assert time.time() < deadline, "/readyz still 200 after SIGTERM"
                time.sleep(0.05)
            assert tls_handshake(grpc_port, pki, client_cert=True)[1] == "h2", "drain keeps serving"
            server.wait_for("stopped", timeout=20)
            assert server.proc.wait(timeout=10) == 0
        finally:
            server.stop()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_authzen_config(config, port):
    """The rendered config file with the AuthZEN listener on a loopback port instead."""
    text = config.read_text()
    rendered = 'listen = "0.0.0.0:8080"'
    assert text.count(rendered) == 1, text
    config.write_text(text.replace(rendered, f'listen = "127.0.0.1:{port}"'))


def authzen_metadata(port, context=None, timeout=10):
    """Status and body of GET /.well-known/authzen-configuration, once the port answers."""
    deadline = time.time() + timeout
    while True:
        if context:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/.well-known/authzen-configuration")
            response = conn.getresponse()
            return response.status, response.read()
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


@check
def the_binary_serves_authzen_with_the_rendered_config(binary=None):
    """Needs a binary that knows the [authzen] table and --tls-authzen-callers."""
    binary = binary or BINARY
    assert shutil.which("openssl"), "the openssl CLI makes the test's throwaway certificates"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEDAR_PDP_")}
    for values in [AUTHZEN_ON, AUTHZEN_TLS]:
        objects = render(values)
        pdp = containers(one(objects, "Deployment"))[0]
        tls_mount = {m["name"]: m["mountPath"] for m in pdp["volumeMounts"]}.get("tls")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            policies, config = write_rendered_policies(objects, tmp)
            # validate --config checks the [authzen] table with the [ext_authz] one.
            validated = subprocess.run(
                [binary, "validate", str(policies), f"--config={config}"],
                capture_output=True,
                text=True,
                env=env,
            )
            assert validated.returncode == 0, validated.stdout + validated.stderr
            port = free_port()
            local_authzen_config(config, port)
            context = None
            mount = None
            if tls_mount:
                pki = tmp / "pki"
                pki.mkdir()
                make_certificates(pki)
                mount = tmp / "tls"
                mount.mkdir()
                publish_secret(mount, pki, "server", 1)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(pki / "ca.crt")
            server = Server(binary, local_args(pdp["args"], policies, config, tls_mount, mount))
            try:
                server.wait_for("listening")
                if context:
                    # Mutual TLS on the AuthZEN port too: no certificate, no answer.
                    try:
                        authzen_metadata(port, context)
                    except (OSError, http.client.HTTPException):
                        pass
                    else:
                        raise AssertionError("a client without a certificate was served")
                    context.load_cert_chain(pki / "client.crt", pki / "client.key")
                status, body = authzen_metadata(port, context)
                assert status == 200, (status, body)
                metadata = json.loads(body)
                assert metadata["policy_decision_point"] == "https://pdp.example.com", metadata
            finally:
                server.stop()


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
