//go:build unix && !linux

package leasehold

import "syscall"

// childAttr: outside Linux there is no parent-death signal; TestMain and the tests'
// cleanups stop the nodes.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
