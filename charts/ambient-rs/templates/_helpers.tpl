{{/* An image of ours: <hub>/<name>:<tag>. */}}
{{- define "ambient.image" -}}
{{ trimSuffix "/" .root.Values.hub }}/{{ .name }}:{{ .root.Values.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The labels every object carries (uninstall deletes only those). */}}
{{- define "ambient.labels" -}}
app: {{ . }}
app.kubernetes.io/part-of: ambient-rs
{{- end -}}

{{/* RUST_LOG, when logLevel is set. */}}
{{- define "ambient.logEnv" -}}
{{- if .Values.logLevel }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}
{{- end -}}

{{/* The node capabilities ztunnel and the agent need (see ambientctl install). */}}
{{- define "ambient.nodeSecurity" -}}
allowPrivilegeEscalation: true
capabilities:
  add:
  - NET_ADMIN
  - SYS_ADMIN
  - NET_RAW
  {{- range .extra }}
  - {{ . }}
  {{- end }}
  drop:
  - ALL
privileged: false
readOnlyRootFilesystem: true
runAsGroup: 1337
runAsNonRoot: false
runAsUser: 0
{{- end -}}
