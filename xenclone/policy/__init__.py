"""Eviction policies: tiny, mechanism-free, as xenpaging's policy.h."""
