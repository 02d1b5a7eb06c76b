{{/*
The operator's permissions, split by where they apply. tests/chart/test_rbac.py compares the
union of these rules with what `grokcast-operator rbac` prints (operator/src/rbac.rs), so a
permission the code stops using, or starts using, fails the tests until this file follows.
Children are created by server-side apply: a `patch` that the API server also authorizes as
a `create` when the object does not exist yet. They are deleted by the garbage collector
through their owner references, so there is no `delete` on them.
*/}}

{{- define "grokcast.namespacedRules" -}}
- apiGroups: ["grokcast.io"]
  resources: ["modelpools", "voiceagents"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["grokcast.io"]
  resources: ["modelpools/status", "voiceagents/status"]
  verbs: ["get", "patch"]
- apiGroups: ["grokcast.io"]
  resources: ["modelpools/scale", "voiceagents/scale"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "grokcast.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- end }}

{{- define "grokcast.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
