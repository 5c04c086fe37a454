"""Which certificate authorities HTTPS connections trust."""

from __future__ import annotations

import os

import certifi


def ca_bundle() -> str:
    """The CA file the environment names (SSL_CERT_FILE, as OpenSSL reads it, or REQUESTS_CA_BUNDLE), else
    certifi's: teams behind a TLS-inspecting proxy set one of these, and verification stays on."""
    return os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where()
