package main

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// reapPods stands in for the one kubelet duty the control plane waits on.
// Deleting a pod that is bound to a node only marks it Terminating; the
// kubelet stops it and then deletes it for good. With no kubelet, such pods
// (and the namespaces holding them) would stay Terminating forever, so once
// a pod's grace period is over we make that final delete ourselves.
func reapPods(ctx context.Context, client kubernetes.Interface) {
	var scheduled sync.Map // pod UID -> struct{}
	schedule := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.DeletionTimestamp == nil || pod.Spec.NodeName == "" {
			return
		}
		if _, dup := scheduled.LoadOrStore(pod.UID, struct{}{}); dup {
			return
		}
		ns, name, uid := pod.Namespace, pod.Name, pod.UID
		// The API server sets deletionTimestamp to now + grace period.
		time.AfterFunc(time.Until(pod.DeletionTimestamp.Time), func() {
			defer scheduled.Delete(uid)
			zero := int64(0)
			err := client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero,
				Preconditions:      &metav1.Preconditions{UID: &uid},
			})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
				klog.ErrorS(err, "pod reaper: delete failed", "pod", ns+"/"+name)
			}
		})
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	_, _ = factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    schedule,
		UpdateFunc: func(_, obj any) { schedule(obj) },
	})
	factory.Start(ctx.Done())
}
