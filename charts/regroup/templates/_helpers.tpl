{{- define "regroup.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "regroup.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "regroup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regroup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "regroup.labels" -}}
{{ include "regroup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "regroup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regroup.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules the operator needs in every namespace it manages. */}}
{{- define "regroup.jobRules" -}}
- apiGroups: [regroup.dev]
  resources: [statefuljobs]
  verbs: [get, list, watch, patch, update]
- apiGroups: [regroup.dev]
  resources: [statefuljobs/status]
  verbs: [get, patch, update]
- apiGroups: [regroup.dev]
  resources: [statefuljobs/finalizers, statefuljobsnapshots/finalizers]
  verbs: [update]
- apiGroups: [regroup.dev]
  resources: [statefuljobsnapshots]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [regroup.dev]
  resources: [statefuljobsnapshots/status]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The workers' state claims: those of the ordinals a scale-out adds are created while its final
# checkpoint runs (as the StatefulSet would, ready when the pods come); those a completed
# scale-in no longer uses are deleted by name after a labelled list. Never watched.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, create, delete]
# The per-job token Secret (created, refilled if emptied) and the storage Secret named by a job
# (read).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
# The workers' PodDisruptionBudget.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Why the StatefulSet cannot create pods (FailedCreate Events), shown in Degraded.
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- end -}}

{{/* Labels of helm test's resources: not the operator's selector labels. */}}
{{- define "regroup.testLabels" -}}
app.kubernetes.io/name: {{ include "regroup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
