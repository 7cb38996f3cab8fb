"""VM disk images: name translation, pull, verification, the sha256 store, and container overlays.

A mechanism: no grpc or protobuf here. ``ImageStore`` is the entry point (pull, import, resolve, list,
remove, filesystem usage); ``translate`` maps a name to a URL by the configured rules; ``inspect``
decides whether a file is a disk image qmprt may boot; ``overlay`` makes each container's root disk.
"""

from qmprt.image.fetch import PullAuth
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.inspect import ImageInfo, inspect_image, sniff_format
from qmprt.image.overlay import ImageFormat, create_overlay, create_overlay_async, remove_overlay
from qmprt.image.reference import ImageReference, normalise_name, parse_reference
from qmprt.image.rules import (
    ImageConfig,
    RuleSet,
    Translation,
    TranslationRule,
    image_config_from_table,
    parse_rules_file,
    rules_from_document,
    translate,
)
from qmprt.image.records import FsUsage, ImageRecord, Images
from qmprt.image.store import ImageStore, open_store

__all__ = [
    "FetchSettings",
    "FsUsage",
    "ImageConfig",
    "ImageFormat",
    "ImageInfo",
    "ImageRecord",
    "ImageReference",
    "ImageStore",
    "Images",
    "PullAuth",
    "RuleSet",
    "Translation",
    "TranslationRule",
    "create_overlay",
    "create_overlay_async",
    "inspect_image",
    "image_config_from_table",
    "normalise_name",
    "open_store",
    "parse_reference",
    "parse_rules_file",
    "remove_overlay",
    "rules_from_document",
    "sniff_format",
    "translate",
]
