package k8s

import (
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func TestManifestsDecodeStrictly(t *testing.T) {
	m := mustLoad(t)
	kinds := []struct{ file, gotAPI, gotKind, wantAPI, wantKind string }{
		{"kustomization.yaml", m.Kustomization.APIVersion, m.Kustomization.Kind, "kustomize.config.k8s.io/v1beta1", "Kustomization"},
		{"deployment.yaml", m.Deployment.APIVersion, m.Deployment.Kind, "apps/v1", "Deployment"},
		{"configmap.yaml", m.ConfigMap.APIVersion, m.ConfigMap.Kind, "v1", "ConfigMap"},
		{"secret.yaml", m.Secret.APIVersion, m.Secret.Kind, "v1", "Secret"},
		{"vmpodscrape.yaml", m.Scrape.APIVersion, m.Scrape.Kind, "operator.victoriametrics.com/v1beta1", "VMPodScrape"},
	}
	for _, k := range kinds {
		if k.gotAPI != k.wantAPI || k.gotKind != k.wantKind {
			t.Errorf("%s: got %s %s, want %s %s", k.file, k.gotAPI, k.gotKind, k.wantAPI, k.wantKind)
		}
	}
	// Every manifest is in the kustomization, and every resource exists.
	yamls, _ := filepath.Glob("*.yaml")
	var want []string
	for _, f := range yamls {
		if f != "kustomization.yaml" {
			want = append(want, f)
		}
	}
	got := slices.Sorted(slices.Values(m.Kustomization.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources: got %v, want the manifests here %v", got, want)
	}
	// Misspelt fields are caught, so the checks above mean something.
	for _, bad := range []string{"replica: 2", "Replicas: 2", "replicas: 2\n  replicas: 3"} {
		var d appsv1.Deployment
		if err := decodeStrict([]byte("apiVersion: apps/v1\nkind: Deployment\nspec:\n  "+bad+"\n"), &d); err == nil {
			t.Errorf("strict decoding accepted spec %q", bad)
		}
	}
}

func TestKustomizeBuild(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), ".")
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	if got, want := len(res.Resources()), 4; got != want {
		t.Errorf("kustomize build: got %d resources, want %d", got, want)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build as YAML: %v", err)
	}
	m := mustLoad(t)
	img := m.Kustomization.Images
	if len(img) != 1 || img[0].Name != m.fender(t).Image {
		t.Fatalf("kustomization images: got %+v, want one entry for the sidecar image %q", img, m.fender(t).Image)
	}
	want := "image: " + img[0].NewName + ":" + img[0].NewTag
	if !strings.Contains(string(out), want) {
		t.Errorf("kustomize build: no %q in the output:\n%s", want, out)
	}
}

func TestDeploymentNativeSidecar(t *testing.T) {
	m := mustLoad(t)
	spec := m.Deployment.Spec.Template.Spec
	f, app := m.fender(t), m.app(t)

	if f.RestartPolicy == nil || *f.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("fender: an init container with restartPolicy %v, want Always (a native sidecar)", f.RestartPolicy)
	}

	// The socket is on an emptyDir mounted in both containers.
	sock := m.ConfigMap.Data["FENDER_SOCKET"]
	if sock == "" {
		t.Fatalf("configmap: FENDER_SOCKET not set")
	}
	if got := m.env(t, app)["FENDER_SOCKET"]; got != sock {
		t.Errorf("app: FENDER_SOCKET %q, want fender's %q", got, sock)
	}
	var shared string
	for _, v := range spec.Volumes {
		if v.EmptyDir != nil && mountedAt(f, v.Name) == filepath.Dir(sock) && mountedAt(app, v.Name) == filepath.Dir(sock) {
			shared = v.Name
		}
	}
	if shared == "" {
		t.Errorf("no emptyDir volume mounted at %s (the socket's directory) in both fender and app", filepath.Dir(sock))
	}
	if snap := m.ConfigMap.Data["FENDER_CACHE_SNAPSHOT"]; snap != "" && filepath.Dir(snap) != filepath.Dir(sock) {
		t.Errorf("FENDER_CACHE_SNAPSHOT %s: want it on the writable emptyDir %s", snap, filepath.Dir(sock))
	}

	// The drain fits in the grace period.
	drain, err := time.ParseDuration(m.ConfigMap.Data["FENDER_DRAIN_TIMEOUT"])
	if err != nil {
		t.Fatalf("FENDER_DRAIN_TIMEOUT: %v", err)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %s, want more than FENDER_DRAIN_TIMEOUT %v", fmtInt64(g), drain)
	}
}

