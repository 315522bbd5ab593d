package host

import "syscall"

// sysProcAttr makes the kernel send SIGKILL to the plugin when the thread
// that started it dies. Go keeps its OS threads alive for the life of the
// process unless a goroutine exits while locked to one, which realipd never
// does around plugin starts, so in practice the plugin dies with realipd.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
