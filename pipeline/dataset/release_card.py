"""A release's metadata, from its facts: the Hugging Face dataset card (`README.md`: a YAML header that
`datasets.load_dataset` and the Hub read, a "Release" section, a datasheet after Gebru et al.) and
`croissant.json` (Croissant 1.0 JSON-LD with its Responsible-AI fields, which `mlcroissant` validates).

Nothing here reads the run's config as text or its removal requests one by one: those hold local paths,
requesters' names and typed reasons. The card says only counts, backend names and thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import yaml

from pipeline.dataset.release_rows import ReleaseOptions

TITLE = "ID-centric portrait dataset"
CROISSANT = "croissant.json"
CARD = "README.md"
DELETIONS = "deletions.txt"
LAST_RELEASE = "governance/last_release.json"  # in the run directory: what the report says of the last release
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
DATA_FILES = {"parquet": "shards/train-*.parquet", "webdataset": "webdataset/*.tar"}
ENCODINGS = {"parquet": "application/x-parquet", "webdataset": "application/x-tar"}
INTENDED = ("training and evaluating identity-conditioned image generators (PhotoMaker-style ID encoders), "
            "with photos of one person as references for another photo of the same person")
PROHIBITED = ("face recognition, identification or search of any person; building or expanding a facial "
              "recognition database (EU AI Act Art. 5(1)(e)); re-identifying the pseudonymous keys; profiling, "
              "surveillance, or inferring sensitive attributes (health, ethnicity, beliefs, orientation)")
NOT_CHECKED = (
    "a source URL or page may itself name the person (URLs are kept for http(s) sources);",
    "a caption written by a vision-language captioner may name the person (template and BLIP captions do not);",
    "the faces in the photos identify the people to anyone who knows them: pseudonymous keys hide names, not faces;",
    "image_id is the sha256 of the downloaded file: whoever holds that file can find its row;",
    "licences are what each source declared; nobody checked them against the photographer's rights.",
)


@dataclass
class ReleaseFacts:
    fmt: str  # parquet | webdataset
    options: ReleaseOptions
    identities: int
    images: int
    withheld: int  # rows the removals ledger kept out of this release
    funnel: str  # the run's rows per stage, as plain text
    checks: list[dict]  # governance checks: name, reasons, rows dropped
    requests: dict[str, int]  # removal requests by kind
    face_rows: int = 0  # rows a face takedown removed (the requester the target)
    faces_blurred: int = 0  # bystander faces a face takedown blurred
    models: dict[str, str] = field(default_factory=dict)  # role -> backend name
    thresholds: dict[str, object] = field(default_factory=dict)  # setting -> value as applied
    contact: str = "the publisher of this release"
    deletions: int | None = None  # keys in deletions.txt (release --since); None: no previous release given
    published: str = ""  # the release's date, ISO 8601


def facts_record(facts: ReleaseFacts, dest: str) -> dict:
    """The facts as the run keeps them (with the release's destination, which stays in the private run)."""
    return {**asdict(facts), "dest": dest}


def facts_from_record(record: dict) -> ReleaseFacts:
    fields = {key: value for key, value in record.items() if key in ReleaseFacts.__dataclass_fields__}
    return ReleaseFacts(**{**fields, "options": ReleaseOptions(**fields["options"])})


def size_category(images: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if images < limit), "n>1T")


def dataset_card(facts: ReleaseFacts) -> str:
    header = {
        "pretty_name": TITLE,
        "license": "other",
        "license_name": "per-image",  # each row's `license` column: what its source declared
        "task_categories": ["text-to-image"],
        "tags": ["faces", "identity", "portrait", "pseudonymised"],
        "size_categories": [size_category(facts.images)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES[facts.fmt]}]}],
    }
    lines = [f"# {TITLE}", "",
             f"{facts.identities:,} identities, {facts.images:,} images ({facts.fmt}). Made by an ID-centric "
             "dataset pipeline: photos crawled per person, filtered, verified to show that person, cropped, "
             "segmented and captioned with the class word marked.", "",
             *release_section(facts), "", *datasheet(facts)]
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n" + "\n".join(lines) + "\n"


def release_section(facts: ReleaseFacts) -> list[str]:
    """What this release holds and leaves out: the card's, and the report's, "Release" section."""
    options = facts.options
    names = ("**kept**: the `name` column holds each person's name (`--keep-names`, for public figures)"
             if options.keep_names else "**not kept**: `identity` is a keyed hash (HMAC-SHA256) of the person; "
             "the key stays with the dataset's makers, so nobody can compute it from a name")
    embeddings = ("**kept** (`--with-embeddings`): with them this release is a face index, searchable by face"
                  if options.with_embeddings else "**not kept**: no face-recognition embedding is released")
    return [
        "## Release", "",
        "- Contains: per image, the person-centred crop, the person's mask, the caption with its class word, "
        "the face boxes, landmarks and quality measures, the verification scores, and the source's licence; "
        "the source URL and page for http(s) sources only.",
        "- Leaves out: the downloaded files, local paths and addresses of local files, the crawl's consent evidence, "
        "model file hashes, other identities' names, and every image's metadata (EXIF with GPS, XMP, IPTC, maker "
        "notes; only the ICC colour profile stays).",
        f"- Names: {names}.",
        f"- Face embeddings: {embeddings}.",
        f"- Takedowns honoured: {facts.withheld:,} rows withheld by the removals ledger "
        f"({_kinds(facts.requests) or 'no requests'}); {facts.face_rows:,} rows removed by face takedowns "
        "(the requester the target).",
        f"- Bystanders blurred: {facts.faces_blurred:,} faces of people who asked to be removed, in other people's "
        "photos (listed per row in `blurred_faces`).",
        *([f"- Deletions: `{DELETIONS}` lists {facts.deletions:,} keys (`identity/image_id`) that a holder of the "
           "previous release must delete."] if facts.deletions is not None else []),
        f"- Removal requests: {facts.contact}.",
    ]