func fmtInt64(p *int64) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatInt(*p, 10)
}

// mountedAt is where c mounts volume, "" when it does not.
func mountedAt(c *corev1.Container, volume string) string {
	for _, vm := range c.VolumeMounts {
		if vm.Name == volume {
			return vm.MountPath
		}
	}
	return ""
}

func TestFenderSecurityContext(t *testing.T) {
	m := mustLoad(t)
	pod := m.Deployment.Spec.Template.Spec.SecurityContext
	sc := m.fender(t).SecurityContext
	if sc == nil {
		t.Fatalf("fender: no securityContext")
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod != nil {
		seccomp = pod.SeccompProfile
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"runAsNonRoot: true", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot},
		{"runAsUser: 65532", sc.RunAsUser != nil && *sc.RunAsUser == 65532},
		{"readOnlyRootFilesystem: true", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		{"allowPrivilegeEscalation: false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
		{"capabilities.drop: [ALL]", sc.Capabilities != nil && slices.Contains(sc.Capabilities.Drop, "ALL") && len(sc.Capabilities.Add) == 0},
		{"seccompProfile: RuntimeDefault", seccomp != nil && seccomp.Type == corev1.SeccompProfileTypeRuntimeDefault},
		{"privileged unset or false", sc.Privileged == nil || !*sc.Privileged},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("fender securityContext: want %s; got %+v", c.name, sc)
		}
	}
}

func TestUIDs(t *testing.T) {
	m := mustLoad(t)
	allowed := parseUIDs(t, "FENDER_ALLOWED_UIDS", m.ConfigMap.Data["FENDER_ALLOWED_UIDS"])
	admins := parseUIDs(t, "FENDER_ADMIN_UIDS", m.ConfigMap.Data["FENDER_ADMIN_UIDS"])
	fenderUID := *m.fender(t).SecurityContext.RunAsUser
	app := m.app(t)
	if app.SecurityContext == nil || app.SecurityContext.RunAsUser == nil {
		t.Fatalf("app: no runAsUser, so FENDER_ALLOWED_UIDS cannot name it")
	}
	appUID := *app.SecurityContext.RunAsUser
	if len(allowed) > 0 && !slices.Contains(allowed, appUID) {
		t.Errorf("FENDER_ALLOWED_UIDS %v: the app's uid %d cannot connect", allowed, appUID)
	}
	// fender's own exec probes connect as fender's uid.
	if len(allowed) > 0 && !slices.Contains(allowed, fenderUID) {
		t.Errorf("FENDER_ALLOWED_UIDS %v: fender's uid %d (its exec probe) cannot connect", allowed, fenderUID)
	}
	for _, a := range admins {
		if len(allowed) > 0 && !slices.Contains(allowed, a) {
			t.Errorf("FENDER_ADMIN_UIDS: %d is not in FENDER_ALLOWED_UIDS %v, so it can never connect", a, allowed)
		}
	}
	if slices.Contains(admins, appUID) {
		t.Errorf("FENDER_ADMIN_UIDS %v: the app's uid %d should not reconfigure its own sidecar", admins, appUID)
	}
}

func parseUIDs(tb testing.TB, name, v string) []int64 {
	tb.Helper()
	var out []int64
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			tb.Fatalf("%s: %q is not a uid", name, f)
		}
		out = append(out, n)
	}
	return out
}

