"""Old name of ``qmprt.pod.views`` (what the pod layer answers), kept for importers not yet moved."""

from qmprt.pod.records import ContainerStatus, SandboxStatus
from qmprt.pod.views import ContainerInfo, ContainerStatsInfo, RuntimeHealth, SandboxInfo, SandboxStatsInfo

__all__ = [
    "ContainerInfo", "ContainerStatsInfo", "ContainerStatus", "RuntimeHealth", "SandboxInfo", "SandboxStatsInfo",
    "SandboxStatus",
]
