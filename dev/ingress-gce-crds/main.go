// Prints the CustomResourceDefinitions of GKE's BackendConfig (cloud.google.com) and FrontendConfig
// (networking.gke.io) as YAML documents, made by ingress-gce's own code, the way its controller
// creates them in a cluster: neither CRD is in any registry as a file, so
// `dev/tools install k8s-schemas` runs this to validate k8s/ against them.
package main

import (
	"fmt"
	"os"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	fake "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/fake"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	apisfrontendconfig "k8s.io/ingress-gce/pkg/apis/frontendconfig"
	frontendconfigv1beta1 "k8s.io/ingress-gce/pkg/apis/frontendconfig/v1beta1"
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
	handler := crd.NewCRDHandler(client, klog.Background())
	for i, meta := range []*crd.CRDMeta{backendconfig.CRDMeta(), frontendConfigMeta()} {
		made, err := handler.EnsureCRD(meta, true)
		if err != nil {
			fail(err)
		}
		made.APIVersion, made.Kind = "apiextensions.k8s.io/v1", "CustomResourceDefinition"
		made.Status = apiextensionsv1.CustomResourceDefinitionStatus{}
		for _, version := range made.Spec.Versions {
			// The API server reads an object's metadata as ObjectMeta whatever the schema says; say
			// so, so that a strict validator does not take `metadata` for an unknown field.
			root := version.Schema.OpenAPIV3Schema
			if _, ok := root.Properties["metadata"]; !ok {
				root.Properties["metadata"] = apiextensionsv1.JSONSchemaProps{Type: "object"}
			}
		}
		out, err := yaml.Marshal(made)
		if err != nil {
			fail(err)
		}
		if i > 0 {
			os.Stdout.WriteString("---\n")
		}
		os.Stdout.Write(out)
	}
}

// The FrontendConfig's CRD as k8s.io/ingress-gce/pkg/frontendconfig.CRDMeta makes it (the same
// group, names and generated OpenAPI definitions), written out here because importing that package
// pulls in the whole network endpoint group controller.
func frontendConfigMeta() *crd.CRDMeta {
	return crd.NewCRDMeta(
		apisfrontendconfig.GroupName,
		"FrontendConfig",
		"FrontendConfigList",
		"frontendconfig",
		"frontendconfigs",
		[]*crd.Version{
			crd.NewVersion("v1beta1", "k8s.io/ingress-gce/pkg/apis/frontendconfig/v1beta1.FrontendConfig", frontendconfigv1beta1.GetOpenAPIDefinitions, nil, false),
		},
	)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ingress-gce-crds:", err)
	os.Exit(1)
}
