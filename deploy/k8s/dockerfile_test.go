package k8s

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// repoRoot is fender's module root, two levels up from this directory.
const repoRoot = "../.."

// buildVersion is stamped into the binary the tests build.
const buildVersion = "v0.0.0-k8s-test"

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd   string // upper case: FROM, RUN, ...
	Args  string
	Stage int // index of the FROM it belongs to
}

func mustParseDockerfile(tb testing.TB) []instruction {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		tb.Fatalf("read Dockerfile: %v", err)
	}
	var out []instruction
	stage := -1
	var cur strings.Builder
	for line := range strings.SplitSeq(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if rest, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{Cmd: cmd, Args: strings.TrimSpace(args), Stage: stage})
	}
	return out
}

// dockerEntrypoint is the binary the image's ENTRYPOINT runs.
func dockerEntrypoint(tb testing.TB) string {
	tb.Helper()
	for _, in := range mustParseDockerfile(tb) {
		if in.Cmd == "ENTRYPOINT" {
			var argv []string
			if err := json.Unmarshal([]byte(in.Args), &argv); err != nil || len(argv) == 0 {
				tb.Fatalf("Dockerfile ENTRYPOINT %s: want the exec form, a JSON array", in.Args)
			}
			return argv[0]
		}
	}
	tb.Fatalf("Dockerfile: no ENTRYPOINT")
	return ""
}

