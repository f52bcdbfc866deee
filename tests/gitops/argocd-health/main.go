// Command argocd-health prints the health Argo CD gives TeamAccess objects,
// computed by Argo CD's own code rather than by a copy of it:
//
//   - the health customizations are read from the argocd-cm ConfigMap on the
//     cluster by Argo CD's settings manager (so the ConfigMap's label, its key
//     spelling and its useOpenLibs setting count as they do in Argo CD);
//   - each live object is judged by gitops-engine's health.GetResourceHealth
//     with Argo CD's Lua VM as the override, the call the application
//     controller makes for every resource of an Application.
//
// Usage (KUBECONFIG names the cluster):
//
//	argocd-health [-namespace argocd] NAME...
//
// It prints one JSON object, {"NAME": {"status": "...", "message": "..."}},
// with an empty status where Argo CD has no health for the object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"github.com/argoproj/gitops-engine/pkg/health"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var teamAccesses = schema.GroupVersionResource{Group: "teamaccess.dev", Version: "v1alpha1", Resource: "teamaccesses"}

func main() {
	namespace := flag.String("namespace", "argocd", "the namespace of Argo CD's argocd-cm ConfigMap")
	flag.Parse()
	if err := run(*namespace, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

func run(namespace string, names []string) error {
	config, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return fmt.Errorf("reading KUBECONFIG: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	overrides, err := settings.NewSettingsManager(ctx, clientset, namespace).GetResourceOverrides()
	if err != nil {
		return fmt.Errorf("reading the resource customizations from argocd-cm: %w", err)
	}
	objects, err := dynamic.NewForConfig(config)
	if err != nil {
		return err
	}
	judged := map[string]health.HealthStatus{}
	for _, name := range names {
		obj, err := objects.Resource(teamAccesses).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading TeamAccess %s: %w", name, err)
		}
		// A script that fails (a Lua error, a library Argo CD does not open)
		// comes back as the status Argo CD shows for it, Unknown with the error,
		// and the error itself, which Argo CD logs.
		status, err := health.GetResourceHealth(obj, lua.ResourceHealthOverrides(overrides))
		if err != nil {
			fmt.Fprintf(os.Stderr, "argocd-health: judging TeamAccess %s: %v\n", name, err)
		}
		if status != nil {
			judged[name] = *status
		} else {
			judged[name] = health.HealthStatus{}
		}
	}
	return json.NewEncoder(os.Stdout).Encode(judged)
}
