"""The ``cluster`` section: the Kubernetes cluster, its two GPU pools and the ResourcePolicy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec.base import DnsLabel, LabelValue, QualifiedName, SafeName, _FieldError, _Strict


class ResourcePolicyOptions(_Strict):
    """How the ACK ResourcePolicy orders the IDC and elastic units."""

    elastic_unit: Literal["ecs", "elastic"] = Field(
        "ecs", title="Elastic unit resource",
        description="ecs: an ecs unit on the elastic pool carrying the "
                    "k8s.aliyun.com/resource-policy-wait-for-ecs-scaling marker (ACK's "
                    "recommended form); elastic: the deprecated 'resource: elastic' unit.")
    when_try_next_units: Literal["LackResourceOrExceedMax", "ExceedMax", "TimeoutOrExceedMax",
                                 "LackResourceAndNoTerminating"] = Field(
        "LackResourceOrExceedMax", title="When to try the next unit",
        description="whenTryNextUnits.policy; the default moves to the elastic unit as soon as "
                    "the IDC unit lacks resources (or holds idc_max_pods).")
    try_next_timeout_s: int | None = Field(
        None, ge=1, le=3600, title="Wait before next unit (s)",
        description="whenTryNextUnits.timeout, only with TimeoutOrExceedMax (ACK's default is 15 min).")
    idc_max_pods: int | None = Field(
        None, ge=0, le=10_000, title="IDC unit max pods",
        description="'max' of the IDC unit; the elastic unit never gets one (ACK: setting max on "
                    "an elastic pool's unit can create invalid nodes).")

    @model_validator(mode="after")
    def _timeout(self) -> ResourcePolicyOptions:
        if self.try_next_timeout_s is not None and self.when_try_next_units != "TimeoutOrExceedMax":
            raise _FieldError("try_next_timeout_s", "only applies when when_try_next_units is "
                                                    "TimeoutOrExceedMax")
        return self


class ClusterSpec(_Strict):
    """The Kubernetes cluster (ACK Edge or the test bed) and its two GPU pools."""

    kubeconfig: str | None = Field(
        None, title="Kubeconfig",
        description="Path of the kubeconfig file; empty means $KUBECONFIG / ~/.kube/config "
                    "(profile local: the one `tidegate testbed up` writes, tasks/profile.py).")
    context: str | None = Field(None, title="Context", max_length=253,
                                description="Kubeconfig context; empty means the current one.")
    in_cluster: bool = Field(False, title="In-cluster",
                             description="Use the pod's ServiceAccount instead of a kubeconfig.")
    namespace: DnsLabel = Field("default", title="Namespace",
                                description="Namespace of everything the run creates.")
    create_namespace: bool = Field(False, title="Create namespace",
                                   description="Create the namespace if the run should own it.")
    service_account: DnsLabel = Field(
        "tidegate", title="Pipeline ServiceAccount",
        description="ServiceAccount that manifests/rbac.yaml grants the pipeline's permissions to.")
    nodepool_label: QualifiedName = Field(
        "alibabacloud.com/nodepool-id", title="Node pool label",
        description="Node label whose value identifies a node pool.")
    idc_pool_id: LabelValue = Field("np-idc", title="IDC pool id",
                                    description="Node pool id of the on-premise (IDC) GPU pool.")
    elastic_pool_id: LabelValue = Field("np-elastic", title="Elastic pool id",
                                        description="Node pool id of the autoscaled cloud GPU pool.")
    autoscaler_group: SafeName | None = Field(
        None, title="Autoscaler node group", max_length=253,
        description="Name of the elastic pool's node group in the cluster-autoscaler's status (on ACK the "
                    "scaling group id); empty means elastic_pool_id. Only its scale-ups count as spill-over.")
    max_node_provision_time_s: int = Field(
        900, ge=1, le=86_400, title="Max node provision time (s)",
        description="The cluster-autoscaler's max-node-provision-time: an elastic node not Ready this long "
                    "after it was created is reported as a provisioning failure (upstream default 15 min).")
    placement: Literal["resourcepolicy", "affinity"] = Field(
        "resourcepolicy", title="Placement",
        description="resourcepolicy: ACK's ResourcePolicy (IDC unit, then elastic unit); "
                    "affinity: vanilla Kubernetes preferred node affinity (IDC weight 100, "
                    "elastic 10).")
    resource_policy: ResourcePolicyOptions = Field(
        default_factory=ResourcePolicyOptions, title="ResourcePolicy",
        description="Unit options when placement is resourcepolicy.")

    @property
    def elastic_group(self) -> str:
        """The elastic pool's node group name in the autoscaler's status."""
        return self.autoscaler_group or self.elastic_pool_id

    @model_validator(mode="after")
    def _cluster(self) -> ClusterSpec:
        if self.in_cluster and (self.kubeconfig or self.context):
            field = "kubeconfig" if self.kubeconfig else "context"
            raise _FieldError(field, "cannot be combined with in_cluster: true")
        if self.idc_pool_id == self.elastic_pool_id:
            raise _FieldError("elastic_pool_id", f"must differ from idc_pool_id ({self.idc_pool_id!r})")
        return self
