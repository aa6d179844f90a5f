package deploytest

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	podutil "k8s.io/kubernetes/pkg/api/pod"
	"k8s.io/kubernetes/pkg/apis/core"
	k8sv1 "k8s.io/kubernetes/pkg/apis/core/v1"
	"k8s.io/kubernetes/pkg/apis/core/validation"
)

// ValidatePod runs the checks the API server runs when the pod is created in
// namespace: its defaults (k8s.io/kubernetes/pkg/apis/core/v1), conversion
// to the internal type, and Kubernetes' own validation of a pod create
// (k8s.io/kubernetes/pkg/apis/core/validation.ValidatePodCreate) with the
// options the pod registry derives from the pod. It does not run admission
// (Pod Security, quotas), which depends on the cluster.
func ValidatePod(pod *corev1.Pod, namespace string) error {
	p := pod.DeepCopy()
	p.Namespace = namespace
	k8sv1.SetObjectDefaults_Pod(p)
	var internal core.Pod
	if err := k8sv1.Convert_v1_Pod_To_core_Pod(p, &internal, nil); err != nil {
		return fmt.Errorf("converting the pod: %w", err)
	}
	opts := podutil.GetValidationOptionsFromPodSpecAndMeta(&internal.Spec, nil, &internal.ObjectMeta, nil)
	if errs := validation.ValidatePodCreate(&internal, opts); len(errs) > 0 {
		return fmt.Errorf("kubernetes validation: %w", errs.ToAggregate())
	}
	return nil
}
