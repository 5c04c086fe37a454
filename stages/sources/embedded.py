"""What an image's own bytes say about its use: rights and provenance metadata embedded in the file.

- XMP (the packet Pillow finds in JPEG, PNG, WebP, TIFF, AVIF), parsed by defusedxml (no DTD, no
  entity expansion): PLUS `plus:DataMining` values `DMI-PROHIBITED*` refuse training; IPTC
  `Iptc4xmpExt:DigitalSourceType` says how the image was made.
- C2PA manifests, read offline by the C2PA project's own library (no remote manifest fetch, no
  OCSP): a `cawg.training-mining` assertion (C2PA 1.x: `c2pa.training-mining`) whose training or
  data-mining entry says `notAllowed` or `constrained` refuses (in any manifest of the store: an
  ingredient's reservation carries over; `ai_inference` is not our use); the `digitalSourceType`
  of the active manifest's actions says how the image was made. A manifest refuses whether or not
  its signature is trusted: honouring a reservation needs no proof.

Metadata is untrusted input: whatever fails to parse is recorded as `unreadable` and counts as no
signal; nothing here raises. An XMP packet longer than XMP_MAX_BYTES is unreadable unparsed (a
packet of megabytes costs seconds and ~40 times its size in memory); the image itself is already
bounded by `crawl.max_bytes`.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

import c2pa
from defusedxml import ElementTree
from PIL import Image

from pipeline.core.config import ConsentSettings
from pipeline.core.reasons import AI_GENERATED, METADATA_PROHIBITS_TRAINING
from stages.sources.consent import ABSENT, OFF, PASS, REFUSED, UNREADABLE, Evidence, Refusal

READ, UNSUPPORTED, REMOTE = "read", "unsupported", "remote"
PLUS = "http://ns.useplus.org/ldf/xmp/1.0/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
TRAINING_LABELS = {"cawg.training-mining", "c2pa.training-mining"}
REFUSING_USES = {"notallowed", "constrained"}
# Pillow's own cap on a PNG text chunk (PngImagePlugin.MAX_TEXT_CHUNK), the XMP of other formats has none. A
# JPEG's packet is at most 64 KiB; real ones are a few KiB.
XMP_MAX_BYTES = 1 << 20
# Offline: never fetch a manifest a file only points to, nor certificate status.
C2PA_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


@dataclass(frozen=True)
class Embedded:
    xmp: str  # absent | read | unreadable
    c2pa: str  # absent | read | unreadable | unsupported (a format the library does not read) | remote (not fetched)
    declarations: tuple[str, ...] = ()  # training / data-mining terms: "plus:DataMining=DMI-ALLOWED", ...
    prohibitions: tuple[str, ...] = ()  # those refusing: "plus:DataMining=DMI-PROHIBITED-AIMLTRAINING", ...
    source_types: tuple[str, ...] = ()  # IPTC digital source type codes (the URI's last segment)
    detail: str = ""  # why a block was unreadable


def embedded_refusal(data: bytes, image_format: str, consent: ConsentSettings, evidence: Evidence) -> Refusal | None:
    """metadata_prohibits_training or ai_generated, from the image's own metadata; the findings go to `evidence`."""
    if not consent.embedded_metadata and not consent.ai_source_types:
        evidence["training_metadata"] = evidence["ai_generated"] = OFF
        return None
    found = read_embedded(data, image_format)
    evidence.update(xmp=found.xmp, c2pa=found.c2pa)
    if found.detail:
        evidence["metadata_detail"] = found.detail[:200]
    prohibits = consent.embedded_metadata and bool(found.prohibitions)
    evidence["training_metadata"] = _outcome(prohibits, found.declarations) if consent.embedded_metadata else OFF
    refusing = {kind.lower() for kind in consent.ai_source_types}
    generated = [kind for kind in found.source_types if kind.lower() in refusing]
    evidence["ai_generated"] = OFF if not refusing else _outcome(bool(generated), found.source_types)
    if prohibits:
        return METADATA_PROHIBITS_TRAINING, "embedded metadata: " + ", ".join(found.prohibitions)
    if generated:
        return AI_GENERATED, f"embedded metadata: digital source type {generated[0]}"
    return None


def _outcome(refused: bool, found: tuple[str, ...]) -> str:
    return REFUSED if refused else PASS if found else ABSENT


def read_embedded(data: bytes, image_format: str) -> Embedded:
    xmp_state, xmp_root, xmp_detail = _xmp(data)
    c2pa_state, store, c2pa_detail = _c2pa_store(data, image_format)
    declared = list(_training_terms(xmp_root, store))
    source_types = _codes([*_xmp_values(xmp_root, IPTC_EXT, "DigitalSourceType"), *_c2pa_source_types(store)])
    return Embedded(
        xmp_state,
        c2pa_state,
        declarations=tuple(term for term, _ in declared),
        prohibitions=tuple(term for term, refuses in declared if refuses),
        source_types=tuple(dict.fromkeys(source_types)),
        detail="; ".join(filter(None, (xmp_detail, c2pa_detail))),
    )


