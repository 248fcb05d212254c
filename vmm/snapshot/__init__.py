"""Snapshots of a whole VM (QEMU's savevm/loadvm, Firecracker's full and diff snapshots): the file
format (format.py), guest RAM pages and dirty tracking by page hashes (ram.py), the engines'
state and which engine may continue another's (engine_state.py), and the capture and restore of
a running machine (machine.py)."""
