"""Benchmarks for envoy-mixer (``make bench``); measurements, never pass/fail tests."""
