"""The local digital twin of a hybrid GPU cluster: a real control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler), KWOK fake GPU nodes in an IDC pool, the upstream
cluster-autoscaler's kwok provider for the elastic pool, and the data-plane helpers
(model-server emulators, gateway, GPU metric, KServe and ResourcePolicy behaviour)."""
