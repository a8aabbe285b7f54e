"""The built-in demo world: prompt sets and a small MoE chat model trained offline."""
