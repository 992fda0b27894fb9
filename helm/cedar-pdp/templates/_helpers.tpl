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

{{/* The arguments of `cedar-pdp serve`, one per line, each quoted. */}}
{{- define "cedar-pdp.args" -}}
{{- $c := .Values.config }}
- serve
- {{ printf "--policies=%s" (include "cedar-pdp.policiesPath" .) | quote }}
- {{ printf "--listen=0.0.0.0:%d" (int .Values.service.grpcPort) | quote }}
- {{ printf "--metrics-listen=0.0.0.0:%d" (int .Values.service.metricsPort) | quote }}
- {{ printf "--policy-validation=%s" $c.policyValidation | quote }}
- {{ printf "--validate-requests=%t" $c.validateRequests | quote }}
- {{ printf "--log-format=%s" $c.logFormat | quote }}
- {{ printf "--log-level=%s" $c.logLevel | quote }}
- {{ printf "--shutdown-grace-seconds=%d" (int64 $c.shutdownGraceSeconds) | quote }}
- {{ printf "--max-message-bytes=%d" (int64 $c.limits.maxMessageBytes) | quote }}
- {{ printf "--max-request-entities=%d" (int64 $c.limits.maxRequestEntities) | quote }}
- {{ printf "--max-batch-items=%d" (int64 $c.limits.maxBatchItems) | quote }}
- {{ printf "--max-value-depth=%d" (int64 $c.limits.maxValueDepth) | quote }}
- {{ printf "--max-ancestor-depth=%d" (int64 $c.limits.maxAncestorDepth) | quote }}
- {{ printf "--max-store-entities=%d" (int64 $c.limits.maxStoreEntities) | quote }}
- {{ printf "--request-timeout-ms=%d" (int64 $c.limits.requestTimeoutMs) | quote }}
- {{ printf "--audit-sink=%s" $c.audit.sink | quote }}
- {{ printf "--audit-allow-sample-rate=%v" $c.audit.allowSampleRate | quote }}
{{- with $c.audit.contextKeys }}
- {{ printf "--audit-context-keys=%s" (join "," .) | quote }}
{{- end }}
{{- range $c.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
