// Prints the CustomResourceDefinition of GKE's BackendConfig (cloud.google.com) as YAML, made by
// ingress-gce's own code, the way its controller creates it in a cluster: the CRD is in no
// registry as a file, so `dev/tools install k8s-schemas` runs this to validate k8s/ against it.
package main

import (
	"fmt"
	"os"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	fake "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/fake"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/ingress-gce/pkg/backendconfig"
	"k8s.io/ingress-gce/pkg/crd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

func main() {
	client := fake.NewSimpleClientset()
	// The handler waits until the API server has established the CRD; a fake one does at once.
	client.PrependReactor("create", "customresourcedefinitions", func(action k8stesting.Action) (bool, runtime.Object, error) {
		made := action.(k8stesting.CreateAction).GetObject().(*apiextensionsv1.CustomResourceDefinition)
		made.Status.Conditions = append(made.Status.Conditions, apiextensionsv1.CustomResourceDefinitionCondition{
			Type: apiextensionsv1.Established, Status: apiextensionsv1.ConditionTrue,
		})
		return false, nil, nil
	})
	made, err := crd.NewCRDHandler(client, klog.Background()).EnsureCRD(backendconfig.CRDMeta(), true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backendconfig-crd:", err)
		os.Exit(1)
	}
	made.APIVersion, made.Kind = "apiextensions.k8s.io/v1", "CustomResourceDefinition"
	made.Status = apiextensionsv1.CustomResourceDefinitionStatus{}
	for _, version := range made.Spec.Versions {
		// The API server reads an object's metadata as ObjectMeta whatever the schema says; say so,
		// so that a strict validator does not take `metadata` for an unknown field.
		root := version.Schema.OpenAPIV3Schema
		if _, ok := root.Properties["metadata"]; !ok {
			root.Properties["metadata"] = apiextensionsv1.JSONSchemaProps{Type: "object"}
		}
	}
	out, err := yaml.Marshal(made)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backendconfig-crd:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
