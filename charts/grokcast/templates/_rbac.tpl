{{/*
The operator's permissions, split by where they apply. tests/chart/test_rbac.py compares the
union of these rules with what `grokcast-operator rbac` prints, so a permission the code stops
using (or starts using) fails the tests until this file follows.
*/}}

{{- define "grokcast.namespacedRules" -}}
- apiGroups: ["grokcast.io"]
  resources: ["voiceagents", "modelpools"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["grokcast.io"]
  resources: ["voiceagents/status", "modelpools/status"]
  verbs: ["get", "patch"]
- apiGroups: ["grokcast.io"]
  resources: ["voiceagents/scale", "modelpools/scale"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "grokcast.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{- define "grokcast.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end }}
