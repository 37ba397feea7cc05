"""One source for every name tidegate shares between modules: the stage names, the labels it
puts on what it creates, the Kubernetes objects it reads by name, the flow's name.

Nothing here imports anything of tidegate; every other module may import it.
"""

from __future__ import annotations

FLOW_NAME = "elastic-rollout-validation"

# the stage chain, in order (tasks.stages.STAGES defines each one; the spec's ``stages`` field,
# the CLI's --stages, the report's ``stages`` and JUnit all use these names). ``report`` is not a
# stage: the report is always written; the spec and --stages accept it and ignore it.
STAGE_NAMES = ("stage", "prepare", "deploy", "smoke", "spike", "verify", "gate", "teardown")
ALWAYS_RUN = ("report",)
# the stages that change the cluster: when one of them ran, teardown is owed (also by the hooks)
CREATES_OBJECTS = ("prepare", "deploy")
# what a spec's ``stages`` may list (the report where it is built: after verify, before the gate)
SPEC_STAGE_NAMES = (*STAGE_NAMES[:STAGE_NAMES.index("gate")], *ALWAYS_RUN, *STAGE_NAMES[STAGE_NAMES.index("gate"):])
STAGE_ALIASES = {"stage_model": "stage", "staging": "stage", "prepare_cluster": "prepare",
                 "deploy_service": "deploy", "load": "spike", "observe": "spike", "cleanup": "teardown"}

# labels of everything a run creates (teardown and cleanup select on them)
RUN_LABEL = "tidegate.dev/run-id"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "tidegate"
ADMIN_LABEL = "tidegate.dev/part"           # "admin": the administrator's objects (plan --admin), of no run
FIELD_MANAGER = "tidegate"

# node pools: the label whose value is a pool's id (ACK's; the spec's cluster.nodepool_label
# defaults to it)
NODEPOOL_LABEL = "alibabacloud.com/nodepool-id"
# the extended resource a GPU node offers (NVIDIA's device plugin)
GPU_RESOURCE = "nvidia.com/gpu"

# objects read or written by name
KSERVE_CRD = "inferenceservices.serving.kserve.io"
RESOURCEPOLICY_CRD = "resourcepolicies.scheduling.alibabacloud.com"
CUSTOM_METRICS_APISERVICE = "v1beta1.custom.metrics.k8s.io"
AUTOSCALER_STATUS = "cluster-autoscaler-status"
AUTOSCALER_NAMESPACE = "kube-system"
NODE_EVENTS_NAMESPACE = "default"  # where events of cluster-scoped objects (Nodes) are recorded
WAIT_FOR_SCALING = "k8s.aliyun.com/resource-policy-wait-for-ecs-scaling"
