"""Routing collection: record which experts every MoE layer chose for every token."""

from steermoe.routing.store import GENERATION, PROMPT, RoutingShard, RoutingStore, RoutingStoreWriter

__all__ = ["PROMPT", "GENERATION", "RoutingShard", "RoutingStore", "RoutingStoreWriter"]
