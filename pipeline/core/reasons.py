"""Every reason code a row can carry, in one catalogue: the stages use these constants, never literals.

`docs/reasons.md` is generated from this catalogue (`python -m pipeline.refdocs`). A code is a short,
stable string stored in the `reason` column: renaming one breaks readers of old runs, so codes are
only ever added. `status` says whether a row was `dropped` (a decision about the content) or `failed`
(transient: `--retry-failed` runs it again); a few codes are either, as the cause decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DROPPED, FAILED, EITHER = "dropped", "failed", "dropped or failed"


@dataclass(frozen=True)
class Reason:
    code: str  # as stored; a `<...>` part stands for a family (`http_<code>`)
    stage: str
    status: str
    meaning: str


CATALOGUE: dict[str, Reason] = {}


def _reason(code: str, stage: str, meaning: str, status: str = DROPPED) -> str:
    CATALOGUE[code] = Reason(code, stage, status, meaning)
    return code


# crawl: finding and downloading
NO_SOURCE_FOLDER = _reason("no_source_folder", "crawl", "source=local: no folder under crawl.local_root matches the name")
BAD_FILE_NAME = _reason("bad_file_name", "crawl", "source=local: the file's name is not UTF-8 (rename the file)")
NO_IMAGES_FOUND = _reason("no_images_found", "crawl", "the source returned no candidate for the name")
ZERO_BYTES = _reason("zero_bytes", "crawl", "the body or file is empty")
NOT_AN_IMAGE = _reason("not_an_image", "crawl", "the bytes are no image format Pillow reads (decided from the bytes)")
DUPLICATE = _reason("duplicate", "crawl, hygiene",
                    "the same bytes are already kept for this identity (crawl), or twice in a merge (hygiene)")
HTTP_STATUS = _reason("http_<code>", "crawl", "the server answered this HTTP status; 429 and 5xx are transient",
                      EITHER)
TOO_LARGE = _reason("too_large", "crawl", "more than crawl.max_bytes, declared or streamed (after decompression)")
PRIVATE_ADDRESS = _reason("private_address", "crawl",
                          "the host resolves to a private, loopback or reserved address (crawl.allowed_networks)")
TOO_MANY_REDIRECTS = _reason("too_many_redirects", "crawl", "more than crawl.max_redirects redirects")
BAD_URL = _reason("bad_url", "crawl", "not an http(s) URL with a host (source=local: no file inside crawl.local_root)")
TLS_ERROR = _reason("tls_error", "crawl", "the certificate could not be verified")
TIMEOUT = _reason("timeout", "crawl", "a connect or read timeout, or the download's deadline", FAILED)
CONNECTION_ERROR = _reason("connection_error", "crawl", "the connection failed or was reset", FAILED)
READ_ERROR = _reason("read_error", "crawl", "a local file could not be read", FAILED)
TAKEN_DOWN = _reason("taken_down", "every stage", "covered by a takedown request (`python -m pipeline remove`)")
# crawl: consent
OPTED_OUT_IDENTITY = _reason("opted_out_identity", "crawl", "the name is on an opt-out list: never searched for")
OPTED_OUT_URL = _reason("opted_out_url", "crawl", "the image or page URL is covered by an opt-out domain: or url: entry")
OPTED_OUT_IMAGE = _reason("opted_out_image", "crawl, shard",
                          "the image's sha256 or perceptual hash matches an opt-out sha256: or phash: entry")
OPTED_OUT_FACE = _reason("opted_out_face", "shard",
                         "the target face matches a face: opt-out entry (a bystander's is blurred or dropped as "
                         "governance.bystander says)")
LICENSE_NOT_ALLOWED = _reason("license_not_allowed", "crawl", "the licence is not in crawl.allowed_licenses")
ROBOTS_DISALLOWED = _reason("robots_disallowed", "crawl", "the host's robots.txt disallows the path for us")
ROBOTS_UNREACHABLE = _reason("robots_unreachable", "crawl",
                             "robots.txt answered 5xx/429 or could not be read: RFC 9309 says assume disallow", FAILED)
TDM_RESERVED = _reason("tdm_reserved", "crawl", "TDMRep (tdmrep.json or the tdm-reservation header) reserves TDM rights")
ROBOTS_NOAI = _reason("robots_noai", "crawl", "an X-Robots-Tag directive of crawl.consent.x_robots_tag (noai, ...)")
METADATA_PROHIBITS_TRAINING = _reason("metadata_prohibits_training", "crawl",
                                      "XMP plus:DataMining or a C2PA training-and-mining assertion prohibits it")
AI_USAGE_REFUSED = _reason("ai_usage_refused", "crawl", "a Content-Usage preference (IETF AI Preferences), in "
                           "robots.txt or the response header, refuses AI training (train-ai=n)")
AI_GENERATED = _reason("ai_generated", "crawl", "the IPTC digital source type is in crawl.consent.ai_source_types")
# filter
LOW_RESOLUTION = _reason("low_resolution", "filter", "the short side is below filter.min_short_side")
EXTREME_ASPECT_RATIO = _reason("extreme_aspect_ratio", "filter", "long side / short side above filter.max_aspect_ratio")
DECOMPRESSION_BOMB = _reason("decompression_bomb", "filter", "the header declares more than filter.max_pixels")
DECODE_ERROR = _reason("decode_error", "filter, safety_scores, crop", "the image could not be decoded")
NO_FACE = _reason("no_face", "filter", "the detector found no face")
FACE_TOO_SMALL = _reason("face_too_small", "filter", "no face box reaches filter.min_face_size")
# verify
NOT_TARGET_IDENTITY = _reason("not_target_identity", "verify",
                              "no face is close enough to the identity's centroid (verify.threshold)")
IDENTITY_IS_OTHER_NAME = _reason("identity_is_other_name", "verify",
                                 "the folder's person is another name's identity (better supported there) and no "
                                 "other cluster of verify.min_images photos, alone in at least one, is left")
TOO_FEW_IMAGES = _reason("too_few_images", "verify, hygiene", "the identity keeps fewer than verify.min_images photos")
EXTREME_POSE = _reason("extreme_pose", "verify", "the target face turns beyond verify.quality.max_yaw or max_pitch")
BLURRY_FACE = _reason("blurry_face", "verify", "the target face's sharpness is below verify.quality.min_sharpness")
LOW_FACE_SCORE = _reason("low_face_score", "verify", "the detector's score is below verify.quality.min_face_score")
SMALL_FACE_SHARE = _reason("small_face_share", "verify", "the target face covers less than verify.quality.min_image_share")
MANY_FACES = _reason("many_faces", "verify", "more large faces than verify.quality.max_large_faces")
NOT_SELECTED_FOR_DIVERSITY = _reason("not_selected_for_diversity", "verify",
                                     "verify.max_images: farthest-point selection over pose and embedding kept others")
CURATOR_REJECTED = _reason("curator_rejected", "verify", "a curator decided the photo is not this person (decide --reject)")
CURATOR_SPLIT = _reason("curator_split", "verify",
                        "a curator decided the photo shows another person, a namesake (decide --split)")
# hygiene
CLAIMED_BY_OTHER_IDENTITY = _reason("claimed_by_other_identity", "hygiene",
                                    "the photo is kept under another identity whose centroid is closer")
MERGED_INTO_OTHER_IDENTITY = _reason("merged_into_other_identity", "hygiene",
                                     "hygiene.merge or a curator's merge moved the row to another identity")
# safety
MINOR = _reason("minor", "safety", "estimated age less governance.age_margin is below governance.min_age")
IDENTITY_MINOR = _reason("identity_minor", "safety", "the identity's median estimated age is below the limit")
NSFW = _reason("nsfw", "safety", "open_nsfw's score is above governance.max_nsfw")
# crop, segment, caption
CROP_TOO_SMALL = _reason("crop_too_small", "crop", "the crop would need more than crop.max_upscale")
NO_PERSON_MASK = _reason("no_person_mask", "segment",
                         "no person found, or the mask covers less than segment.min_face_coverage of the face")
MASK_FILLS_CROP = _reason("mask_fills_crop", "segment", "the mask fills more than segment.max_mask_area of the crop")
CROP_UNREADABLE = _reason("crop_unreadable", "segment, caption", "the stored crop could not be decoded")

_FAMILIES = [(re.compile(r"http_\d{3}"), HTTP_STATUS)]


def describe(code: str) -> Reason | None:
    """The catalogue entry of a stored code (`http_404` is the `http_<code>` family), or None."""
    if code in CATALOGUE:
        return CATALOGUE[code]
    return next((CATALOGUE[family] for pattern, family in _FAMILIES if pattern.fullmatch(code)), None)
