package k8s

import (
	"errors"
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// fender's defaults for its HTTP endpoints (SPEC section 9).
const (
	metricsPort = 9464
	healthzPath = "/healthz"
	readyzPath  = "/readyz"
	metricsPath = "/metrics"
)

// The names the manifests use for the sidecar and its shared volume.
const (
	fenderName = "fender"
	appName    = "app"
)

// kustomization mirrors the part of kustomize's Kustomization this example
// uses; decoding it strictly fails on any other field.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// vmPodScrape mirrors the fields of the VictoriaMetrics operator's
// VMPodScrape (operator.victoriametrics.com/v1beta1) that the example may
// use; decoding it strictly fails on any other field.
type vmPodScrape struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		PodTargetLabels   []string             `json:"podTargetLabels,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		PodMetricsEndpoints []struct {
			Port          string `json:"port,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// manifests is the example, each file strictly decoded.
type manifests struct {
	Kustomization kustomization
	Deployment    appsv1.Deployment
	ConfigMap     corev1.ConfigMap
	Secret        corev1.Secret
	Scrape        vmPodScrape
}

// decodeStrict decodes YAML into obj as strictly as the API server does: a
// duplicate key, an unknown field or a field in the wrong case (which
// encoding/json would accept) is an error.
func decodeStrict(b []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// mustDecode reads file and decodes it strictly into obj.
func mustDecode(tb testing.TB, file string, obj any) {
	tb.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		tb.Fatalf("read %s: %v", file, err)
	}
	if err := decodeStrict(b, obj); err != nil {
		tb.Fatalf("decode %s strictly: %v", file, err)
	}
}

func mustLoad(tb testing.TB) *manifests {
	tb.Helper()
	var m manifests
	mustDecode(tb, "kustomization.yaml", &m.Kustomization)
	mustDecode(tb, "deployment.yaml", &m.Deployment)
	mustDecode(tb, "configmap.yaml", &m.ConfigMap)
	mustDecode(tb, "secret.yaml", &m.Secret)
	mustDecode(tb, "vmpodscrape.yaml", &m.Scrape)
	return &m
}

// container finds a container by name in the pod template.
func (m *manifests) container(tb testing.TB, name string, init bool) *corev1.Container {
	tb.Helper()
	list := m.Deployment.Spec.Template.Spec.Containers
	if init {
		list = m.Deployment.Spec.Template.Spec.InitContainers
	}
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	tb.Fatalf("deployment: no container %q (init %v)", name, init)
	return nil
}

func (m *manifests) fender(tb testing.TB) *corev1.Container { return m.container(tb, fenderName, true) }
func (m *manifests) app(tb testing.TB) *corev1.Container    { return m.container(tb, appName, false) }

// env is the environment a container gets: envFrom ConfigMaps, then env,
// with Secret and ConfigMap references resolved from the example's files.
func (m *manifests) env(tb testing.TB, c *corev1.Container) map[string]string {
	tb.Helper()
	out := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil || from.ConfigMapRef.Name != m.ConfigMap.Name {
			tb.Fatalf("%s: envFrom %+v, want a configMapRef to %q", c.Name, from, m.ConfigMap.Name)
		}
		for k, v := range m.ConfigMap.Data {
			out[from.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := m.Secret.StringData[ref.Key]
			if ref.Name != m.Secret.Name || !ok {
				tb.Fatalf("%s: env %s refers to secret %s key %s, which secret.yaml does not have", c.Name, e.Name, ref.Name, ref.Key)
			}
			out[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			v, ok := m.ConfigMap.Data[ref.Key]
			if ref.Name != m.ConfigMap.Name || !ok {
				tb.Fatalf("%s: env %s refers to configmap %s key %s, which configmap.yaml does not have", c.Name, e.Name, ref.Name, ref.Key)
			}
			out[e.Name] = v
		default:
			tb.Fatalf("%s: env %s: a valueFrom this test cannot resolve", c.Name, e.Name)
		}
	}
	return out
}
