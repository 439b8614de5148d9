package leasehold

import "syscall"

// childAttr makes a node die with the test process (SIGKILL when the thread that started
// it, which lives as long as the process, exits).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
