{{/* Names, labels and shared snippets of the broker-auth chart. */}}

{{- define "broker-auth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "broker-auth.fullname" -}}
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

{{/* Name of a component's objects: "<fullname>-<component>" (component names are short; the total stays ≤ 63). */}}
{{- define "broker-auth.componentName" -}}
{{- printf "%s-%s" (include "broker-auth.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "broker-auth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "kafka"). */}}
{{- define "broker-auth.labels" -}}
helm.sh/chart: {{ include "broker-auth.chart" .root }}
{{ include "broker-auth.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: broker-auth
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "broker-auth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broker-auth.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* "repository:tag" with the chart's appVersion when the tag is empty; call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "broker-auth.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The restricted Pod Security Standard for a container (and read-only root unless told otherwise);
call with (dict "readOnlyRootFilesystem" true).
*/}}
{{- define "broker-auth.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod-level security context of the restricted standard for a fixed uid/gid; call with (dict "uid" 999). */}}
{{- define "broker-auth.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "broker-auth.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a workload's pod; call with the component's values. */}}
{{- define "broker-auth.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The volumeClaimTemplate of a StatefulSet; call with (dict "root" $ "component" "kafka" "persistence" .Values.kafka.persistence). */}}
{{- define "broker-auth.volumeClaimTemplate" -}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: data
    labels:
      {{- include "broker-auth.selectorLabels" . | nindent 6 }}
  spec:
    accessModes: ["ReadWriteOnce"]
    {{- with .persistence.storageClass }}
    storageClassName: {{ . | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ .persistence.size | quote }}
{{- end }}

{{/*
A value kept in an existing Secret of the release, so generated secrets survive `helm upgrade`.
Call with (dict "root" $ "name" "<secret>" "key" "<key>"); prints "" when the Secret or key is absent
(always the case under `helm template`, where lookup returns nothing).
*/}}
{{- define "broker-auth.existingSecretValue" -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $secret $secret.data }}
{{- if hasKey $secret.data .key }}
{{- index $secret.data .key | b64dec }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the Secrets the chart creates. */}}
{{- define "broker-auth.postgresSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "postgres") }}{{- end }}
{{- define "broker-auth.redisSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "redis") }}{{- end }}
{{- define "broker-auth.kafkaSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "kafka") }}{{- end }}
{{- define "broker-auth.jwtSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "jwt") }}{{- end }}
{{- define "broker-auth.mailSealSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "mail-seal") }}{{- end }}
{{- define "broker-auth.smtpSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "smtp") }}{{- end }}
{{- define "broker-auth.metricsCertSecretName" -}}{{ include "broker-auth.componentName" (dict "root" . "component" "metrics-tls") }}{{- end }}

{{/* Where the services are, whether the chart runs them or they are external. */}}
{{- define "broker-auth.kafkaBootstrapServers" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s.%s.svc:9092" (include "broker-auth.componentName" (dict "root" . "component" "kafka")) .Release.Namespace }}
{{- else }}
{{- required "kafka.external.bootstrapServers is required when kafka.enabled is false" .Values.kafka.external.bootstrapServers }}
{{- end }}
{{- end }}

{{/* (dict name key) of the Secret holding DATABASE_URL. */}}
{{- define "broker-auth.databaseUrlSecretRef" -}}
{{- if .Values.postgres.enabled }}
name: {{ include "broker-auth.postgresSecretName" . }}
key: DATABASE_URL
{{- else }}
name: {{ required "postgres.external.existingSecret.name is required when postgres.enabled is false" .Values.postgres.external.existingSecret.name }}
key: {{ .Values.postgres.external.existingSecret.key }}
{{- end }}
{{- end }}

{{- define "broker-auth.redisUrlSecretRef" -}}
{{- if .Values.redis.enabled }}
name: {{ include "broker-auth.redisSecretName" . }}
key: REDIS_URL
{{- else }}
name: {{ required "redis.external.existingSecret.name is required when redis.enabled is false" .Values.redis.external.existingSecret.name }}
key: {{ .Values.redis.external.existingSecret.key }}
{{- end }}
{{- end }}

{{- define "broker-auth.jwtSecretRef" -}}
name: {{ default (include "broker-auth.jwtSecretName" .) .Values.jwt.existingSecret.name }}
key: {{ .Values.jwt.existingSecret.key }}
{{- end }}

{{- define "broker-auth.mailSealSecretRef" -}}
name: {{ default (include "broker-auth.mailSealSecretName" .) .Values.mailSeal.existingSecret.name }}
key: {{ .Values.mailSeal.existingSecret.key }}
{{- end }}

{{- define "broker-auth.smtpSecretRef" -}}
{{- if .Values.smtp.existingSecret.name }}
name: {{ .Values.smtp.existingSecret.name }}
key: {{ .Values.smtp.existingSecret.key }}
{{- else }}
name: {{ include "broker-auth.smtpSecretName" . }}
key: SMTP_URL
{{- end }}
{{- end }}

{{- define "broker-auth.operatorServiceAccountName" -}}
{{- default (include "broker-auth.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "broker-auth.brokerAuthName" -}}
{{- default (include "broker-auth.fullname" .) .Values.brokerAuth.name }}
{{- end }}
