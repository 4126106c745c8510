// Package images builds the e2e cluster's container images from the
// project's own static binaries, as docker-archive tarballs that
// `ctr images import` loads: no registry is reachable here.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image is one image to build: a static Go binary at /{Binary}, its
// entrypoint.
type Image struct {
	// Ref is the image's name, such as coffer.local/coffer:e2e.
	Ref string
	// Package is the Go package to build, such as ./cmd/coffer.
	Package string
	// Binary is the file name inside the image.
	Binary string
	// Files are more files to put in the image, by path.
	Files map[string][]byte
	// Links are paths (such as bin/sleep) made symlinks to the binary, for
	// a busybox-like binary that acts on the name it is run by.
	Links []string
	// Variants are more builds of Package in the image, by file name, each
	// with its build tags (see CofferVariants).
	Variants map[string]string
}

// CofferVariants are the builds of cmd/coffer that the coffer image holds
// beside /coffer, by file name, with their build tags: the node build,
// which the driver and node-agent DaemonSets run, and the provider build,
// which the provider's DaemonSet runs.
var CofferVariants = map[string]string{"coffer-node": "node", "coffer-provider": "node,provider"}

// Version is the version the images report, as `make build` sets it: git
// describe of root, or "dev".
func Version(root string) string {
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = root
	out, err := cmd.Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "dev"
}

// Build compiles each image's binary statically (from the module at root)
// and writes {dir}/{binary}.tar, returning the tarballs' paths.
func Build(root, dir string, imgs ...Image) ([]string, error) {
	var out []string
	for _, im := range imgs {
		files := map[string][]byte{}
		builds := map[string]string{im.Binary: ""}
		maps.Copy(builds, im.Variants)
		for binary, tags := range builds {
			data, err := compile(root, filepath.Join(dir, binary), im.Package, tags)
			if err != nil {
				return nil, err
			}
			files[binary] = data
		}
		for p, b := range im.Files {
			files[p] = b
		}
		path := filepath.Join(dir, im.Binary+".tar")
		if err := Write(path, im.Ref, []string{"/" + im.Binary}, files, slices.Collect(maps.Keys(builds)), im.Links...); err != nil {
			return nil, err
		}
		out = append(out, path)
	}
	return out, nil
}

// compile builds pkg statically, with tags if not empty, into bin and
// returns the binary.
func compile(root, bin, pkg, tags string) ([]byte, error) {
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X github.com/cofferhq/coffer/internal/version.Version=" + Version(root), "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building %s (tags %q): %v\n%s", pkg, tags, err, b)
	}
	return os.ReadFile(bin)
}

// Write writes a one-layer image holding files (those named in exes
// executable, the rest read-only) and links (symlinks to the entrypoint's
// binary) as a docker-archive tarball at path.
func Write(path, ref string, entrypoint []string, files map[string][]byte, exes []string, links ...string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	layerTar, err := layer(files, entrypoint[0], exes, links)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config = v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin:/"}}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

// layer makes a tar of files and links, with the directories they need,
// in a fixed order: the same inputs make the same image.
func layer(files map[string][]byte, exe string, exes, links []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	paths := slices.Sorted(maps.Keys(files))
	dirs := map[string]bool{}
	for _, p := range append(slices.Clone(paths), links...) {
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	// Sorted, a directory comes before what it holds.
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, p := range paths {
		b := files[p]
		mode := int64(0o644)
		if slices.Contains(exes, p) {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	for _, l := range links {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: l, Linkname: exe, Mode: 0o777, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
