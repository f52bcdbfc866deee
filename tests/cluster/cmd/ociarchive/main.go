// Command ociarchive packs a root filesystem into a one-layer OCI image archive
// that `ctr images import` (and `docker load`, `skopeo copy oci-archive:`) read.
//
//	ociarchive -rootfs DIR -name REF -dockerfile FILE -out image.tar
//	ociarchive -rootfs DIR -name REF -entrypoint /pause -out pause.tar
//
// With -dockerfile, the image's USER, ENTRYPOINT, CMD and EXPOSE come from the
// Dockerfile's final stage, so the archive and `docker build` describe the same
// image: the root filesystem is made by the same script in both
// (scripts/image-rootfs.sh), the runtime configuration is read from here.
// The archive is reproducible: fixed timestamps and owners, sorted entries.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type imageConfig struct {
	User         string              `json:"User,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
}

func main() {
	rootfs := flag.String("rootfs", "", "directory to pack as the image's only layer")
	name := flag.String("name", "", "image reference, e.g. ghcr.io/org/app:1.0")
	dockerfile := flag.String("dockerfile", "", "read USER, ENTRYPOINT, CMD and EXPOSE from this Dockerfile's final stage")
	entrypoint := flag.String("entrypoint", "", "entrypoint (without -dockerfile)")
	arch := flag.String("arch", runtime.GOARCH, "the image's architecture (amd64, arm64)")
	out := flag.String("out", "", "archive to write")
	flag.Parse()
	if *rootfs == "" || *name == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	cfg := imageConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	if *dockerfile != "" {
		if err := readFinalStage(*dockerfile, &cfg); err != nil {
			fail(err)
		}
	} else if *entrypoint != "" {
		cfg.Entrypoint = []string{*entrypoint}
	}
	if err := write(*rootfs, *name, *arch, cfg, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "ociarchive: %v\n", err)
	os.Exit(1)
}

// readFinalStage takes the runtime settings of the Dockerfile's last FROM.
// ENTRYPOINT and CMD must use the JSON (exec) form, as ours do.
func readFinalStage(path string, cfg *imageConfig) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var stage []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		keyword, _, _ := strings.Cut(line, " ")
		if strings.EqualFold(keyword, "FROM") {
			stage = nil
		}
		stage = append(stage, line)
	}
	for _, line := range stage {
		keyword, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(keyword) {
		case "USER":
			cfg.User = rest
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil {
				return fmt.Errorf("%s: %s must use the JSON form: %w", path, keyword, err)
			}
			if strings.ToUpper(keyword) == "CMD" {
				cfg.Cmd = argv
			} else {
				cfg.Entrypoint = argv
			}
		case "EXPOSE":
			if cfg.ExposedPorts == nil {
				cfg.ExposedPorts = map[string]struct{}{}
			}
			for _, port := range strings.Fields(rest) {
				if !strings.Contains(port, "/") {
					port += "/tcp"
				}
				cfg.ExposedPorts[port] = struct{}{}
			}
		case "ENV", "WORKDIR", "VOLUME", "LABEL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD", "SHELL":
			return fmt.Errorf("%s: the final stage uses %s, which ociarchive does not carry over; teach it or drop it", path, keyword)
		}
	}
	if len(cfg.Entrypoint) == 0 {
		return fmt.Errorf("%s: the final stage has no ENTRYPOINT", path)
	}
	return nil
}

// layer tars the root filesystem with fixed metadata, entries sorted by path.
func layer(rootfs string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != rootfs {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, p := range paths {
		info, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(rootfs, p)
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case info.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		case info.Mode().IsRegular():
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, info.Size(), 0o644
			if info.Mode()&0o111 != 0 {
				hdr.Mode = 0o755
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return nil, err
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
		default:
			return nil, fmt.Errorf("%s: only directories, files and symlinks go into an image", p)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			if _, err := tw.Write(b); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func write(rootfs, name, arch string, cfg imageConfig, out string) error {
	if _, err := os.Stat(rootfs); err != nil {
		return err
	}
	if !strings.Contains(name, ":") || strings.HasSuffix(name, ":") {
		return errors.New("-name needs a tag (repository:tag)")
	}
	layerTar, err := layer(rootfs)
	if err != nil {
		return err
	}
	configJSON, err := json.Marshal(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layerTar)}},
	})
	if err != nil {
		return err
	}
	manifestJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(configJSON), Size: len(configJSON)},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digest(layerTar), Size: len(layerTar)}},
	})
	if err != nil {
		return err
	}
	_, tag, _ := strings.Cut(name[strings.LastIndex(name, "/")+1:], ":")
	indexJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    digest(manifestJSON), Size: len(manifestJSON),
			// containerd names the image after the first; other tools after the second.
			Annotations: map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
			Platform:    map[string]string{"architecture": arch, "os": "linux"},
		}},
	})
	if err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	entries := []struct {
		name string
		body []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
		{"blobs/sha256/" + strings.TrimPrefix(digest(configJSON), "sha256:"), configJSON},
		{"blobs/sha256/" + strings.TrimPrefix(digest(layerTar), "sha256:"), layerTar},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifestJSON), "sha256:"), manifestJSON},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(e.body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	fmt.Printf("%s %s\n", name, digest(manifestJSON))
	return f.Close()
}