def datasheet(facts: ReleaseFacts) -> list[str]:
    checks = [f"| {check['name']} | {', '.join(check['reasons'])} | {check['dropped']:,} |" for check in facts.checks]
    return [
        "## Datasheet", "",
        "After Gebru et al., *Datasheets for Datasets* (2021).", "",
        "### Motivation", "", f"For {INTENDED}.", "",
        "### Composition", "",
        f"{facts.images:,} images of {facts.identities:,} people, each row one verified photo of its identity. "
        "People are public figures or those whose photos the makers were given; the photos show faces, which "
        "are personal (biometric) data.", "",
        "### Collection process", "",
        "Rows per stage (kept, dropped by reason) in the run this release was made from:", "",
        "```", facts.funnel.rstrip(), "```", "",
        "| governance check | reason codes | rows dropped |", "|---|---|---:|", *checks, "",
        "### Preprocessing and labelling", "",
        *[f"- {role}: `{name}`" for role, name in facts.models.items()],
        *[f"- {key}: `{value}`" for key, value in facts.thresholds.items()], "",
        "### Uses", "", f"- Intended: {INTENDED}.", f"- Prohibited: {PROHIBITED}.", "",
        "### Not checked", "", *[f"- {line}" for line in NOT_CHECKED], "",
        "### Distribution and maintenance", "",
        f"Removal requests: {facts.contact}. A takedown is applied to the makers' run, and the next release "
        f"lists what to delete in `{DELETIONS}`.",
    ]


def _kinds(requests: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count:,}" for kind, count in requests.items())


CONTEXT = {  # Croissant 1.0's JSON-LD context, as its specification gives it
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "samplingRate": "cr:samplingRate",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract",
    "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath",
    "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform",
}
FIELDS = {"identity": "sc:Text", "image_id": "sc:Text", "caption": "sc:Text", "class_word": "sc:Text",
          "crop_image": "sc:ImageObject", "mask": "sc:ImageObject", "license": "sc:Text", "url": "sc:URL"}


def croissant(facts: ReleaseFacts) -> dict:
    """Croissant 1.0 metadata: the data files, the images record set (Parquet), and the Responsible-AI fields."""
    files = {"@type": "cr:FileSet", "@id": f"{facts.fmt}-files", "name": f"{facts.fmt}-files",
             "encodingFormat": ENCODINGS[facts.fmt], "includes": DATA_FILES[facts.fmt]}
    fields = {**FIELDS, **({"name": "sc:Text"} if facts.options.keep_names else {})}
    record = {"@type": "cr:RecordSet", "@id": "images", "name": "images", "key": {"@id": "images/image_id"},
              "field": [{"@type": "cr:Field", "@id": f"images/{column}", "name": column, "dataType": kind,
                         "source": {"fileSet": {"@id": files["@id"]}, "extract": {"column": column}}}
                        for column, kind in fields.items()]}
    return {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": TITLE, "description": f"{facts.identities:,} identities, {facts.images:,} images.",
        "license": "Per image: each row's license column, as its source declared it.",
        "version": "1.0.0", "datePublished": facts.published,
        "citeAs": f"{TITLE} (release of {facts.published})",
        "distribution": [files], "recordSet": [record] if facts.fmt == "parquet" else [],
        "rai:dataCollection": "Photos found per name (a search engine, a URL list or the makers' folders), "
                              "downloaded under the sources' robots.txt, consent signals and opt-out lists.",
        "rai:dataCollectionType": ["Web Scraping"],
        "rai:dataPreprocessingProtocol": ["face detection and verification against each identity's dominant face",
                                          "person-centred crops, person masks, captions with the class word"],
        "rai:personalSensitiveInformation": [
            "Faces of identifiable people (biometric data).",
            "Names: " + ("kept (public figures, by the makers' choice)." if facts.options.keep_names
                         else "replaced by keyed hashes (HMAC-SHA256); the key is not released."),
            "Face-recognition embeddings: "
            + ("included: this release is a face index." if facts.options.with_embeddings else "not included.")],
        "rai:dataUseCases": [f"Intended: {INTENDED}.", f"Prohibited: {PROHIBITED}."],
        "rai:dataLimitations": [line.rstrip(";.") for line in NOT_CHECKED],
        "rai:dataReleaseMaintenancePlan": f"Removal requests: {facts.contact}. Takedowns apply to the next release, "
                                          f"whose {DELETIONS} lists the keys holders of this one must delete.",
    }
