//go:build tools

// Package tools pins the helm CLI for the chart's install, upgrade and uninstall tests.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
