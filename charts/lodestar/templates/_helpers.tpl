{{- define "lodestar.fullname" -}}{{ .Release.Name }}-lodestar{{- end -}}

{{- define "lodestar.labels" -}}
app.kubernetes.io/name: lodestar
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "lodestar.brokerUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ include "lodestar.fullname" . }}-redis:6379/0{{- else -}}{{ .Values.brokerUrl }}{{- end -}}
{{- end -}}

{{/* env entries from a map, plus the device when a GPU is asked for */}}
{{- define "lodestar.env" -}}
{{- range $k, $v := .env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- if gt (int .gpu) 0 }}
- name: LODESTAR_DEVICE
  value: cuda
{{- end }}
{{- end -}}

{{- define "lodestar.resources" -}}
{{- $r := deepCopy .resources -}}
{{- if gt (int .gpu) 0 -}}
{{- $limits := default dict $r.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" .gpu -}}
{{- $_ := set $r "limits" $limits -}}
{{- end -}}
{{ toYaml $r }}
{{- end -}}

{{/* Milvus connection (backend milvus) for the server and the query replicas */}}
{{- define "lodestar.milvusEnv" -}}
{{- if .Values.milvus.uri }}
- name: LODESTAR_MILVUS_URI
  value: {{ .Values.milvus.uri | quote }}
{{- if .Values.milvus.tokenSecret }}
- name: LODESTAR_MILVUS_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .Values.milvus.tokenSecret | quote }}, key: token}}
{{- end }}
{{- end }}
{{- end -}}
