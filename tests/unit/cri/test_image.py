"""ImageService: pull, list, status (unknown → empty, no error), remove, filesystem info."""

from __future__ import annotations

import asyncio
import json

import grpc
from cri_api.v1 import api_pb2 as cri

from .conftest import Client, create_container, run_pod, status_of
from .fake import FakeRuntime


def _spec(name: str) -> cri.ImageSpec:
    return cri.ImageSpec(image=name)


async def test_pull_returns_the_digest_and_the_image_is_listed(client: Client, fake: FakeRuntime) -> None:
    response = await client.images.PullImage(cri.PullImageRequest(image=_spec("registry.example/tiny:1.0")))
    digest = response.image_ref
    assert digest.startswith("sha256:") and len(digest) == 71
    [image] = (await client.images.ListImages(cri.ListImagesRequest())).images
    assert image.id == digest
    assert list(image.repo_tags) == ["registry.example/tiny:1.0"]
    assert list(image.repo_digests) == [f"registry.example/tiny@{digest}"]
    assert image.size == 1 << 20


async def test_pull_passes_credentials(client: Client, fake: FakeRuntime) -> None:
    auth = cri.AuthConfig(username="u", password="p", registry_token="t")
    await client.images.PullImage(cri.PullImageRequest(image=_spec("tiny"), auth=auth))
    assert (fake.images.last_auth.username, fake.images.last_auth.registry_token) == ("u", "t")
    await client.images.PullImage(cri.PullImageRequest(image=_spec("tiny")))
    assert fake.images.last_auth is None


async def test_pull_errors(client: Client) -> None:
    code, _ = await status_of(client.images.PullImage(cri.PullImageRequest(image=_spec(""))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(client.images.PullImage(cri.PullImageRequest(image=_spec("missing/x"))))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_pull_honours_the_client_deadline(client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 30
    code, _ = await status_of(client.images.PullImage(cri.PullImageRequest(image=_spec("slow")), timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if fake.images.pulls_cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.images.pulls_cancelled == 1, "the store's pull was cancelled with the call"
    assert not fake.images.records


async def test_pull_honours_client_cancellation(client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 30
    call = client.images.PullImage(cri.PullImageRequest(image=_spec("slow")))
    await asyncio.sleep(0.2)
    call.cancel()
    for _ in range(50):
        if fake.images.pulls_cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.images.pulls_cancelled == 1


async def test_status_of_an_unknown_image_is_empty_and_no_error(client: Client) -> None:
    response = await client.images.ImageStatus(cri.ImageStatusRequest(image=_spec("never-pulled:latest")))
    assert not response.HasField("image")
    assert not response.info


async def test_status_of_a_known_image_by_name_and_digest(client: Client, fake: FakeRuntime) -> None:
    record = fake.images.add("tiny")
    for ref in ("tiny", record.digest):
        response = await client.images.ImageStatus(cri.ImageStatusRequest(image=_spec(ref), verbose=True))
        assert response.image.id == record.digest and list(response.image.repo_tags) == ["tiny"]
        assert json.loads(response.info["info"])["id"] == record.digest


async def test_list_with_a_filter(client: Client, fake: FakeRuntime) -> None:
    fake.images.add("a")
    fake.images.add("b")
    listed = await client.images.ListImages(cri.ListImagesRequest(filter=cri.ImageFilter(image=_spec("b"))))
    assert [list(image.repo_tags) for image in listed.images] == [["b"]]
    none = await client.images.ListImages(cri.ListImagesRequest(filter=cri.ImageFilter(image=_spec("zzz"))))
    assert not none.images


async def test_remove_is_idempotent(client: Client, fake: FakeRuntime) -> None:
    fake.images.add("tiny")
    for _ in range(2):
        await client.images.RemoveImage(cri.RemoveImageRequest(image=_spec("tiny")))
    assert not fake.images.records
    await client.images.RemoveImage(cri.RemoveImageRequest(image=_spec("never-there")))


async def test_removing_an_image_in_use_is_a_failed_precondition(client: Client, fake: FakeRuntime) -> None:
    await create_container(client, fake, await run_pod(client))
    code, _ = await status_of(client.images.RemoveImage(cri.RemoveImageRequest(image=_spec("tiny"))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert fake.images.resolve("tiny") is not None


async def test_image_fs_info_has_image_and_container_filesystems(client: Client, fake: FakeRuntime) -> None:
    fake.images.add("tiny", size=5000)
    response = await client.images.ImageFsInfo(cri.ImageFsInfoRequest())
    assert len(response.image_filesystems) == 1 and len(response.container_filesystems) == 1
    for usage in (*response.image_filesystems, *response.container_filesystems):
        assert usage.timestamp > 10**18
        assert usage.fs_id.mountpoint == str(fake.images.root)
        assert usage.used_bytes.value == 5000
        assert usage.inodes_used.value == 2


async def test_status_verbose_shows_a_pull_in_progress(client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 30
    call = client.images.PullImage(cri.PullImageRequest(image=_spec("slow:1")))
    for _ in range(100):
        if "slow:1" in fake.images.pulling:
            break
        await asyncio.sleep(0.02)
    fake.images.pulling["slow:1"] = (12345, 1 << 20)
    response = await client.images.ImageStatus(cri.ImageStatusRequest(image=_spec("slow:1"), verbose=True))
    assert not response.HasField("image")
    assert json.loads(response.info["pull"]) == {"done": 12345, "total": 1 << 20}
    quiet = await client.images.ImageStatus(cri.ImageStatusRequest(image=_spec("slow:1")))
    assert not quiet.info, "only a verbose status tells of the pull"
    call.cancel()


def test_repo_tags_and_repo_digests_of_a_registry_pull_and_a_url_pull() -> None:
    from qmprt.cri import answers
    from qmprt.image.records import ImageRecord

    disk, manifest = "sha256:" + "d" * 64, "sha256:" + "e" * 64
    registry = ImageRecord(disk, "/x", "qcow2", 1, 1, ("r.local:5000/vm/tiny:1", "r.local:5000/vm/tiny:2", f"r.local:5000/vm/tiny@{manifest}"), 0)
    image = answers.image(registry)
    assert list(image.repo_tags) == ["r.local:5000/vm/tiny:1", "r.local:5000/vm/tiny:2"]
    assert list(image.repo_digests) == [f"r.local:5000/vm/tiny@{manifest}"], "the manifest digest, as containerd shows it"
    url = ImageRecord(disk, "/x", "raw", 1, 1, ("https://h.example/t.raw", "h.example/t:1"), 0)
    image = answers.image(url)
    assert list(image.repo_tags) == ["https://h.example/t.raw", "h.example/t:1"]
    assert list(image.repo_digests) == [f"https://h.example/t.raw@{disk}", f"h.example/t@{disk}"]
