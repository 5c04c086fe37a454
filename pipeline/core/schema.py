"""Column schemas in one place. Each stage's table is its input's columns plus the ones it adds.

`status` is `ok` (flows on), `dropped` (a decision about the content; kept for the report) or
`failed` (a transient error such as a timeout; `--retry-failed` runs it again). `reason` is a short
code (`low_resolution`, `http_404`, ...) and `detail` a human-readable message.
"""

from __future__ import annotations

import pyarrow as pa

OK, DROPPED, FAILED = "ok", "dropped", "failed"

ROW_KEYS = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),  # sha256 of the bytes; null only on per-identity rows
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)

NAMES = pa.schema([pa.field("identity", pa.string(), nullable=False), pa.field("name", pa.string())])

PROVENANCE = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("url", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("license", pa.string()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("http_status", pa.int32()),
        pa.field("raw_path", pa.string()),  # relative to the run directory
        pa.field("num_bytes", pa.int64()),
        pa.field("image_format", pa.string()),  # decided from the bytes, never from a header
        # JSON {check: outcome}: the consent signals checked for this row and what they said (docs/governance.md)
        pa.field("consent", pa.string()),
    ]
)

IMAGE_SIZE = pa.schema(
    [
        pa.field("width", pa.int32()),  # after EXIF orientation, as a viewer shows it
        pa.field("height", pa.int32()),
        pa.field("exif_orientation", pa.int8()),  # 1..8, the one applied; 1 when absent or out of range (0, 128)
        # the description of the embedded ICC profile the pixels were converted to sRGB from; null: no profile,
        # or one that is broken or for another colour space (converted as Pillow does by default)
        pa.field("icc_profile", pa.string()),
    ]
)


def extend(base: pa.Schema, *more: pa.Schema) -> pa.Schema:
    """`base` followed by the fields of `more` it lacks; row keys always come first."""
    fields = {field.name: field for field in ROW_KEYS}
    for schema in (base, *more):
        for field in schema:
            fields.setdefault(field.name, field)
    return pa.schema(list(fields.values()))

