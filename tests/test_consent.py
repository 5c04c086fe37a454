"""Consent at fetch time: robots.txt, TDMRep, X-Robots-Tag, embedded metadata (XMP, C2PA), opt-out
lists and licences, against the loopback server only. Each refusal ends as a row with its own
reason, and what the protocol lets us check first is never requested (the server counts requests)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import c2pa
import imagehash
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image, PngImagePlugin

from pipeline.core.config import ConsentSettings, CrawlSection, PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, identity_slug
from pipeline.core.optout import OptOutList
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, FAILED, OK
from pipeline.core.markers import Marker, part_path
from pipeline.dataset.shards import plan_shards, write_shard
from stages.crawl import CrawlStage
from stages.imaging import decode_upright
from stages.sources.consent import (
    RobotsTxt,
    SiteFile,
    TdmRules,
    license_allowed,
    product_token,
    x_robots_directives,
)
from stages.sources.embedded import IPTC_EXT, PLUS, RDF, XMP_MAX_BYTES, embedded_refusal, read_embedded
from stages.sources.http import Downloader
from tests.conftest import FACES
from benchmarks.fixtures.http_server import LocalServer, serving

FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "deadline": 2.0, "retries": 1, "backoff": 0.05}
TOKEN = "id-dataset-pipeline"  # from the default user agent
XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    f'<rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" xmlns:plus="{PLUS}" xmlns:Iptc4xmpExt="{IPTC_EXT}"'
    ' {attributes}>{elements}</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
PROHIBITED = '<plus:DataMining rdf:resource="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING"/>'
GENERATED = "<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia" \
            "</Iptc4xmpExt:DigitalSourceType>"  # fmt: skip


def settings(**values: object) -> CrawlSection:
    return CrawlSection.model_validate({"allowed_networks": ["127.0.0.1/32"], "download": FAST, **values})


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


def photo(name: str) -> bytes:
    return (FACES / "images" / name).read_bytes()


def jpeg(name: str, xmp: str | None = None, scale: float = 1.0, quality: int = 90) -> bytes:
    """A real photo re-encoded (optionally resized), with an XMP packet written into its APP1 segment."""
    image = Image.open(FACES / "images" / name)
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, **({"xmp": xmp.encode()} if xmp else {}))
    return out.getvalue()


def xmp(attributes: str = "", elements: str = "") -> str:
    return XMP.format(attributes=attributes, elements=elements)


def serve(server: LocalServer, path: str, body: bytes, status: int = 200, content_type: str = "image/jpeg") -> str:
    server.files[path] = (status, body, {"Content-Type": content_type})
    return server.url(path)


# -- robots.txt ----------------------------------------------------------------------------------------
def test_product_token_comes_from_the_user_agent() -> None:
    assert product_token(CrawlSection().download.user_agent) == TOKEN
    assert product_token("Mozilla/5.0 (compatible)") == "mozilla"
    assert product_token("/no-name") == "*"


ROBOTS = b"User-agent: *\nDisallow: /\n\nUser-agent: id-dataset-pipeline\nDisallow: /private/\n"


def test_robots_txt_disallows_before_any_request(server: LocalServer) -> None:
    """Our own group applies (not `*`, which disallows everything); robots.txt is fetched once per origin."""
    serve(server, "/robots.txt", ROBOTS, content_type="text/plain")
    downloader = Downloader(settings())
    urls = [(server.url(path), None, None) for path in ("/img/img1.jpg", "/private/img2.jpg", "/img/img3.jpg")]
    fetched = list(downloader.fetch_all(urls))
    assert [(item.status, item.reason) for item in fetched] == [(OK, None), (DROPPED, "robots_disallowed"), (OK, None)]
    assert fetched[0].consent["robots_txt"] == "pass" and fetched[1].consent["robots_txt"] == "refused"
    hits = server.hits()
    assert hits["/robots.txt"] == 1 and hits["/private/img2.jpg"] == 0


def test_a_missing_robots_txt_allows(server: LocalServer) -> None:
    fetched = Downloader(settings()).fetch_image(server.url("/img/img1.jpg"))
    assert fetched.status == OK and fetched.consent["robots_txt"] == "absent"
    assert server.hits()["/robots.txt"] == 1  # answered 404


def test_an_unreachable_robots_txt_disallows_everything(server: LocalServer) -> None:
    """RFC 9309 2.3.1.4: a 5xx robots.txt means complete disallow; the row fails (transient) and is never fetched."""
    serve(server, "/robots.txt", b"down", status=503, content_type="text/plain")
    downloader = Downloader(settings())
    fetched = list(
        downloader.fetch_all([(server.url("/img/img1.jpg"), None, None), (server.url("/img/img2.jpg"), None, None)])
    )
    assert {(item.status, item.reason) for item in fetched} == {(FAILED, "robots_unreachable")}
    assert fetched[0].consent["robots_txt"] == "unreachable"
    hits = server.hits()
    assert hits["/robots.txt"] == 2  # one retry (FAST), then the verdict is kept for the origin
    assert hits["/img/img1.jpg"] == hits["/img/img2.jpg"] == 0


@pytest.mark.parametrize(
    ("error", "outcome"),
    [("http_404", "absent"), ("http_401", "absent"), ("too_many_redirects", "absent"), ("http_503", "unreachable"),
     ("http_429", "unreachable"), ("timeout", "unreachable")],
)  # fmt: skip
def test_robots_txt_failures_follow_rfc_9309(error: str, outcome: str) -> None:
    assert RobotsTxt.from_file(SiteFile("http://h.invalid/robots.txt", error=error)).outcome == outcome


@pytest.mark.parametrize(("body", "outcome"), [
    (b"User-agent: *\rDisallow: /img/\rDisallow: /priv", "pass"),  # CR-only lines: the cut one goes
    (b"Disallow: /" + b"a" * 100, "unreachable"),  # not one whole line within the cap: nothing is allowed
])  # fmt: skip
def test_a_robots_txt_cut_at_the_cap_keeps_its_whole_lines_only(body: bytes, outcome: str) -> None:
    robots = RobotsTxt.from_file(SiteFile("http://h.invalid/robots.txt", body, truncated=True))
    assert robots.outcome == outcome
    if outcome == "pass":
        assert not robots.rules.can_fetch("http://h.invalid/img/a.jpg", "bot")


def test_robots_txt_can_be_switched_off(server: LocalServer) -> None:
    serve(server, "/robots.txt", b"User-agent: *\nDisallow: /\n", content_type="text/plain")
    fetched = Downloader(settings(consent={"robots_txt": False})).fetch_image(server.url("/img/img1.jpg"))
    assert fetched.status == OK and fetched.consent["robots_txt"] == "off"
    assert server.hits()["/robots.txt"] == 0


# -- TDMRep ----------------------------------------------------------------------------------------------
TDMREP = [
    {"location": "/", "tdm-reservation": 0},
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://rights.invalid/policy.json"},
    {"location": "/reserved/free.jpg$", "tdm-reservation": 0},
]


@pytest.mark.parametrize(
    ("path", "reserved"),
    [("/img/a.jpg", False), ("/reserved/a.jpg", True), ("/reserved/free.jpg", False),  # the longer rule wins
     ("/reserved/free.jpg?size=2", True),  # `$` anchors the end
     ("/%72eserved/a.jpg", True)],  # an escaped unreserved character matches its plain form
)  # fmt: skip
def test_tdmrep_locations(path: str, reserved: bool) -> None:
    rules = TdmRules.from_file(SiteFile("http://h.invalid/.well-known/tdmrep.json", json.dumps(TDMREP).encode()))
    evidence: dict[str, str] = {}
    assert (rules.refusal(f"http://h.invalid{path}", evidence) is not None) == reserved
    assert evidence["tdmrep_json"] == ("refused" if reserved else "pass")


@pytest.mark.parametrize(
    ("location", "path", "covered"),
    [("/a*b$", "/axxb", True), ("/a*b$", "/axxbc", False), ("/a*b*c", "/abbc", True), ("/a*b*c", "/acb", False),
     ("*.jpg$", "/x/y.jpg", True), ("/x$", "/x", True), ("/x$", "/xy", False), ("/a**b", "/ab", True),
     ("/" + "*a" * 10 + "*b", "/" + "a" * 30, False),  # a regex backtracks seconds here, minutes with 52 `a`s
     ("/" + "*a" * 14 + "*b", "/" + "a" * 52 + "b", True)],
)  # fmt: skip
def test_tdmrep_wildcards_match_in_linear_time(location: str, path: str, covered: bool) -> None:
    body = json.dumps([{"location": location, "tdm-reservation": 1}]).encode()
    rules = TdmRules.from_file(SiteFile("http://h.invalid/.well-known/tdmrep.json", body))
    started = time.monotonic()
    assert (rules.refusal(f"http://h.invalid{path}", {}) is not None) == covered
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize(
    "body", [b"{not json", b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"0" + b"}" * 100_000]
)
def test_a_broken_tdmrep_json_is_no_signal(body: bytes) -> None:
    """Nested too deep for the parser (RecursionError) is broken too: unreadable, never an exception."""
    rules = TdmRules.from_file(SiteFile("http://h.invalid/.well-known/tdmrep.json", body))
    evidence: dict[str, str] = {}
    assert rules.refusal("http://h.invalid/x.jpg", evidence) is None and evidence["tdmrep_json"] == "unreadable"


def test_tdmrep_json_reserves_before_any_request(server: LocalServer) -> None:
    serve(server, "/.well-known/tdmrep.json", json.dumps(TDMREP).encode(), content_type="application/json")
    downloader = Downloader(settings())
    fetched = list(
        downloader.fetch_all(
            [(server.url("/reserved/img1.jpg"), None, None), (server.url("/img/img2.jpg"), None, None)]
        )
    )
    assert [(item.status, item.reason) for item in fetched] == [(DROPPED, "tdm_reserved"), (OK, None)]
    assert "policy.json" in (fetched[0].detail or "")
    hits = server.hits()
    assert hits["/.well-known/tdmrep.json"] == 1 and hits["/reserved/img1.jpg"] == 0


@pytest.mark.parametrize(
    ("query", "reason"),
    [("tdm-reservation=1", "tdm_reserved"), ("X-Robots-Tag=noai", "robots_noai")],
)
def test_header_refusals_never_read_the_body(server: LocalServer, query: str, reason: str) -> None:
    """The body never ends: reading it would end in too_large; refusing on the headers ends first."""
    fetched = Downloader(settings()).fetch_image(server.url(f"/headers-endless?{query}"))
    assert (fetched.status, fetched.reason) == (DROPPED, reason)


@pytest.mark.parametrize(
    ("query", "reason"),
    [("tdm-reservation=1&tdm-reservation=1", "tdm_reserved"), ("tdm-reservation=0&tdm-reservation=1", "tdm_reserved"),
     ("tdm-reservation=0,+1", "tdm_reserved"), ("tdm-reservation=0&tdm-reservation=0", None),
     ("X-Robots-Tag=noindex&X-Robots-Tag=noai", "robots_noai")],
)  # fmt: skip
def test_repeated_headers_refuse_if_any_value_does(server: LocalServer, query: str, reason: str | None) -> None:
    """Each header line on its own (`0` then `1` must not read as the one value "0, 1")."""
    fetched = Downloader(settings()).fetch_image(server.url(f"/repeat-headers/1/img1.jpg?{query}"))
    assert fetched.reason == reason


# -- X-Robots-Tag ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "binding"),
    [(["noai"], {"noai"}), (["otherbot: noai"], set()), ([f"{TOKEN}: noai, noml"], {"noai", "noml"}),
     (["otherbot: noindex, noimageai", "noml"], {"noml"}),
     (["googlebot: noai", f"{TOKEN.upper()}: noimageai"], {"noimageai"}),
     (["unavailable_after: Friday, 25-Jun-10 15:00:00 GMT, noai"], {"noai"}), (["none"], {"noindex", "nofollow"})],
)  # fmt: skip
def test_x_robots_tag_scopes(values: list[str], binding: set[str]) -> None:
    assert x_robots_directives(values, TOKEN) & {"noai", "noimageai", "noml", "noindex", "nofollow"} == binding


@pytest.mark.parametrize(
    ("header", "directives", "reason"),
    [("otherbot: noai", None, None), (f"{TOKEN}: noai", None, "robots_noai"), ("noml", None, "robots_noai"),
     ("noindex", None, None), ("noindex", ["noindex"], "robots_noai"), ("noai", [], None)],
)  # fmt: skip
def test_x_robots_tag_refusals(
    server: LocalServer, header: str, directives: list[str] | None, reason: str | None
) -> None:
    consent = {} if directives is None else {"x_robots_tag": directives}
    fetched = Downloader(settings(consent=consent)).fetch_image(server.url(f"/headers/img2.jpg?X-Robots-Tag={header}"))
    assert fetched.reason == reason


# -- licences and the opt-out list -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("license_", "allowed"),
    [("CC-BY-4.0", True), ("cc-by-4.0", True), ("CC-BY-NC-4.0", False), ("CC0-1.0", True), (None, False), ("", False)],
)
def test_licence_patterns(license_: str | None, allowed: bool) -> None:
    assert license_allowed(license_, ["CC-BY-4.0", "CC0-*"]) == allowed


def optout_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "optout.txt"
    path.write_text("# opt-out requests\n\n" + "\n".join(lines) + "\n")
    return path


def test_optout_format(tmp_path: Path) -> None:
    entries = ["name:  Jane   DOE", "domain:Photos.Example.ORG", "url:https://photos.invalid/jane/", "sha256:" + "ab" * 32,
               "phash:" + "f" * 16]  # fmt: skip
    listed = OptOutList.read([optout_file(tmp_path, *entries)], phash_bits=4)
    assert listed.name_listed("jane doe") and not listed.name_listed("Jane Doer")
    assert listed.url_listed("http://cdn.photos.example.org/x.jpg") and listed.url_listed(None, "https://photos.example.org/p")
    assert not listed.url_listed("https://notphotos.example.org/x.jpg")
    assert listed.url_listed("HTTP://PHOTOS.invalid/jane/1.jpg")  # http and https alike, host case ignored
    assert not listed.url_listed("https://photos.invalid/janet.jpg")
    assert listed.image_listed("ab" * 32, None) == "sha256"
    assert listed.image_listed(None, "fffffffffffffff0") == "phash within 4 bits"
    assert listed.image_listed(None, "ffffffffffffff00") is None  # 8 bits off


@pytest.mark.parametrize("line", ["jane doe", "domain:", "sha256:abc", "phash:xyz", "url:ftp://x/", "email:a@b"])
def test_a_malformed_optout_line_stops_the_run(tmp_path: Path, line: str) -> None:
    with pytest.raises(UserError, match="line 3 is not a valid entry"):
        OptOutList.read([optout_file(tmp_path, line)], phash_bits=8)


def test_a_missing_optout_file_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read opt-out file"):
        OptOutList.read([tmp_path / "missing.txt"], phash_bits=8)


def test_licences_and_optout_urls_are_refused_before_any_request(server: LocalServer, tmp_path: Path) -> None:
    optout = OptOutList.read([optout_file(tmp_path, f"url:{server.url('/img/img5')}", "domain:blocked.invalid")], 8)
    downloader = Downloader(settings(allowed_licenses=["CC-BY-4.0", "CC0-*"]), optout)
    items = [
        (server.url("/img/img1.jpg"), None, "CC-BY-NC-4.0"),
        (server.url("/img/img2.jpg"), None, None),
        (server.url("/img/img5.jpg"), None, "CC0-1.0"),
        (server.url("/img/img3.jpg"), "https://www.blocked.invalid/page", "CC-BY-4.0"),
        (server.url("/img/img4.jpg"), "https://ok.invalid/page", "cc-by-4.0"),
    ]
    fetched = list(downloader.fetch_all(items))
    assert [item.reason for item in fetched] == [
        "license_not_allowed", "license_not_allowed", "opted_out_url", "opted_out_url", None]  # fmt: skip
    assert fetched[0].consent == {"license": "refused"} and fetched[2].consent["optout_url"] == "refused"
    assert set(server.hits()) == {"/robots.txt", "/.well-known/tdmrep.json", "/img/img4.jpg"}


# -- embedded metadata ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("packet", "reason", "evidence"),
    [
        (xmp(elements=PROHIBITED), "metadata_prohibits_training", {"xmp": "read", "training_metadata": "refused"}),
        (xmp('plus:DataMining="http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-GENAIMLTRAINING"'),
         "metadata_prohibits_training", {"training_metadata": "refused"}),
        (xmp(elements="<plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-ALLOWED</plus:DataMining>"), None,
         {"training_metadata": "pass", "ai_generated": "absent"}),
        (xmp(elements=GENERATED), "ai_generated", {"ai_generated": "refused"}),
        (xmp('Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
             'compositeWithTrainedAlgorithmicMedia"'), "ai_generated", {"ai_generated": "refused"}),
        (xmp('Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"'), None,
         {"ai_generated": "pass"}),
        (None, None, {"xmp": "absent", "c2pa": "absent", "training_metadata": "absent", "ai_generated": "absent"}),
        # hostile or broken packets: no signal, recorded, never an exception
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>', None,
         {"xmp": "unreadable", "training_metadata": "absent"}),
        ("<x:xmpmeta><unclosed", None, {"xmp": "unreadable"}),
    ],
)  # fmt: skip
def test_embedded_xmp(packet: str | None, reason: str | None, evidence: dict[str, str]) -> None:
    found: dict[str, str] = {}
    refusal = embedded_refusal(jpeg("img2.jpg", packet), "JPEG", ConsentSettings(), found)
    assert (refusal[0] if refusal else None) == reason
    assert found.items() >= evidence.items(), found


def test_xmp_in_png_is_read_too() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp(elements=PROHIBITED))
    out = io.BytesIO()
    Image.open(FACES / "images" / "img2.jpg").save(out, "PNG", pnginfo=info)
    assert read_embedded(out.getvalue(), "PNG").prohibitions == ("plus:DataMining=DMI-PROHIBITED-AIMLTRAINING",)


def test_a_huge_xmp_packet_is_not_parsed() -> None:
    """Past XMP_MAX_BYTES the packet is unreadable unparsed (megabytes cost seconds and ~40x in memory)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp(elements=PROHIBITED + "<x/>" * (XMP_MAX_BYTES // 4)))
    out = io.BytesIO()
    Image.open(FACES / "images" / "img2.jpg").save(out, "PNG", pnginfo=info)
    found = read_embedded(out.getvalue(), "PNG")
    assert (found.xmp, found.prohibitions) == ("unreadable", ()) and "more than" in found.detail


def test_embedded_checks_can_be_switched_off() -> None:
    consent = ConsentSettings(embedded_metadata=False, ai_source_types=[])
    found: dict[str, str] = {}
    assert embedded_refusal(jpeg("img2.jpg", xmp(elements=PROHIBITED + GENERATED)), "JPEG", consent, found) is None
    assert found == {"training_metadata": "off", "ai_generated": "off"}


def subject_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests")])  # fmt: skip


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    """A CA, or an end-entity certificate with what C2PA asks of a signer (digitalSignature, an EKU, key ids)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)
    builder = (x509.CertificateBuilder().subject_name(subject_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(usage, critical=True))  # fmt: skip
    if not ca:
        for extension in (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                          x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                          x509.SubjectKeyIdentifier.from_public_key(key.public_key())):  # fmt: skip
            builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def c2pa_signer() -> c2pa.Signer:
    """A test CA and signing certificate, made here: nothing is fetched, no trust list is involved."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, subject_name("test CA"), ca_key, ca=True)
    leaf = certificate("test signer", key, ca.subject, ca_key, ca=False)
    chain = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in (leaf, ca))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, private, None))


