"""Mixture-of-experts ops: routing, expert-parallel dispatch/combine, local experts."""

from ..._devices import ANY_DEVICE
from .._dispatch import register
from .api import ep_combine, ep_dispatch, moe_experts
from .._comm import CollectiveTimeoutError
from .ep import DispatchResult, EPHandle
from .layer import ep_moe
from .routing import moe_route

register("moe_route", "reference", "ascend_ext.ops.moe.routing:route_reference", devices=ANY_DEVICE)
register("ep_dispatch", "reference", "ascend_ext.ops.moe.ep:dispatch", devices=ANY_DEVICE)
register("ep_combine", "reference", "ascend_ext.ops.moe.ep:combine", devices=ANY_DEVICE)
register("moe_experts", "reference", "ascend_ext.ops.moe.experts:experts_reference", devices=ANY_DEVICE)

__all__ = ["CollectiveTimeoutError", "DispatchResult", "EPHandle", "ep_combine", "ep_dispatch", "ep_moe",
           "moe_experts", "moe_route"]
