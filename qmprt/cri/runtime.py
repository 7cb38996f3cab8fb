"""RuntimeService calls about the runtime itself: Version, Status, RuntimeConfig, UpdateRuntimeConfig.

Also the RPCs of the proto that qmprt does not serve, each with the answer a real runtime gives:
UNIMPLEMENTED where kubelet tolerates it (checkpoints, pod-level resize). GetContainerEvents is
``qmprt.cri.events``.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import validate
from qmprt.cri.backend import Handlers

CRI_VERSION = "0.1.0"  # the kubelet refuses a runtime that answers anything else
RUNTIME_NAME = "qmprt"
RUNTIME_API_VERSION = "v1"


def runtime_version() -> str:
    try:
        return metadata.version("qmprt")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class RuntimeInfoHandlers(Handlers):
    async def Version(self, request: cri.VersionRequest, context: Any) -> cri.VersionResponse:
        return cri.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=runtime_version(),
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: cri.StatusRequest, context: Any) -> cri.StatusResponse:
        health = self.runtime.health()
        conditions = [
            cri.RuntimeCondition(
                type="RuntimeReady",
                status=health.runtime_ready,
                reason=health.runtime_reason,
                message=health.runtime_message,
            ),
            cri.RuntimeCondition(
                type="NetworkReady",
                status=health.network_ready,
                reason=health.network_reason,
                message=health.network_message,
            ),
        ]
        handlers = [
            cri.RuntimeHandler(
                name=name,
                features=cri.RuntimeHandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False),
            )
            for name in ("", *self.runtime.config.runtime.handlers)
        ]
        info = {}
        if request.verbose:
            info["config"] = json.dumps(dataclasses.asdict(self.runtime.config), sort_keys=True, default=str)
        return cri.StatusResponse(
            status=cri.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=handlers,
            features=cri.RuntimeFeatures(supplemental_groups_policy=False),
        )

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, context: Any) -> cri.RuntimeConfigResponse:
        driver = cri.SYSTEMD if self.runtime.cgroup_driver_name() == "systemd" else cri.CGROUPFS
        return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: Any
    ) -> cri.UpdateRuntimeConfigResponse:
        self.runtime.update_runtime_config(validate.pod_cidr(request.runtime_config.network_config.pod_cidr))
        return cri.UpdateRuntimeConfigResponse()

    # -- not served ---------------------------------------------------------------------------------

    async def CheckpointContainer(
        self, request: cri.CheckpointContainerRequest, context: Any
    ) -> cri.CheckpointContainerResponse:
        raise NotImplementedError("qmprt does not checkpoint containers (VM snapshots are not exposed)")

    async def UpdatePodSandboxResources(
        self, request: cri.UpdatePodSandboxResourcesRequest, context: Any
    ) -> cri.UpdatePodSandboxResourcesResponse:
        raise NotImplementedError(
            "qmprt sizes each VM from its container's resources: use UpdateContainerResources"
        )
