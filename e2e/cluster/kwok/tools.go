//go:build tools

// Package tools pins kwok, which runs the harness's fake CPU and A100 nodes.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