def _training_terms(xmp_root: Element | None, store: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """Every training / data-mining declaration, and whether it refuses our use."""
    for code in _codes(_xmp_values(xmp_root, PLUS, "DataMining")):
        yield f"plus:DataMining={code}", code.upper().startswith("DMI-PROHIBITED")
    for name, use in _training_entries(store):
        yield f"{name}={use}", not name.endswith("ai_inference") and use.lower() in REFUSING_USES


def _codes(values: Iterable[str]) -> list[str]:
    """The vocabulary code of each value: `http://.../DMI-PROHIBITED-AIMLTRAINING` -> `DMI-PROHIBITED-AIMLTRAINING`."""
    return [value.strip().rstrip("/").rsplit("/", 1)[-1] for value in values if value.strip()]


# -- XMP -----------------------------------------------------------------------------------------------
def _xmp(data: bytes) -> tuple[str, Element | None, str]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            packet = image.info.get("xmp")
        if not packet:
            return ABSENT, None, ""
        packet = packet.encode() if isinstance(packet, str) else packet
        if len(packet) > XMP_MAX_BYTES:
            return UNREADABLE, None, f"XMP: a packet of {len(packet)} bytes, more than {XMP_MAX_BYTES}"
        return READ, ElementTree.fromstring(packet.rstrip(b"\x00 \t\r\n")), ""
    except Exception as exc:  # hostile XML or image headers fail in many ways; all mean "no signal"
        return UNREADABLE, None, f"XMP: {type(exc).__name__}: {exc}"


def _xmp_values(root: Element | None, namespace: str, name: str) -> Iterator[str]:
    """A property's values, in either RDF form: an attribute of a description, or an element
    (its text, its items' text, or its rdf:resource)."""
    if root is None:
        return
    tag = f"{{{namespace}}}{name}"
    for element in root.iter():
        if tag in element.attrib:
            yield element.attrib[tag]
        if element.tag == tag:
            yield element.attrib.get(f"{{{RDF}}}resource", "")
            yield from element.itertext()


# -- C2PA ----------------------------------------------------------------------------------------------
@functools.cache
def _c2pa_formats() -> frozenset[str]:
    return frozenset(c2pa.Reader.get_supported_mime_types())


def _c2pa_store(data: bytes, image_format: str) -> tuple[str, dict[str, Any], str]:
    mime = Image.MIME.get(image_format.upper())
    if mime is None or mime not in _c2pa_formats():
        return UNSUPPORTED, {}, ""
    try:
        context = c2pa.Context(c2pa.Settings.from_dict(C2PA_SETTINGS))
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=context)
        if reader is None:
            return ABSENT, {}, ""
        with reader:
            store = json.loads(reader.json())
        return READ, store if isinstance(store, dict) else {}, ""
    except Exception as exc:  # the library raises its own errors for hostile or broken manifests
        if _is_remote(exc):  # only a link to a manifest elsewhere: never fetched, so not checkable
            return REMOTE, {}, f"C2PA: {exc}"
        return UNREADABLE, {}, f"C2PA: {type(exc).__name__}: {exc}"


def _is_remote(exc: Exception) -> bool:
    """c2pa-python 0.38 raises its base error with a "Remote: must fetch ..." message, not RemoteManifest."""
    return isinstance(exc, c2pa.C2paError.RemoteManifest) or str(exc).startswith("Remote")


def _assertions(manifest: object, labels: set[str]) -> Iterator[dict[str, Any]]:
    """The data of a manifest's assertions whose label (less a `__N` instance or `.vN` suffix) is in `labels`."""
    for assertion in _dicts(manifest.get("assertions") if isinstance(manifest, dict) else None):
        label = str(assertion.get("label", "")).split("__", 1)[0]
        if label in labels or label.rsplit(".v", 1)[0] in labels:
            data = assertion.get("data")
            if isinstance(data, dict):
                yield data


def _training_entries(store: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(entry, use) of every training-and-data-mining assertion in the store's manifests."""
    manifests = store.get("manifests")
    for manifest in manifests.values() if isinstance(manifests, dict) else ():
        for data in _assertions(manifest, TRAINING_LABELS):
            entries = data.get("entries")
            for name, entry in entries.items() if isinstance(entries, dict) else ():
                yield str(name), str(entry.get("use", "")) if isinstance(entry, dict) else ""


def _c2pa_source_types(store: dict[str, Any]) -> Iterator[str]:
    manifests, active = store.get("manifests"), store.get("active_manifest")
    manifest = manifests.get(active) if isinstance(manifests, dict) and isinstance(active, str) else None
    for data in _assertions(manifest, {"c2pa.actions"}):
        for action in _dicts(data.get("actions")):
            if isinstance(action.get("digitalSourceType"), str):
                yield action["digitalSourceType"]


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
