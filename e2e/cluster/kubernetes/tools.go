//go:build tools

// Package tools pins the Kubernetes control-plane commands the e2e harness runs. They are
// built from k8s.io/kubernetes itself, which `go install pkg@version` refuses (its go.mod
// replaces every staging module with a local directory), so this module requires it and
// replaces each k8s.io staging module with its published version.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
