{{/* Object name prefix. */}}
{{- define "ferric.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ferric.labels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "ferric.selector" (list . "api") */}}
{{- define "ferric.selector" -}}
app.kubernetes.io/name: {{ default (index . 0).Chart.Name (index . 0).Values.nameOverride }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ferric.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "ferric.secretName" -}}
{{- default (printf "%s-secrets" (include "ferric.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "ferric.dbSecretName" -}}
{{- default (printf "%s-secrets" (include "ferric.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{- define "ferric.dbSecretKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{/* etcd endpoints as a JSON list. */}}
{{- define "ferric.etcdEndpoints" -}}
{{- if .Values.etcd.internal.enabled -}}
{{- $fn := include "ferric.fullname" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.internal.replicas) -}}
{{- $eps = append $eps (printf "http://%s-etcd-%d.%s-etcd.%s.svc:2379" $fn $i $fn $.Release.Namespace) -}}
{{- end -}}
{{- toJson $eps -}}
{{- else -}}
{{- toJson (.Values.etcd.endpoints | default list) -}}
{{- end -}}
{{- end -}}

{{/* The configuration every process reads: the user's config with the
     settings the chart owns on top. */}}
{{- define "ferric.config" -}}
{{- $own := dict
  "data_dir" "/var/lib/ferric"
  "membership" (dict "backend" "etcd" "etcd_endpoints" (include "ferric.etcdEndpoints" . | fromJsonArray))
  "database" (dict "auto_migrate" false)
  "conductor" (dict
     "drain_timeout_ms" (mul (int .Values.conductor.drainTimeoutSeconds) 1000)
     "conductor_group" .Values.conductor.group)
  "api" (dict
     "public_url" .Values.api.publicUrl
     "shutdown_delay_ms" (mul (int .Values.api.shutdownDelaySeconds) 1000))
-}}
{{- if .Values.swift.enabled -}}
{{- $_ := set $own "deploy" (dict "use_http_web_server_for_images" false) -}}
{{- $_ := set $own "swift" (dict "auth_url" .Values.swift.authUrl "user" .Values.swift.user "swift_ilo_container" .Values.swift.container) -}}
{{- end -}}
{{- $cfg := mergeOverwrite (deepCopy (.Values.config | default dict)) $own -}}
{{- include "ferric.toml" $cfg -}}
{{- end -}}

{{/* A two-level map as TOML: top-level keys, then one table per section.
     Helm reads every YAML number as a float; integral ones are written
     as integers (Ferric's integer keys refuse 300000.0). */}}
{{- define "ferric.toml" -}}
{{- range $k, $v := . }}{{ if not (kindIs "map" $v) }}{{ $k }} = {{ include "ferric.tomlValue" $v }}
{{ end }}{{ end }}
{{- range $k, $v := . }}{{ if kindIs "map" $v }}
[{{ $k }}]
{{- range $k2, $v2 := $v }}
{{ $k2 }} = {{ include "ferric.tomlValue" $v2 }}
{{- end }}
{{ end }}{{ end }}
{{- end -}}

{{- define "ferric.tomlValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}{{ int64 . }}
{{- else if kindIs "map" . -}}{{ fail "config: only section -> key -> value (two levels) is supported" }}
{{- else -}}{{ toJson . }}
{{- end -}}
{{- end -}}

{{/* Environment every Ferric container gets: the pod's identity and the
     secrets. */}}
{{- define "ferric.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: FERRIC_CONFIG
  value: /etc/ferric/ferric.toml
- name: FERRIC_DATABASE__URL
  valueFrom: {secretKeyRef: {name: {{ include "ferric.dbSecretName" . }}, key: {{ include "ferric.dbSecretKey" . }}}}
- name: FERRIC_CONDUCTOR__CLUSTER_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "ferric.secretName" . }}, key: cluster-secret, optional: true}}
{{- if .Values.swift.enabled }}
- name: FERRIC_SWIFT__KEY
  valueFrom: {secretKeyRef: {name: {{ include "ferric.secretName" . }}, key: swift-key, optional: true}}
- name: FERRIC_SWIFT__TEMP_URL_KEY
  valueFrom: {secretKeyRef: {name: {{ include "ferric.secretName" . }}, key: swift-temp-url-key, optional: true}}
{{- end }}
{{- end -}}

{{- define "ferric.bindHost" -}}
{{- if .Values.bindPodIP -}}$(POD_IP){{- else -}}0.0.0.0{{- end -}}
{{- end -}}

{{- define "ferric.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "ferric.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ int .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ int .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Init container: wait until the migration Job made the schema this
     binary's. */}}
{{- define "ferric.waitForSchema" -}}
- name: wait-for-schema
  image: {{ include "ferric.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [ferric]
  args: [db, check, --wait, {{ int .Values.database.waitForSchemaSeconds | quote }}]
  env:
    {{- include "ferric.env" . | nindent 4 }}
  securityContext:
    {{- include "ferric.containerSecurity" . | nindent 4 }}
  volumeMounts:
    - {name: config, mountPath: /etc/ferric, readOnly: true}
    - {name: tmp, mountPath: /tmp}
    - {name: data, mountPath: /var/lib/ferric}
  resources:
    requests: {cpu: 10m, memory: 32Mi}
    limits: {memory: 128Mi}
{{- end -}}
