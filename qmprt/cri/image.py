"""ImageService: list, status, pull, remove, and the image filesystem's usage.

An image's ``id`` is its digest, ``repo_tags`` the names it was pulled or imported under.
PullImage just awaits the store: when the client's deadline passes or it cancels, grpc.aio
cancels this task, and the store's pull stops and cleans up its temporary file.
"""

from __future__ import annotations

import json
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt import telemetry
from qmprt.cri import answers, validate
from qmprt.cri.backend import Handlers
from qmprt.errors import InvalidArgument
from qmprt.image import PullAuth


class ImageHandlers(Handlers):
    async def ListImages(self, request: cri.ListImagesRequest, context: Any) -> cri.ListImagesResponse:
        store = self.runtime.images
        wanted = request.filter.image.image
        if wanted:
            record = store.resolve(wanted)
            records = [] if record is None else [record]
        else:
            records = list(store.list())
        return cri.ListImagesResponse(images=[answers.image(record) for record in records])

    async def ImageStatus(self, request: cri.ImageStatusRequest, context: Any) -> cri.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgument("ImageStatus needs an image: image.image is empty")
        record = self.runtime.images.resolve(request.image.image)
        if record is None:
            # Unknown: no image, and no error (kubelet then pulls). Verbose, a pull in progress shows
            # how far it got ("pull": {"done": bytes, "total": bytes or null}): qmprt ctl pull's progress.
            pulling = self.runtime.images.pull_progress(request.image.image) if request.verbose else None
            if pulling is None:
                return cri.ImageStatusResponse()
            return cri.ImageStatusResponse(info={"pull": json.dumps({"done": pulling[0], "total": pulling[1]})})
        info = {}
        if request.verbose:
            info = answers.verbose_info({"id": record.digest, "record": record})
        return cri.ImageStatusResponse(image=answers.image(record), info=info)

    async def PullImage(self, request: cri.PullImageRequest, context: Any) -> cri.PullImageResponse:
        name = request.image.image
        if not name:
            raise InvalidArgument("PullImage needs an image: image.image is empty")
        validate.text(name, "image.image")
        try:
            record = await self.runtime.images.pull(name, _auth(request))
        except BaseException:
            telemetry.PULLS.labels("error").inc()
            raise
        telemetry.PULLS.labels("ok").inc()
        return cri.PullImageResponse(image_ref=record.digest)

    async def RemoveImage(self, request: cri.RemoveImageRequest, context: Any) -> cri.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgument("RemoveImage needs an image: image.image is empty")
        self.runtime.images.remove(request.image.image, in_use=self.runtime.image_in_use)
        return cri.RemoveImageResponse()

    async def ImageFsInfo(self, request: cri.ImageFsInfoRequest, context: Any) -> cri.ImageFsInfoResponse:
        usage = self.runtime.images.fs_usage()
        filesystem = answers.filesystem_usage(usage.timestamp_ns, usage.mountpoint, usage.used_bytes, usage.inodes_used)
        # Overlays live under the same state root as the images, so the writable layers share the
        # image filesystem (as containerd reports it when both sit on one disk).
        return cri.ImageFsInfoResponse(image_filesystems=[filesystem], container_filesystems=[filesystem])


def _auth(request: cri.PullImageRequest) -> PullAuth | None:
    if not request.HasField("auth"):
        return None
    auth = request.auth
    return PullAuth(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        registry_token=auth.registry_token,
        identity_token=auth.identity_token,
    )
