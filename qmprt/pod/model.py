"""Old name of ``qmprt.pod.specs`` (what the CRI asks for), kept for importers not yet moved."""

from qmprt.pod.specs import METADATA_VERSION, ContainerMetadata, ContainerSpec, DeviceSpec, DNSSettings, MountSpec
from qmprt.pod.specs import PortMapping, Resources, SandboxMetadata, SandboxSpec, metadata_bytes

__all__ = [
    "METADATA_VERSION", "ContainerMetadata", "ContainerSpec", "DeviceSpec", "DNSSettings", "MountSpec",
    "PortMapping", "Resources", "SandboxMetadata", "SandboxSpec", "metadata_bytes",
]