// dockerBuildCommand is the Dockerfile's `go build` command and the path
// it writes (its -o).
func dockerBuildCommand(tb testing.TB) (cmd, out string) {
	tb.Helper()
	for _, in := range mustParseDockerfile(tb) {
		if in.Cmd != "RUN" {
			continue
		}
		for seg := range strings.SplitSeq(in.Args, "&&") {
			if !strings.Contains(seg, "go build") {
				continue
			}
			f := strings.Fields(seg)
			if i := slices.Index(f, "-o"); i >= 0 && i+1 < len(f) {
				return strings.TrimSpace(seg), f[i+1]
			}
			tb.Fatalf("Dockerfile: the go build command %q has no -o", seg)
		}
	}
	tb.Fatalf("Dockerfile: no RUN with go build")
	return "", ""
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// fenderBinary builds fender from the repository root once, with exactly the
// Dockerfile's build command (only its -o path changed), VERSION set to
// buildVersion.
func fenderBinary(tb testing.TB) string {
	tb.Helper()
	cmdline, out := dockerBuildCommand(tb)
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "fender-k8s-test-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "fender")
		cmd := exec.Command("sh", "-c", strings.ReplaceAll(cmdline, out, buildBin))
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "VERSION="+buildVersion)
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%s: %v\n%s", cmdline, err, b)
		}
	})
	if buildErr != nil {
		tb.Fatalf("build fender as the Dockerfile does: %v", buildErr)
	}
	return buildBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func TestDockerfile(t *testing.T) {
	ins := mustParseDockerfile(t)
	var froms []string
	final := map[string][]string{}
	for _, in := range ins {
		if in.Cmd == "FROM" {
			froms = append(froms, in.Args)
		}
		if len(froms) > 0 && in.Stage == len(froms)-1 {
			final[in.Cmd] = append(final[in.Cmd], in.Args)
		}
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile stages %v: want a build stage and a runtime stage", froms)
	}
	// The build stage's Go is the one go.mod names.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goLine == nil {
		t.Fatalf("go.mod: no go line")
	}
	image := regexp.MustCompile(`^golang:` + regexp.QuoteMeta(string(goLine[1])) + `(\.\d+)? AS build$`)
	if !image.MatchString(froms[0]) {
		t.Errorf("Dockerfile build stage %q: want golang:%s AS build (go.mod's Go)", froms[0], goLine[1])
	}
	runtime := froms[len(froms)-1]
	if runtime != "gcr.io/distroless/static-debian12:nonroot" && runtime != "scratch" {
		t.Errorf("Dockerfile runtime stage %q: want distroless static nonroot or scratch", runtime)
	}
	if u := final["USER"]; len(u) != 1 || (u[0] != "65532" && u[0] != "65532:65532") {
		t.Errorf("Dockerfile USER %v: want 65532 (the uid deployment.yaml runs fender as)", u)
	}
	if !slices.Contains(final["EXPOSE"], "9464") {
		t.Errorf("Dockerfile EXPOSE %v: want 9464", final["EXPOSE"])
	}
	entry := dockerEntrypoint(t)
	if entry != "/fender" {
		t.Errorf("Dockerfile ENTRYPOINT %s: want /fender", entry)
	}
	_, out := dockerBuildCommand(t)
	copyLine := "--from=build " + out + " " + entry
	if !slices.Contains(final["COPY"], copyLine) {
		t.Errorf("Dockerfile runtime COPY %v: want %q", final["COPY"], copyLine)
	}
	cmdline, _ := dockerBuildCommand(t)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`} {
		if !strings.Contains(cmdline, want) {
			t.Errorf("Dockerfile build command %q: want %s", cmdline, want)
		}
	}
}

func TestDockerBuildIsStatic(t *testing.T) {
	bin := fenderBinary(t)

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("open the binary as ELF: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has a dynamic loader (PT_INTERP): not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v: not static", libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("binary has a symbol table: want it stripped (-s -w)")
	}

	info, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, info)
	}
	// -trimpath keeps -ldflags out of the build info: `fender version` below
	// and the missing symbol table above show they were applied.
	for _, want := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true"} {
		if !bytes.Contains(info, []byte(want)) {
			t.Errorf("go version -m: no %q in\n%s", want, info)
		}
	}
	if _, err := exec.LookPath("ldd"); err == nil {
		out, _ := exec.Command("ldd", bin).CombinedOutput()
		if !bytes.Contains(out, []byte("not a dynamic executable")) && !bytes.Contains(out, []byte("statically linked")) {
			t.Errorf("ldd: got %q, want not a dynamic executable", out)
		}
	}

	out, err := exec.Command(bin, "version").Output()
	if got, want := string(out), "fender "+buildVersion+"\n"; err != nil || got != want {
		t.Errorf("fender version: got %q (%v), want %q", got, err, want)
	}
}

func TestDockerignoreKeepsSources(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatalf("read .dockerignore: %v", err)
	}
	var patterns []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	// The files `go build .` reads: go.mod, go.sum and the Go files of
	// every package of fender's module that the binary imports.
	cmd := exec.Command("go", "list", "-e", "-deps", "-f",
		`{{if .Module}}{{if eq .Module.Path "github.com/fender-sidecar/fender"}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`, ".")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	abs, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"go.mod", "go.sum"}
	for f := range strings.FieldsSeq(string(out)) {
		rel, _ := filepath.Rel(abs, f)
		files = append(files, filepath.ToSlash(rel))
	}
	if len(files) < 4 {
		t.Fatalf("go list found only %v", files)
	}
	for _, f := range files {
		if dockerIgnored(patterns, f) {
			t.Errorf(".dockerignore leaves %s out of the build context; the image build needs it", f)
		}
	}
	for _, f := range []string{".git/HEAD", "e2e/main_test.go", "deploy/k8s/go.mod"} {
		if !dockerIgnored(patterns, f) {
			t.Errorf(".dockerignore sends %s to the build context; keep it small", f)
		}
	}
}

// dockerIgnored reports whether a .dockerignore with patterns leaves the
// slash-separated path out: the last pattern that matches the path or one of
// its parent directories decides, "!" re-includes, "**" spans directories.
func dockerIgnored(patterns []string, path string) bool {
	ignored := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.Trim(strings.TrimPrefix(p, "!"), "/")
		re := regexp.MustCompile("^" + globToRegexp(p) + "$")
		parts := strings.Split(path, "/")
		for i := 1; i <= len(parts); i++ {
			if re.MatchString(strings.Join(parts[:i], "/")) {
				ignored = !neg
				break
			}
		}
	}
	return ignored
}

func globToRegexp(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case strings.HasPrefix(p[i:], "**/"):
			b.WriteString("(.*/)?")
			i += 2
		case strings.HasPrefix(p[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	return b.String()
}

// The root module must not see this one: `go test ./...` there never builds
// the Kubernetes packages, and fender's go.mod never requires them.
func TestRootModuleExcludesThisModule(t *testing.T) {
	cmd := exec.Command("go", "list", "-e", "./...")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... at the root: %v", err)
	}
	if bytes.Contains(out, []byte("/deploy/")) {
		t.Errorf("go list ./... at the root lists packages of deploy/:\n%s", out)
	}
	if len(bytes.TrimSpace(out)) == 0 {
		t.Errorf("go list ./... at the root listed nothing")
	}
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range []string{"k8s.io/", "sigs.k8s.io/"} {
		if bytes.Contains(gomod, []byte(dep)) {
			t.Errorf("fender's go.mod requires %s...: keep the Kubernetes packages in deploy/k8s/go.mod", dep)
		}
	}
}
