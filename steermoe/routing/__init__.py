"""Routing collection: record which experts every MoE layer chose for every token.

Heavy imports (torch, transformers) happen inside functions, so importing this package is cheap.
"""

from steermoe.routing.collect import collect_routing, run_collection
from steermoe.routing.recorder import Capture, RouterRecorder
from steermoe.routing.records import SequenceRouting, shard_tables, trim_generated
from steermoe.routing.store import GENERATION, PROMPT, SEGMENTS, RoutingShard, RoutingStore, RoutingStoreWriter

__all__ = [
    "PROMPT",
    "GENERATION",
    "SEGMENTS",
    "RoutingShard",
    "RoutingStore",
    "RoutingStoreWriter",
    "RouterRecorder",
    "Capture",
    "SequenceRouting",
    "shard_tables",
    "trim_generated",
    "collect_routing",
    "run_collection",
]
