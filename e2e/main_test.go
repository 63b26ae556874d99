package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

// fenderBin is the path of the binary that TestMain builds once for all tests.
var fenderBin string

// defaultParallel is how many tests run at once when -parallel is not given.
// The tests mostly wait on sockets and timers, not on the CPU, so running more
// of them than GOMAXPROCS keeps the suite fast on a 2-core machine.
const defaultParallel = 8

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	raiseParallel(defaultParallel)

	dir, err := os.MkdirTemp("", "fender-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)

	bin, out, err := buildFender(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building fender: %v\n%s\n", err, out)
		return 1
	}
	fenderBin = bin
	return m.Run()
}

// buildFender builds the module root (the parent of e2e/) into dir, stamping
// the version "e2e".
func buildFender(dir string) (bin string, out []byte, err error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", nil, err
	}
	root := filepath.Dir(wd)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", nil, fmt.Errorf("module root %s: %w", root, err)
	}
	bin = filepath.Join(dir, "fender")
	cmd := exec.Command(goTool(), "build", "-o", bin, "-ldflags", "-X main.version=e2e", ".")
	cmd.Dir = root
	out, err = cmd.CombinedOutput()
	return bin, out, err
}

// goTool finds the go command: `go test` puts GOROOT/bin first on PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		return filepath.Join(goroot, "bin", "go")
	}
	return "go"
}

// raiseParallel sets -test.parallel to n unless the user chose a value.
func raiseParallel(n int) {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" {
			set = true
		}
	})
	if !set && runtime.GOMAXPROCS(0) < n {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}