# One detected face. Boxes and landmarks are in pixels of the image as shown upright (EXIF applied).
FACE = pa.struct(
    [
        pa.field("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1
        pa.field("landmarks", pa.list_(pa.float32(), 10)),  # 5 (x, y) points: eyes, nose, mouth corners
        pa.field("score", pa.float32()),  # on the detector's own scale
        pa.field("embedding", pa.list_(pa.float32())),  # L2-normalised; 128-d (dlib) or 512-d (ArcFace)
        # L2 norm of the backend's raw vector: raw = embedding * embedding_norm
        pa.field("embedding_norm", pa.float32()),
        # quality evidence (stages/faces/quality.py), measured once; verify.quality decides from it
        pa.field("sharpness", pa.float32()),  # variance of the Laplacian of the face region at a fixed size
        pa.field("yaw", pa.float32()),  # degrees, from the landmarks; > 0: turned toward the image's right
        pa.field("pitch", pa.float32()),  # degrees; > 0: chin up
        pa.field("roll", pa.float32()),  # degrees, the eye line; > 0: clockwise in the image
        pa.field("image_share", pa.float32()),  # face box area / image area
        # from hygiene on (docs/multi-identity.md): the identity of the run this face is, null when none is sure
        pa.field("identity", pa.string()),
        pa.field("identity_score", pa.float32()),  # the face's cosine to that identity's centroid
    ]
)

# A face's label score (hygiene's, against the run's centroids): it moves when any photo of the identity changes, so
# a stage reusing rows it judged before compares faces without it (pipeline.engine.runner.reuse).
FACE_LABELS = ("identity_score",)

FACE_EVIDENCE = pa.schema(
    [
        pa.field("faces", pa.list_(FACE)),  # every face whose box reaches filter.min_face_size
        pa.field("num_detected", pa.int32()),  # all detections, too-small ones included
        pa.field("phash", pa.string()),  # 64-bit perceptual hash (hex) of the upright image
        pa.field("face_backend", pa.string()),
        pa.field("face_models", pa.string()),  # JSON: package versions, model files and their sha256
    ]
)

# The face backend's calibration as verify applied it (config values over the backend's own): what hygiene, the
# report, training and the generator read, rather than resolving the config again (float64: the values as set).
CALIBRATION = pa.struct(
    [
        pa.field("threshold", pa.float64()),
        pa.field("cluster_threshold", pa.float64()),
        pa.field("dup_similarity", pa.float64()),
        pa.field("min_face_score", pa.float64()),
        pa.field("copy_paste_max", pa.float64()),  # the backend's; training.copy_paste_max applies at read time
    ]
)

VERIFICATION = pa.schema(
    [
        pa.field("target_face", pa.int32()),  # index into `faces` of the person this identity is about
        pa.field("sim_to_centroid", pa.float32()),  # cosine of the target face to the identity centroid
        pa.field("runner_up_sim", pa.float32()),  # the next face of the same image, null when alone
        pa.field("cluster_size", pa.int32()),  # images in the identity's dominant cluster
        pa.field("identity_purity", pa.float32()),  # dominant cluster's share of the images with faces
        pa.field("identity_competing", pa.bool_()),  # a second large cluster: namesakes or mixed results
        pa.field("identity_kept", pa.int32()),  # images of this identity that verification kept
        pa.field("dup_group", pa.string()),  # near-duplicates (same photo resized/re-encoded) share it
        pa.field("large_faces", pa.int32()),  # faces at least half the target face's side, the target included
        pa.field("calibration", CALIBRATION),  # the thresholds verify applied (stages/faces: Calibration)
        pa.field("decided_by", pa.string()),  # "curator": a curator's decision changed the row (verify, hygiene, caption)
    ]
)

# Decisions across identities (the hygiene stage): one photo under two names, two names for one person, merges.
HYGIENE = pa.schema(
    [
        pa.field("kept_under", pa.string()),  # the identity that keeps this photo instead (claimed, merged away)
        pa.field("merged_from", pa.string()),  # the identity a row joined this one from (hygiene.merge)
        pa.field("possible_same_person", pa.list_(pa.string())),  # identities whose centroid is as close as own photos
        pa.field("same_person_similarity", pa.float32()),  # centroid cosine to the closest of them
        pa.field("identities", pa.list_(pa.string())),  # the identities labelled in the photo, left to right
        pa.field("num_identities", pa.int32()),  # their number (1: only the target's)
    ]
)

# Evidence for the governance rules (minors, sexual content), computed once by safety_scores.
SAFETY_SCORES = pa.schema(
    [
        pa.field("nsfw_score", pa.float32()),  # the NSFW classifier's probability of sexual content, whole image, 0..1
        pa.field("safety_age", pa.float32()),  # years: the gender/age model's estimate for the target face
        pa.field("safety_models", pa.string()),  # JSON: classifier, age model, package versions, model hashes
    ]
)

SAFETY = pa.schema(
    [
        pa.field("identity_median_age", pa.float32()),  # median safety_age of the identity's rows that reached safety
    ]
)

# A face of `faces` mapped into the crop (same order, so `target_face` indexes it too), in crop pixels:
# unclipped, so a neighbour's box may reach outside the crop.
CROP_FACE = pa.struct(
    [
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
    ]
)

CROP = pa.schema(
    [
        pa.field("crop_image", pa.binary()),  # the encoded square crop, crop_size x crop_size
        pa.field("crop_format", pa.string()),  # JPEG | PNG | WEBP
        pa.field("crop_size", pa.int32()),
        pa.field("crop_box", pa.list_(pa.int32(), 4)),  # the square in upright source pixels; past the image = padding
        pa.field("crop_faces", pa.list_(CROP_FACE)),
        pa.field("crop_face_share", pa.float32()),  # target face box area / crop area
        pa.field("crop_padding", pa.float32()),  # share of the crop outside the source image (filled black)
        # indices into `faces` of bystanders blurred in the crop and cleared from the mask (a face takedown or a face
        # opt-out, governance.bystander: blur); null: none
        pa.field("blurred_faces", pa.list_(pa.int32())),
    ]
)

PERSON_MASK = pa.struct([pa.field("identity", pa.string()), pa.field("mask", pa.binary())])

MASK = pa.schema(
    [
        pa.field("mask", pa.binary()),  # PNG, mode "1" (1 bit per pixel), crop_size x crop_size; white = the person
        pa.field("mask_source", pa.string()),  # how it was made: "yolo+sam:vit_h", "grabcut"
        pa.field("mask_area", pa.float32()),  # share of the crop's pixels inside the mask
        pa.field("mask_face_coverage", pa.float32()),  # share of the target face box inside the mask
        pa.field("person_box", pa.list_(pa.float32(), 4)),  # the box that prompted or seeded the mask, crop pixels
        # every labelled person in the crop (faces[i].identity), the target's included: a 1-bit PNG each, as `mask`
        # (a list of structs, not a map: `datasets` reads no Arrow map)
        pa.field("person_masks", pa.list_(PERSON_MASK)),
    ]
)

CAPTION_PERSON = pa.struct(
    [
        pa.field("identity", pa.string()),
        pa.field("face", pa.int32()),  # index into `faces` and `crop_faces`
        pa.field("class_word_span", pa.list_(pa.int32(), 2)),
        pa.field("class_word_tokens", pa.list_(pa.int32())),
    ]
)

CAPTION = pa.schema(
    [
        pa.field("caption", pa.string()),  # the training caption; always holds `class_word` once
        pa.field("caption_raw", pa.string()),  # the captioner's first (beam search) text, before class-word edits
        pa.field("caption_source", pa.string()),  # "blip:<model>" | "smolvlm:<model>" | "template" (no model wrote it)
        pa.field("class_word", pa.string()),  # the identity's class word: man | woman | boy | girl | person
        pa.field("class_word_source", pa.string()),  # caption | resampled | rewritten | template
        pa.field("class_word_span", pa.list_(pa.int32(), 2)),  # [start, end) characters of the class word in caption
        pa.field("class_word_tokens", pa.list_(pa.int32())),  # its indices in SDXL's CLIP input_ids (start token = 0)
        pa.field("caption_many_people", pa.bool_()),  # the caption describes several people
        # the labelled people of the crop (faces[i].identity), left to right, which decides whose "man" is whose:
        # each one's class word span and CLIP tokens as above, null where the caption's people cannot be matched
        pa.field("caption_people", pa.list_(CAPTION_PERSON)),
        pa.field("estimated_gender", pa.string()),  # male | female from the gender/age model; null without one
        pa.field("estimated_gender_confidence", pa.float32()),  # 0..1; null when the model gives none
        pa.field("estimated_age", pa.float32()),  # years
        pa.field("class_word_disagrees", pa.bool_()),  # a confident estimate says the other gender; null: no estimate
        pa.field("caption_models", pa.string()),  # JSON: captioner, estimator, package versions, model hashes
    ]
)
