// tidegate-metrics-adapter serves per-pod GPU metrics of the test bed through the real
// aggregated custom.metrics.k8s.io API, as the metrics adapter does on ACK.
//
// It is built on sigs.k8s.io/custom-metrics-apiserver (the upstream adapter library: auth
// delegation, discovery, OpenAPI, v1beta1/v1beta2). Values come from the test-bed daemon's
// loopback endpoint GET <source>/v1/pod-metrics?namespace=NS, which answers
// {"pods": {"<pod>": {"DCGM_CUSTOM_PROCESS_SM_UTIL": 73.5, ...}}, "timestamp": <unix>}; the
// names served are the GPU metric and the emulators' vLLM gauges (running, waiting, KV-cache
// usage 0-1, cumulative preemptions), each per pod.
// A pod that the selector matches but the daemon has no value for is left out, which the
// HPA controller treats like a missing sample (as with a real exporter).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	apierr "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"
)

var podGR = schema.GroupResource{Group: "", Resource: "pods"}

type podMetrics struct {
	Pods      map[string]map[string]float64 `json:"pods"`
	Timestamp float64                       `json:"timestamp"`
}

type daemonProvider struct {
	client  dynamic.Interface
	mapper  apimeta.RESTMapper
	source  string
	metrics []string
	http    *http.Client

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	at   time.Time
	data podMetrics
}

func (p *daemonProvider) fetch(ctx context.Context, namespace string) (podMetrics, error) {
	p.mu.Lock()
	if c, ok := p.cache[namespace]; ok && time.Since(c.at) < 500*time.Millisecond {
		p.mu.Unlock()
		return c.data, nil
	}
	p.mu.Unlock()
	u := fmt.Sprintf("%s/v1/pod-metrics?namespace=%s", p.source, url.QueryEscape(namespace))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return podMetrics{}, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return podMetrics{}, apierr.NewServiceUnavailable(fmt.Sprintf("test-bed daemon unreachable: %v", err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return podMetrics{}, apierr.NewServiceUnavailable(fmt.Sprintf("test-bed daemon answered %d", resp.StatusCode))
	}
	var out podMetrics
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return podMetrics{}, apierr.NewInternalError(err)
	}
	p.mu.Lock()
	p.cache[namespace] = cached{at: time.Now(), data: out}
	p.mu.Unlock()
	return out, nil
}

func (p *daemonProvider) value(name types.NamespacedName, info provider.CustomMetricInfo, m podMetrics) (*custom_metrics.MetricValue, error) {
	pod, ok := m.Pods[name.Name]
	if !ok {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	v, ok := pod[info.Metric]
	if !ok {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	ref, err := helpers.ReferenceFor(p.mapper, name, info)
	if err != nil {
		return nil, err
	}
	ts := time.Unix(int64(m.Timestamp), 0)
	return &custom_metrics.MetricValue{
		DescribedObject: ref,
		Metric:          custom_metrics.MetricIdentifier{Name: info.Metric},
		Timestamp:       metav1.NewTime(ts),
		Value:           *resource.NewMilliQuantity(int64(v*1000), resource.DecimalSI),
	}, nil
}

func (p *daemonProvider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, _ labels.Selector) (*custom_metrics.MetricValue, error) {
	if info.GroupResource != podGR || !info.Namespaced {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	m, err := p.fetch(ctx, name.Namespace)
	if err != nil {
		return nil, err
	}
	return p.value(name, info, m)
}

func (p *daemonProvider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, _ labels.Selector) (*custom_metrics.MetricValueList, error) {
	if info.GroupResource != podGR || !info.Namespaced {
		return nil, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		return nil, err
	}
	m, err := p.fetch(ctx, namespace)
	if err != nil {
		return nil, err
	}
	items := make([]custom_metrics.MetricValue, 0, len(names))
	for _, n := range names {
		v, err := p.value(types.NamespacedName{Namespace: namespace, Name: n}, info, m)
		if err != nil {
			continue
		}
		items = append(items, *v)
	}
	return &custom_metrics.MetricValueList{Items: items}, nil
}

func (p *daemonProvider) ListAllMetrics() []provider.CustomMetricInfo {
	out := make([]provider.CustomMetricInfo, 0, len(p.metrics))
	for _, m := range p.metrics {
		out = append(out, provider.CustomMetricInfo{GroupResource: podGR, Namespaced: true, Metric: m})
	}
	return out
}

type adapter struct {
	basecmd.AdapterBase
	source string
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()
	a := &adapter{}
	a.Name = "tidegate-metrics-adapter"
	a.Flags().StringVar(&a.source, "source", "http://127.0.0.1:18080", "test-bed daemon base URL (loopback)")
	logs.AddFlags(a.Flags())
	if err := a.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("unable to parse flags: %v", err)
	}
	client, err := a.DynamicClient()
	if err != nil {
		klog.Fatalf("unable to construct dynamic client: %v", err)
	}
	mapper, err := a.RESTMapper()
	if err != nil {
		klog.Fatalf("unable to construct REST mapper: %v", err)
	}
	metricNames := []string{"DCGM_CUSTOM_PROCESS_SM_UTIL", "vllm_num_requests_running", "vllm_num_requests_waiting",
		"vllm_gpu_cache_usage_perc", "vllm_num_preemptions_total"}
	if extra := os.Getenv("TIDEGATE_EXTRA_METRICS"); extra != "" {
		metricNames = append(metricNames, extra)
	}
	p := &daemonProvider{client: client, mapper: mapper, source: a.source, metrics: metricNames,
		http: &http.Client{Timeout: 2 * time.Second}, cache: map[string]cached{}}
	a.WithCustomMetrics(p)
	klog.Infof("serving %v from %s (pid %s)", metricNames, a.source, strconv.Itoa(os.Getpid()))
	if err := a.Run(context.Background()); err != nil {
		klog.Fatalf("unable to run custom metrics adapter: %v", err)
	}
}
