"""The ``cost`` section: what the GPU pools cost. The computation is ``tasks.cost``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.spec.base import _FieldError

MAX_PRICE = 1_000_000.0


class PoolPrice(BaseModel):
    """What one node pool costs: a GPU-hour or a node-hour price, and GPUs per node."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    price_per_gpu_hour: float | None = Field(
        None, ge=0, le=MAX_PRICE, title="Price per GPU-hour",
        description="Price of one GPU for one hour (IDC: amortised purchase, power and operations; "
                    "cloud: the on-demand or spot price). Set this or price_per_node_hour; empty "
                    "with both leaves the pool unpriced.")
    price_per_node_hour: float | None = Field(
        None, ge=0, le=MAX_PRICE, title="Price per node-hour",
        description="Price of one whole node for one hour, instead of price_per_gpu_hour.")
    gpus_per_node: int = Field(
        1, ge=1, le=64, title="GPUs per node",
        description="nvidia.com/gpu capacity of one node of the pool: converts between node-hour and "
                    "GPU-hour prices and sets the pool's GPU count for utilisation.")
    pricing: Literal["amortised", "on-demand", "spot"] = Field(
        "on-demand", title="Pricing",
        description="How the price is set, shown in the report: amortised (owned IDC hardware), "
                    "on-demand or spot (cloud).")

    @field_validator("price_per_gpu_hour", "price_per_node_hour", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a number (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_price(self) -> PoolPrice:
        if self.price_per_gpu_hour is not None and self.price_per_node_hour is not None:
            raise _FieldError("price_per_node_hour", "set price_per_gpu_hour or price_per_node_hour, not both")
        return self

    @property
    def priced(self) -> bool:
        return self.price_per_gpu_hour is not None or self.price_per_node_hour is not None

    def node_hour(self) -> float | None:
        if self.price_per_node_hour is not None:
            return float(self.price_per_node_hour)
        if self.price_per_gpu_hour is not None:
            return float(self.price_per_gpu_hour) * self.gpus_per_node
        return None

    def gpu_hour(self) -> float | None:
        if self.price_per_gpu_hour is not None:
            return float(self.price_per_gpu_hour)
        if self.price_per_node_hour is not None:
            return float(self.price_per_node_hour) / self.gpus_per_node
        return None


def _idc_price() -> PoolPrice:
    return PoolPrice(pricing="amortised")


class CostSpec(BaseModel):
    """What the GPU pools cost: the IDC and cloud prices, how the cloud bills, the currency."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    currency: str = Field("CNY", title="Currency", min_length=3, max_length=3,
                          description="ISO 4217 code of every price and cost, e.g. CNY, USD.")
    idc: PoolPrice = Field(default_factory=_idc_price, title="IDC pool price",
                           description="Price of the on-premise pool (cluster.idc_pool_id), usually "
                                       "amortised; it is paid all day whether busy or not.")
    cloud: PoolPrice = Field(default_factory=PoolPrice, title="Cloud pool price",
                             description="Price of the elastic cloud pool (cluster.elastic_pool_id), "
                                         "on-demand or spot; paid per node while it exists.")
    billing_granularity: Literal["second", "minute", "hour"] = Field(
        "second", title="Cloud billing granularity",
        description="Unit each cloud node's time is rounded up to: second, minute or hour.")
    minimum_charge_s: int = Field(
        0, ge=0, le=86_400, title="Cloud minimum charge (s)",
        description="Each cloud node is billed for at least this many seconds (e.g. 60).")

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not (value.isascii() and value.isalpha() and value.isupper()):
            raise ValueError(f"must be an ISO 4217 code of three capital letters (got {value!r})")
        return value

