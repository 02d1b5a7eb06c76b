{{/*
The operator's permissions, split by where they apply. tests/chart/test_rbac.py compares the
union of these rules with what `grokcast-operator rbac` prints (operator/src/rbac.rs), so a
permission the code stops using, or starts using, fails the tests until this file follows.
Children are created by server-side apply: a `patch` that the API server also authorizes as
a `create` while the object does not exist. They are deleted by the garbage collector through
their owner references, so `delete` is only on Jobs (preload Jobs of an older template). `get` reads a child the operator's cache does not hold,
so an object of the same name that is not the operator's is left alone. Secrets are watched
metadata-only, to notice a referenced Secret within seconds of its creation; list/watch on
Secrets is why the chart binds these rules per namespace when watchNamespaces is set.
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
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch"]
{{- end }}

{{- define "grokcast.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes", "pods"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "grokcast.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