def created(source_type: str) -> dict:
    """The actions assertion a C2PA 2 claim starts with (the signer checks that it does)."""
    kind = f"http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}"
    return {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": kind}]}}


def c2pa_jpeg(signer: c2pa.Signer, assertions: list[dict], remote_url: str | None = None) -> bytes:
    if not any(assertion["label"] == "c2pa.actions" for assertion in assertions):
        assertions = [created("digitalCapture"), *assertions]
    manifest = {"claim_generator_info": [{"name": "tests", "version": "1"}], "title": "photo.jpg",
                "format": "image/jpeg", "assertions": assertions}  # fmt: skip
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        builder.sign(signer, "image/jpeg", io.BytesIO(jpeg("img2.jpg")), out)
    return out.getvalue()


def training(**uses: str) -> dict:
    entries = {f"cawg.{name}": {"use": use} for name, use in uses.items()}
    return {"label": "cawg.training-mining", "data": {"entries": entries}}


@pytest.mark.parametrize(
    ("assertions", "reason"),
    [([training(ai_generative_training="notAllowed", ai_inference="allowed")], "metadata_prohibits_training"),
     ([training(ai_training="constrained")], "metadata_prohibits_training"),
     ([training(ai_inference="notAllowed", ai_training="allowed")], None),  # inference is not what we do
     ([created("trainedAlgorithmicMedia")], "ai_generated")],
)  # fmt: skip
def test_c2pa_assertions(c2pa_signer: c2pa.Signer, assertions: list[dict], reason: str | None) -> None:
    found: dict[str, str] = {}
    refusal = embedded_refusal(c2pa_jpeg(c2pa_signer, assertions), "JPEG", ConsentSettings(), found)
    assert (refusal[0] if refusal else None) == reason and found["c2pa"] == "read"


def test_a_remote_c2pa_manifest_is_never_fetched(c2pa_signer: c2pa.Signer, server: LocalServer) -> None:
    data = c2pa_jpeg(c2pa_signer, [training(ai_training="notAllowed")], remote_url=server.url("/manifest.c2pa"))
    assert read_embedded(data, "JPEG").c2pa == "remote"
    assert server.requests == []


# -- the crawl stage end to end (no Ray): every case ends with its reason ---------------------------------------
def test_crawl_consent_end_to_end(server: LocalServer, tmp_path: Path) -> None:
    serve(server, "/robots.txt", ROBOTS, content_type="text/plain")
    serve(server, "/.well-known/tdmrep.json", json.dumps(TDMREP).encode(), content_type="application/json")
    original = photo("img7.jpg")
    listed_phash = imagehash.phash(decode_upright(original, 10**8, at_least=256))
    rows = [  # (path or URL, licence, expected reason)
        ("/img/img1.jpg", "CC-BY-4.0", "ok"),
        ("/private/img2.jpg", "CC-BY-4.0", "robots_disallowed"),
        ("/reserved/img3.jpg", "CC-BY-4.0", "tdm_reserved"),
        ("/headers/img4.jpg?tdm-reservation=1", "CC-BY-4.0", "tdm_reserved"),
        ("/headers/img5.jpg?X-Robots-Tag=otherbot:+noai", "CC-BY-4.0", "ok"),
        (f"/headers/img6.jpg?X-Robots-Tag={TOKEN}:+noai", "CC-BY-4.0", "robots_noai"),
        (
            serve(server, "/files/prohibited.jpg", jpeg("img8.jpg", xmp(elements=PROHIBITED))),
            "CC-BY-4.0",
            "metadata_prohibits_training",
        ),
        (serve(server, "/files/generated.jpg", jpeg("img9.jpg", xmp(elements=GENERATED))), "CC-BY-4.0", "ai_generated"),
        (
            serve(server, "/files/reencoded.jpg", jpeg("img7.jpg", scale=0.6, quality=55)),
            "CC-BY-4.0",
            "opted_out_image",
        ),
        ("/img/img10.jpg", "CC-BY-4.0", "opted_out_image"),  # by sha256
        ("/secret/img11.jpg", "CC-BY-4.0", "opted_out_url"),
        ("/img/img12.jpg", "CC-BY-NC-4.0", "license_not_allowed"),
    ]
    urls = [path if path.startswith("http") else server.url(path) for path, _, _ in rows]
    lines = [f"Angelina Jolie\t{url}\thttps://page.invalid/\t{license_}" for url, (_, license_, _) in zip(urls, rows)]
    lines.append(f"Matt Damon\t{server.url('/img/img33.jpg')}\thttps://page.invalid/\tCC-BY-4.0")
    (tmp_path / "urls.tsv").write_text("\n".join(lines) + "\n")
    optout = optout_file(tmp_path, "name:matt damon", f"url:{server.url('/secret/')}", f"phash:{listed_phash}",
                         "sha256:" + hashlib.sha256(photo("img10.jpg")).hexdigest())  # fmt: skip
    config = PipelineConfig.model_validate({
        "crawl": {"source": "urls", "urls_file": str(tmp_path / "urls.tsv"), "allowed_networks": ["127.0.0.1/32"],
                  "download": FAST, "allowed_licenses": ["CC-BY-4.0"]},
        "governance": {"optout": [str(optout)]},
    })  # fmt: skip
    stage = CrawlStage(config, RunDir(str(tmp_path / "run")))
    stage.setup()
    names = ["Angelina Jolie", "Matt Damon"]
    out = stage.process(pa.table({"identity": [identity_slug(n) for n in names], "name": names})).to_pylist()

    got = {row["url"]: row["reason"] or row["status"] for row in out if row["name"] == "Angelina Jolie"}
    assert got == {url: reason for url, (_, _, reason) in zip(urls, rows)}
    damon = [row for row in out if row["name"] == "Matt Damon"]
    assert [(row["status"], row["reason"], row["url"]) for row in damon] == [(DROPPED, "opted_out_identity", None)]
    hits = server.hits()
    never = ["/private/img2.jpg", "/reserved/img3.jpg", "/secret/img11.jpg", "/img/img12.jpg", "/img/img33.jpg"]
    assert {path: hits[path] for path in never} == dict.fromkeys(never, 0)
    assert hits["/robots.txt"] == hits["/.well-known/tdmrep.json"] == 1
    assert all(count == 1 for count in hits.values()), hits

    by_reason = {row["reason"] or row["status"]: row for row in out}
    evidence = json.loads(next(row for row in out if row["url"] == urls[0])["consent"])
    assert evidence == {"license": "pass", "optout_url": "pass", "optout_name": "pass", "robots_txt": "pass",
                        "tdmrep_json": "pass", "x_robots_tag": "absent", "tdm_header": "absent",
                        "content_usage_robots": "absent", "content_usage_header": "absent",
                        "xmp": "read", "training_metadata": "absent",  # the photo's XMP holds no rights terms
                        "c2pa": "absent", "ai_generated": "absent", "optout_image": "pass"}  # fmt: skip
    assert json.loads(by_reason["robots_disallowed"]["consent"])["robots_txt"] == "refused"
    assert json.loads(by_reason["opted_out_identity"]["consent"]) == {"optout_name": "refused"}
    stored = {row["url"] for row in out if row["raw_path"]}
    assert stored == {url for url, (_, _, reason) in zip(urls, rows) if reason == "ok"}  # refused bytes never stored


# -- the shard step applies the list again ---------------------------------------------------------------
PHASHES = ["0000000000000000", "00000000ffffffff", "ffffffff00000000"]


def test_shards_leave_out_what_the_list_covers_now(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path / "run"))
    people = {"jane": "Jane Doe", "john": "John Roe"}
    for slug, name in people.items():
        rows = [{"identity": slug, "name": name, "image_id": f"{slug}{i}".ljust(64, "0"), "status": OK,
                 "reason": None, "detail": None, "url": f"https://{'cdn' if i else 'blocked'}.invalid/{slug}/{i}.jpg",
                 "page_url": None, "source": "urls", "license": "CC0-1.0", "phash": phash}
                for i, phash in enumerate(PHASHES)]  # fmt: skip
        run.write_table(part_path("caption", slug), pa.Table.from_pylist(rows))
    optout_path = optout_file(tmp_path, "name:John Roe", "domain:blocked.invalid", "phash:ffffffff00000001")
    optout = OptOutList.read([optout_path], phash_bits=1)  # 1 bit from jane's third photo
    result = write_shard(run, "caption", "shards/train-00000-of-00001.parquet", list(people), 64, optout)
    table = pq.read_table(tmp_path / "run" / "shards" / "train-00000-of-00001.parquet")
    assert table["url"].to_pylist() == ["https://cdn.invalid/jane/1.jpg"]
    assert result["opted_out"] == {"opted_out_identity": 3, "opted_out_url": 1, "opted_out_image": 1}
    assert [row["identity"] for row in result["index"]] == ["jane"]  # john is not in the index at all


def test_a_changed_optout_list_changes_the_shard_plan(tmp_path: Path) -> None:
    path = optout_file(tmp_path, "name:Someone Else")
    config = PipelineConfig.model_validate({"governance": {"optout": [str(path)]}})
    people = [Identity("a", "A")]
    markers = {"a": Marker("verify", "a", "h", "i", "d-a", 2, 2, {"ok": 2}, {})}
    before = plan_shards(config, people, markers).fingerprint
    assert plan_shards(config, people, markers).fingerprint == before
    path.write_text("name:A\n")
    assert plan_shards(config, people, markers).fingerprint != before
    assert plan_shards(config, people, markers).optout.name_listed("a")


def test_crawl_preflight_reads_the_list(tmp_path: Path) -> None:
    bad = optout_file(tmp_path, "bad line")
    config = PipelineConfig.model_validate(
        {"crawl": {"source": "local", "local_root": str(tmp_path)}, "governance": {"optout": [str(bad)]}}
    )
    with pytest.raises(UserError, match="not a valid entry"):
        CrawlStage.preflight(config)
