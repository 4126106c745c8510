package localcluster

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"k8s.io/mount-utils"
)

type mountPoint struct{ path, fstype string }

// mountsUnder lists the mount points at or under dir, deepest first.
func mountsUnder(dir string) []mountPoint {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []mountPoint
	for _, line := range strings.Split(string(b), "\n") {
		// {id} {parent} {dev} {root} {mount point} {options} [optional...] - {fstype} {source} {super options}
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		if p := f[4]; p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, mountPoint{p, f[sep+1]})
		}
	}
	slices.Reverse(out)
	return out
}

// Mounts returns the mount points under dir, deepest first.
func Mounts(dir string) []string {
	var out []string
	for _, m := range mountsUnder(dir) {
		out = append(out, m.path)
	}
	return out
}

func mountsOfType(dir, fstype string) []string {
	var out []string
	for _, m := range mountsUnder(dir) {
		if m.fstype == fstype {
			out = append(out, m.path)
		}
	}
	return out
}

// unmountAll unmounts everything under dir, deepest first, lazily when a
// mount is busy.
func unmountAll(dir string) error {
	m := mount.New("")
	for range 3 { // shared mounts can reappear once
		ms := Mounts(dir)
		if len(ms) == 0 {
			return nil
		}
		for _, p := range ms {
			if err := m.Unmount(p); err != nil {
				syscall.Unmount(p, syscall.MNT_DETACH)
			}
		}
	}
	if left := Mounts(dir); len(left) > 0 {
		return fmt.Errorf("mounts left behind: %v", left)
	}
	return nil
}
