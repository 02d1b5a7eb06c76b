//go:build tools

// Package tools pins etcd's server command for the e2e harness.
package tools

import _ "go.etcd.io/etcd/server/v3"
