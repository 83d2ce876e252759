"""The leaf library: errors, YAML with lines, logging, snapshots, clocks and the wire contract.

Everything in the project may import it; it imports nothing of ours (tests/test_import_rules.py).
"""
