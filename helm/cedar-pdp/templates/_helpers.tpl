{{/* Chart name, shortened to the 63 characters Kubernetes allows. */}}
{{- define "cedar-pdp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "cedar-pdp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "cedar-pdp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cedar-pdp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods. */}}
{{- define "cedar-pdp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cedar-pdp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "cedar-pdp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cedar-pdp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the policy directory (chart-made or existing). */}}
{{- define "cedar-pdp.policiesConfigMap" -}}
{{- if eq .Values.policies.source "existingConfigMap" }}
{{- required "policies.existingConfigMap is required when policies.source is existingConfigMap" .Values.policies.existingConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "cedar-pdp.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the server reads its policy directory. git-sync publishes the checkout through
the symlink `current`, swapped atomically on each sync; the watcher follows the swap. */}}
{{- define "cedar-pdp.policiesPath" -}}
{{- if eq .Values.policies.source "gitSync" }}
{{- $sub := trimAll "/" .Values.policies.gitSync.subPath }}
{{- if $sub }}/git/current/{{ $sub }}{{ else }}/git/current{{ end }}
{{- else }}/etc/cedar-pdp/policies{{ end }}
{{- end }}

{{/* Security context every container of the chart runs with. */}}
{{- define "cedar-pdp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Where the TLS Secret is mounted: a whole folder, so the kubelet's atomic `..data`
swap on a renewal reaches the files (a subPath mount never updates). */}}
{{- define "cedar-pdp.tlsDir" -}}
/etc/cedar-pdp/tls
{{- end }}

{{/* Refuses combinations of values that would not work, before anything is applied. */}}
{{- define "cedar-pdp.checkValues" -}}
{{- $t := .Values.tls }}
{{- if and $t.enabled (not $t.secretName) }}
{{- fail "tls.enabled needs tls.secretName: an existing Secret of type kubernetes.io/tls (tls.crt, tls.key, and ca.crt for tls.mutual)" }}
{{- end }}
{{- if and $t.mutual (not $t.enabled) }}
{{- fail "tls.mutual needs tls.enabled: true" }}
{{- end }}
{{- range $key := list "authorizerCallers" "extAuthzCallers" "authzenCallers" }}
{{- if and (not (kindIs "invalid" (index $t $key))) (not $t.mutual) }}
{{- fail (printf "tls.%s needs tls.mutual: true (without client certificates there is no caller identity to check); leave it unset (null) otherwise" $key) }}
{{- end }}
{{- end }}
{{- $a := .Values.authzen }}
{{- if and $a.enabled (has (int $a.port) (list (int .Values.service.grpcPort) (int .Values.service.metricsPort))) }}
{{- fail (printf "authzen.port (%d) must differ from service.grpcPort and service.metricsPort" (int $a.port)) }}
{{- end }}
{{- $c := .Values.config }}
{{- $margin := 5 }}
{{- $needed := add (int64 $c.drainSeconds) (int64 $c.shutdownGraceSeconds) $margin }}
{{- if lt (int64 .Values.terminationGracePeriodSeconds) (int64 $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.drainSeconds (%d) + config.shutdownGraceSeconds (%d) + %d, i.e. %d: otherwise Kubernetes kills pods before calls in flight finish" (int64 .Values.terminationGracePeriodSeconds) (int64 $c.drainSeconds) (int64 $c.shutdownGraceSeconds) $margin (int64 $needed)) }}
{{- end }}
{{- end }}

{{/* The arguments of `cedar-pdp serve`, one per line, each quoted. */}}
{{- define "cedar-pdp.args" -}}
{{- $c := .Values.config }}
{{- $t := .Values.tls }}
- serve
- {{ printf "--policies=%s" (include "cedar-pdp.policiesPath" .) | quote }}
- {{ printf "--listen=0.0.0.0:%d" (int .Values.service.grpcPort) | quote }}
- {{ printf "--metrics-listen=0.0.0.0:%d" (int .Values.service.metricsPort) | quote }}
- {{ printf "--policy-validation=%s" $c.policyValidation | quote }}
- {{ printf "--validate-requests=%t" $c.validateRequests | quote }}
- {{ printf "--on-forbid-error=%s" $c.onForbidError | quote }}
- {{ printf "--request-entities=%s" $c.requestEntities | quote }}
- {{ printf "--log-format=%s" $c.logFormat | quote }}
- {{ printf "--log-level=%s" $c.logLevel | quote }}
- {{ printf "--drain-seconds=%d" (int64 $c.drainSeconds) | quote }}
- {{ printf "--shutdown-grace-seconds=%d" (int64 $c.shutdownGraceSeconds) | quote }}
- {{ printf "--max-message-bytes=%d" (int64 $c.limits.maxMessageBytes) | quote }}
- {{ printf "--max-request-entities=%d" (int64 $c.limits.maxRequestEntities) | quote }}
- {{ printf "--max-request-parent-edges=%d" (int64 $c.limits.maxRequestParentEdges) | quote }}
- {{ printf "--max-request-ancestor-closure=%d" (int64 $c.limits.maxRequestAncestorClosure) | quote }}
- {{ printf "--max-store-parent-edges=%d" (int64 $c.limits.maxStoreParentEdges) | quote }}
- {{ printf "--max-store-ancestor-closure=%d" (int64 $c.limits.maxStoreAncestorClosure) | quote }}
- {{ printf "--max-batch-items=%d" (int64 $c.limits.maxBatchItems) | quote }}
- {{ printf "--max-value-depth=%d" (int64 $c.limits.maxValueDepth) | quote }}
- {{ printf "--max-ancestor-depth=%d" (int64 $c.limits.maxAncestorDepth) | quote }}
- {{ printf "--max-store-entities=%d" (int64 $c.limits.maxStoreEntities) | quote }}
- {{ printf "--max-policy-file-bytes=%d" (int64 $c.limits.maxPolicyFileBytes) | quote }}
- {{ printf "--request-timeout-ms=%d" (int64 $c.limits.requestTimeoutMs) | quote }}
- {{ printf "--max-string-bytes=%d" (int64 $c.limits.maxStringBytes) | quote }}
- {{ printf "--max-connections=%d" (int64 $c.limits.maxConnections) | quote }}
- {{ printf "--max-concurrent-streams=%d" (int64 $c.limits.maxConcurrentStreams) | quote }}
- {{ printf "--max-concurrent-calls=%d" (int64 $c.limits.maxConcurrentCalls) | quote }}
{{- if gt (int64 $c.limits.decisionThreads) 0 }}
- {{ printf "--decision-threads=%d" (int64 $c.limits.decisionThreads) | quote }}
{{- end }}
- {{ printf "--decision-cache-entries=%d" (int64 $c.limits.decisionCacheEntries) | quote }}
- {{ printf "--audit-sink=%s" $c.audit.sink | quote }}
- {{ printf "--audit-allow-sample-rate=%v" $c.audit.allowSampleRate | quote }}
{{- with $c.audit.contextKeys }}
- {{ printf "--audit-context-keys=%s" (join "," .) | quote }}
{{- end }}
{{- if include "cedar-pdp.hasConfigFile" . }}
- {{ printf "--config=%s" (include "cedar-pdp.configFile" .) | quote }}
{{- end }}
{{- if $t.enabled }}
{{- $dir := include "cedar-pdp.tlsDir" . }}
- {{ printf "--tls-cert=%s/tls.crt" $dir | quote }}
- {{ printf "--tls-key=%s/tls.key" $dir | quote }}
{{- if $t.mutual }}
- {{ printf "--tls-client-ca=%s/ca.crt" $dir | quote }}
{{- end }}
{{- with $t.authorizerCallers }}
- {{ printf "--tls-authorizer-callers=%s" (join "," .) | quote }}
{{- end }}
{{- with $t.extAuthzCallers }}
- {{ printf "--tls-ext-authz-callers=%s" (join "," .) | quote }}
{{- end }}
{{- with $t.authzenCallers }}
- {{ printf "--tls-authzen-callers=%s" (join "," .) | quote }}
{{- end }}
{{- end }}
{{- with .Values.tracing }}
{{- if .otlpEndpoint }}
- {{ printf "--otlp-endpoint=%s" .otlpEndpoint | quote }}
- {{ printf "--trace-sample-ratio=%v" .sampleRatio | quote }}
- {{ printf "--trace-queue-capacity=%d" (int64 .queueCapacity) | quote }}
{{- end }}
{{- end }}
{{- with .Values.shadow }}
{{- if .existingConfigMap }}
- "--shadow-policies=/etc/cedar-pdp/shadow-policies"
- {{ printf "--shadow-sample-rate=%v" .sampleRate | quote }}
- {{ printf "--shadow-queue-capacity=%d" (int64 .queueCapacity) | quote }}
{{- end }}
{{- end }}
{{- range $c.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Where the rendered config file is mounted, when there is one. */}}
{{- define "cedar-pdp.configFile" -}}
/etc/cedar-pdp/config/config.toml
{{- end }}

{{/* Whether there is a config file: "true" or empty. */}}
{{- define "cedar-pdp.hasConfigFile" -}}
{{- if or .Values.config.extAuthz .Values.authzen.enabled }}true{{ end }}
{{- end }}

{{/* The config file: the [ext_authz] mapping (it has no flag) and, when enabled, the
[authzen] table with only the keys that are set (the server's defaults apply to the
others). */}}
{{- define "cedar-pdp.configToml" -}}
{{- $file := dict }}
{{- with .Values.config.extAuthz }}
{{- $_ := set $file "ext_authz" . }}
{{- end }}
{{- $a := .Values.authzen }}
{{- if $a.enabled }}
{{- $table := dict "listen" (printf "0.0.0.0:%d" (int $a.port)) }}
{{- with $a.namespace }}
{{- $_ := set $table "namespace" . }}
{{- end }}
{{- with $a.policyDecisionPoint }}
{{- $_ := set $table "policy_decision_point" . }}
{{- end }}
{{- range $key, $name := dict "defaultPageLimit" "default_page_limit" "maxPageLimit" "max_page_limit" "maxSearchEvaluations" "max_search_evaluations" }}
{{- if not (kindIs "invalid" (index $a $key)) }}
{{- $_ := set $table $name (int64 (index $a $key)) }}
{{- end }}
{{- end }}
{{- $_ := set $file "authzen" $table }}
{{- end }}
{{- toToml $file }}
{{- end }}

{{/* A git-sync container: the sidecar that follows the repository, or (oneTime) the
init container that makes the first checkout. HTTPS only; credentials come from the
secret's `username` and `password` keys. */}}
{{- define "cedar-pdp.gitSync" -}}
{{- $g := .root.Values.policies.gitSync }}
- name: {{ .name }}
  image: {{ printf "%s:%s" $g.image.repository $g.image.tag | quote }}
  imagePullPolicy: {{ $g.image.pullPolicy }}
  args:
    - {{ printf "--repo=%s" (required "policies.gitSync.repo is required when policies.source is gitSync" $g.repo) | quote }}
    - {{ printf "--ref=%s" $g.ref | quote }}
    - "--root=/git"
    - "--link=current"
    - {{ printf "--period=%s" $g.period | quote }}
    {{- if .oneTime }}
    - "--one-time"
    {{- end }}
    {{- range $g.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    # git writes its config under HOME; the root file system is read-only.
    - name: HOME
      value: /tmp
    {{- with $g.credentialsSecret }}
    - name: GITSYNC_USERNAME
      valueFrom:
        secretKeyRef:
          name: {{ . | quote }}
          key: username
    - name: GITSYNC_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ . | quote }}
          key: password
    {{- end }}
  resources:
    {{- toYaml $g.resources | nindent 4 }}
  securityContext:
    {{- include "cedar-pdp.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - name: git
      mountPath: /git
    - name: git-sync-tmp
      mountPath: /tmp
{{- end }}
