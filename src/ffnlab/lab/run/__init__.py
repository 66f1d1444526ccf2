"""Executing a comparison: the run loop, adaptive seeding, worker pools and Ray, and assembling results.json."""
