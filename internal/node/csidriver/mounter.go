package csidriver

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
)

// syscallMounter mounts and unmounts with the system calls rather than the
// mount and umount programs that mount-utils runs: the driver's image is
// one static binary, with no mount program in it. Everything else (mount
// point checks, mount table reads) is mount-utils'.
type syscallMounter struct {
	mount.Interface
}

// NewMounter returns the mounter the driver uses by default.
func NewMounter() mount.Interface { return syscallMounter{mount.New("")} }

// Mount implements mount.Interface with mount(2).
func (syscallMounter) Mount(source, target, fstype string, options []string) error {
	var flags uintptr
	var data []string
	for _, o := range options {
		switch o {
		case "ro":
			flags |= unix.MS_RDONLY
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "nodev":
			flags |= unix.MS_NODEV
		case "noexec":
			flags |= unix.MS_NOEXEC
		default:
			data = append(data, o)
		}
	}
	if err := unix.Mount(source, target, fstype, flags, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount %s (%s) at %s: %w", source, fstype, target, err)
	}
	return nil
}

// Unmount implements mount.Interface with umount(2).
func (syscallMounter) Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
