"""``qmprt ctl``: a small CRI client for people without crictl, speaking CRI v1 over the socket.

Configs are the JSON or YAML documents crictl takes (parsed into the real protobuf messages with
``json_format``), output mimics crictl's tables, and inspect-like commands print JSON. The argparse
wiring lives in ``qmprt/cli.py``; everything that touches protobuf lives here.
"""
