{{/* Names: cut so that every object name (and a StatefulSet's pod labels) stays within 63 characters. */}}
{{- define "lodestar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; 52 characters at most, so that a suffix and a StatefulSet's revision hash fit. */}}
{{- define "lodestar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* (dict "ctx" $ "component" "embed") -> <fullname>-embed, within 63 characters */}}
{{- define "lodestar.component" -}}
{{- $base := include "lodestar.fullname" .ctx | trunc (int (sub 62 (len .component))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base .component -}}
{{- end -}}

{{- define "lodestar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lodestar.labels" -}}
helm.sh/chart: {{ include "lodestar.chart" . }}
app.kubernetes.io/name: {{ include "lodestar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lodestar
{{- end -}}

{{/* (dict "ctx" $ "component" "server") */}}
{{- define "lodestar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lodestar.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lodestar.componentLabels" -}}
{{ include "lodestar.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lodestar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lodestar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* (dict "ctx" $ "role" .Values.server): the CUDA image for a role that requests a GPU */}}
{{- define "lodestar.image" -}}
{{- $img := .ctx.Values.image -}}
{{- $tag := default .ctx.Chart.AppVersion $img.tag -}}
{{- if gt (int .role.gpu) 0 -}}
{{- $tag = default (printf "%s-cuda" $tag) $img.cudaTag -}}
{{- end -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}

{{- define "lodestar.redisHost" -}}
{{- if .Values.redis.enabled -}}{{ include "lodestar.component" (dict "ctx" . "component" "redis") }}{{- else -}}{{ .Values.redis.external.host }}{{- end -}}
{{- end -}}

{{- define "lodestar.redisSecret" -}}
{{- default (include "lodestar.component" (dict "ctx" . "component" "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* The broker URL; the password comes from REDIS_PASSWORD, which Kubernetes expands in $(...) */}}
{{- define "lodestar.brokerUrl" -}}
{{- $r := .Values.redis -}}
{{- $scheme := ternary "rediss" "redis" (and (not $r.enabled) $r.external.tls) -}}
{{- $port := ternary 6379 (int $r.external.port) $r.enabled -}}
{{- $db := ternary 0 (int $r.external.database) $r.enabled -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" $r.auth.enabled -}}
{{- printf "%s://%s%s:%d/%d" $scheme $auth (include "lodestar.redisHost" .) $port $db -}}
{{- end -}}

{{- define "lodestar.tlsSecret" -}}
{{- default (include "lodestar.component" (dict "ctx" . "component" "tls")) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "lodestar.authSecret" -}}
{{- default (include "lodestar.component" (dict "ctx" . "component" "tokens")) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Refusals: values that would install but not work. */}}
{{- define "lodestar.validate" -}}
{{- if and (gt (int .Values.server.replicas) 1) (not .Values.milvus.uri) -}}
{{- fail (printf "server.replicas is %d, but collections and jobs live on each server pod's own volume, so several servers would split them: keep server.replicas at 1, scale reads with embed.replicas, or set milvus.uri (an external collection engine servers share)" (int .Values.server.replicas)) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- fail "tls.enabled needs a certificate: set tls.existingSecret (a kubernetes.io/tls Secret with tls.crt, tls.key, ca.crt) or tls.certManager.enabled with tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (an Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (or (not .Values.auth.tokensJson) (not .Values.auth.workerToken)) -}}
{{- fail "auth.enabled needs auth.existingSecret (keys tokens.json, worker-token) or both auth.tokensJson and auth.workerToken (`lodestar token create --scopes worker`)" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.host) .Values.worker.enabled -}}
{{- fail "workers need a broker: set redis.enabled true, or redis.external.host" -}}
{{- end -}}
{{- if and .Values.worker.keda.enabled (not .Values.worker.enabled) -}}
{{- fail "worker.keda.enabled needs worker.enabled" -}}
{{- end -}}
{{- end -}}

{{/* Pod-level spec every Lodestar pod shares. (dict "ctx" $ "role" .Values.server) */}}
{{- define "lodestar.podSpec" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "lodestar.serviceAccountName" $ctx }}
automountServiceAccountToken: false
securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ .role.terminationGracePeriodSeconds }}
{{- with .role.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Volumes every Lodestar pod has: writable scratch (the root filesystem is read-only), TLS, tokens. */}}
{{- define "lodestar.volumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- if .ctx.Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ include "lodestar.tlsSecret" .ctx }}}
{{- end }}
{{- if and .ctx.Values.auth.enabled .tokens }}
- name: tokens
  secret:
    secretName: {{ include "lodestar.authSecret" .ctx }}
    items: [{key: tokens.json, path: tokens.json}]
{{- end }}
{{- with .ctx.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lodestar.volumeMounts" -}}
- {name: tmp, mountPath: /tmp}
- {name: home, mountPath: /home/lodestar}
{{- if .ctx.Values.tls.enabled }}
- {name: tls, mountPath: /etc/lodestar/tls, readOnly: true}
{{- end }}
{{- if and .ctx.Values.auth.enabled .tokens }}
- {name: tokens, mountPath: /etc/lodestar/tokens, readOnly: true}
{{- end }}
{{- with .ctx.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Environment every Lodestar container shares: threads that follow the container's CPU limit,
     logs, the role's env map, the chart-wide extraEnv. (dict "ctx" $ "role" .Values.x "container" "x") */}}
{{- define "lodestar.env" -}}
{{- $limits := default dict .role.resources.limits -}}
{{- if hasKey $limits "cpu" }}
{{- range list "OMP_NUM_THREADS" "MKL_NUM_THREADS" "LODESTAR_TORCH_THREADS" }}
- name: {{ . }}
  valueFrom: {resourceFieldRef: {containerName: {{ $.container }}, resource: limits.cpu, divisor: "1"}}
{{- end }}
{{- end }}
- {name: LODESTAR_LOG_FORMAT, value: {{ .ctx.Values.logFormat | quote }}}
{{- if gt (int .role.gpu) 0 }}
- {name: LODESTAR_DEVICE, value: cuda}
{{- end }}
{{- range $k, $v := .role.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- with .ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* REDIS_PASSWORD then LODESTAR_BROKER_URL (which refers to it) */}}
{{- define "lodestar.brokerEnv" -}}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "lodestar.redisSecret" . }}, key: {{ .Values.redis.auth.existingSecretKey }}}}
{{- end }}
- {name: LODESTAR_BROKER_URL, value: {{ include "lodestar.brokerUrl" . | quote }}}
{{- end -}}

{{/* A gRPC server's TLS and tokens */}}
{{- define "lodestar.serverSecurityEnv" -}}
{{- if .Values.tls.enabled }}
- {name: LODESTAR_TLS_CERT, value: /etc/lodestar/tls/tls.crt}
- {name: LODESTAR_TLS_KEY, value: /etc/lodestar/tls/tls.key}
{{- if .Values.tls.clientAuth }}
- {name: LODESTAR_TLS_CLIENT_CA, value: /etc/lodestar/tls/ca.crt}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- {name: LODESTAR_TOKENS_FILE, value: /etc/lodestar/tokens/tokens.json}
{{- end }}
{{- end -}}

{{/* Probes of a gRPC server: kubelet's gRPC probe in plaintext; with TLS (which kubelet's probe cannot
     speak) `lodestar health` on 127.0.0.1, naming the Service the certificate carries.
     (dict "ctx" $ "role" .Values.server "name" "<service name>") */}}
{{- define "lodestar.grpcProbes" -}}
{{- $v := .ctx.Values -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{- with index $.role.probes $kind }}
{{ $kind }}Probe:
  {{- if $v.tls.enabled }}
  exec:
    command:
      - lodestar
      - health
      - --server
      - 127.0.0.1:{{ $v.port }}
      - --tls-ca
      - /etc/lodestar/tls/ca.crt
      - --tls-server-name
      - {{ $.name }}
      {{- if $v.tls.clientAuth }}
      - --tls-cert
      - /etc/lodestar/tls/tls.crt
      - --tls-key
      - /etc/lodestar/tls/tls.key
      {{- end }}
  {{- else }}
  grpc: {port: {{ $v.port }}}
  {{- end }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Container ports of a gRPC server */}}
{{- define "lodestar.ports" -}}
- {name: grpc, containerPort: {{ .Values.port }}, protocol: TCP}
{{- if .Values.metrics.enabled }}
- {name: metrics, containerPort: {{ .Values.metrics.port }}, protocol: TCP}
{{- end }}
{{- end -}}

{{/* Resources with the role's GPUs as nvidia.com/gpu limits */}}
{{- define "lodestar.resources" -}}
{{- $r := deepCopy (default dict .resources) -}}
{{- if gt (int .gpu) 0 -}}
{{- $limits := default dict $r.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpu) -}}
{{- $_ := set $r "limits" $limits -}}
{{- end -}}
{{ toYaml $r }}
{{- end -}}