func TestProbesAndMetrics(t *testing.T) {
	m := mustLoad(t)
	f := m.fender(t)

	// fender listens where the kubelet and the scraper can reach it.
	addr := m.ConfigMap.Data["FENDER_METRICS_ADDR"]
	host, port, _ := strings.Cut(addr, ":")
	if host != "0.0.0.0" && host != "" || port != strconv.Itoa(metricsPort) {
		t.Errorf("FENDER_METRICS_ADDR %q, want 0.0.0.0:%d: the kubelet probes the pod IP", addr, metricsPort)
	}
	named := map[string]int32{}
	for _, p := range f.Ports {
		named[p.Name] = p.ContainerPort
	}
	if named["metrics"] != metricsPort {
		t.Errorf("fender ports %+v, want one named metrics on %d", f.Ports, metricsPort)
	}
	httpProbe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("fender %s probe: want httpGet %s on %d, got %+v", name, path, metricsPort, p)
			return
		}
		port := p.HTTPGet.Port.IntValue()
		if p.HTTPGet.Port.StrVal != "" {
			port = int(named[p.HTTPGet.Port.StrVal])
		}
		if p.HTTPGet.Path != path || port != metricsPort {
			t.Errorf("fender %s probe: got %s on port %v (%d), want %s on %d", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), port, path, metricsPort)
		}
	}
	httpProbe("liveness", f.LivenessProbe, healthzPath)
	httpProbe("readiness", f.ReadinessProbe, readyzPath)

	// The startup probe asks fender itself over the socket.
	if sp := f.StartupProbe; sp == nil || sp.Exec == nil || len(sp.Exec.Command) != 2 ||
		sp.Exec.Command[0] != dockerEntrypoint(t) || !slices.Contains([]string{"ping", "health"}, sp.Exec.Command[1]) {
		t.Errorf("fender startupProbe: got %+v, want exec [%s ping]", sp, dockerEntrypoint(t))
	}

	ann := m.Deployment.Spec.Template.Annotations
	wantAnn := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(metricsPort), "prometheus.io/path": metricsPath}
	for k, v := range wantAnn {
		if ann[k] != v {
			t.Errorf("pod annotation %s: got %q, want %q", k, ann[k], v)
		}
	}

	sel, err := metav1.LabelSelectorAsSelector(&m.Scrape.Spec.Selector)
	if err != nil {
		t.Fatalf("vmpodscrape selector: %v", err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(m.Deployment.Spec.Template.Labels)) {
		t.Errorf("vmpodscrape selector %v does not select the pod (labels %v)", sel, m.Deployment.Spec.Template.Labels)
	}
	eps := m.Scrape.Spec.PodMetricsEndpoints
	if len(eps) != 1 || named[eps[0].Port] != metricsPort || eps[0].Path != metricsPath {
		t.Errorf("vmpodscrape endpoints %+v, want port metrics (%d) path %s", eps, metricsPort, metricsPath)
	}
}

func TestResources(t *testing.T) {
	m := mustLoad(t)
	f := m.fender(t)
	req, lim := f.Resources.Requests, f.Resources.Limits
	memReq, memLim := req[corev1.ResourceMemory], lim[corev1.ResourceMemory]
	if memReq.IsZero() || memLim.IsZero() || req.Cpu().IsZero() {
		t.Fatalf("fender resources %+v: want cpu and memory requests and a memory limit", f.Resources)
	}
	if memLim.Cmp(memReq) < 0 {
		t.Errorf("fender memory limit %s below its request %s", memLim.String(), memReq.String())
	}
	// Measured: a full cache of B bytes peaked at about 2.3 B + 15 MiB RSS
	// (32 MiB: 90 MiB, 64 MiB: 151 MiB). Keep the limit above 2.5 B + 16 MiB.
	cacheBytes, err := strconv.ParseInt(m.ConfigMap.Data["FENDER_CACHE_MAX_BYTES"], 10, 64)
	if err != nil {
		t.Fatalf("FENDER_CACHE_MAX_BYTES: %v (set it in the configmap: the memory limit depends on it)", err)
	}
	if need := cacheBytes*5/2 + 16<<20; memLim.Value() < need {
		t.Errorf("fender memory limit %s, want at least %s for FENDER_CACHE_MAX_BYTES %d", memLim.String(),
			resource.NewQuantity(need, resource.BinarySI).String(), cacheBytes)
	}
	if gml := m.env(t, f)["GOMEMLIMIT"]; gml != "" {
		q, err := resource.ParseQuantity(strings.TrimSuffix(gml, "B"))
		if err != nil {
			t.Fatalf("GOMEMLIMIT %q: %v", gml, err)
		}
		if q.Cmp(memLim) >= 0 {
			t.Errorf("GOMEMLIMIT %s, want it below the memory limit %s", gml, memLim.String())
		}
	}
}

func TestSecretIsPlaceholder(t *testing.T) {
	m := mustLoad(t)
	if len(m.Secret.Data) != 0 {
		t.Errorf("secret.yaml: use stringData with visible placeholders, not data")
	}
	for k, v := range m.Secret.StringData {
		if !strings.Contains(v, "FAKE") {
			t.Errorf("secret.yaml %s: %q does not look like a placeholder; keep real credentials out of the repository", k, v)
		}
	}
}
