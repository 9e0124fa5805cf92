{{/* Name of the chart, overridable. */}}
{{- define "arc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects. */}}
{{- define "arc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "arc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "arc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "arc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "arc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "arc.serviceAccountName" -}}
{{- default (include "arc.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "arc.claimName" -}}
{{- default (printf "%s-data" (include "arc.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Secret names the controller may get: the default token Secret and the campaigns' ones. */}}
{{- define "arc.secretNames" -}}
{{- $names := list -}}
{{- with .Values.remoteSigner.tokenSecret.name -}}{{- $names = append $names . -}}{{- end -}}
{{- range .Values.rbac.campaignTokenSecrets -}}{{- $names = append $names . -}}{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}
