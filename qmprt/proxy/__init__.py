"""``qmprt proxy``: a CRI v1 server in front of qmprt and containerd (or CRI-O).

It speaks only CRI, to kubelet and to its downstreams, and never imports the pod layer or the
mechanisms (an import-linter contract holds it to that).
"""
