"""CDS client keys and JWTs: what a CDS client (the EHR) does before it calls us.

``new_key_pair`` / ``public_jwk`` / ``mint_token`` are used by the tests, the demo page and
``cds-service fire``; ``keys_new`` is ``cds-service keys new`` (its options are in ``cli.py``).
The service itself only verifies tokens (``http/auth``).  Keys are asymmetric only, as CDS
Hooks 2.0 requires.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from cds_service.devtools import EXIT_OK, EXIT_USAGE

_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES256K": ec.SECP256K1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}
_RSA_KEY_BITS = 2048

# What ``cds-service keys new`` and ``fire --alg`` offer: the algorithms CDS Hooks 2.0 names.
ALGORITHMS = ("ES384", "RS384")
DEFAULT_KEY_FILE = "cds-client-key.pem"
DEFAULT_ISS = "https://cds-client.example.org"


def new_key_pair(alg: str, kid: str) -> tuple[bytes, dict[str, Any]]:
    """A fresh signing key for ``alg``: (unencrypted PKCS#8 PEM private key, public JWK).

    The JWK carries ``kid``, ``alg`` and ``use: sig``; publish it as ``{"keys": [jwk]}``.
    """
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if alg in _EC_CURVES:
        private_key = ec.generate_private_key(_EC_CURVES[alg])
    elif alg[:2] in ("RS", "PS"):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_KEY_BITS)
    elif alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r} (asymmetric algorithms only)")
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, public_jwk(private_pem, alg=alg, kid=kid)


def public_jwk(private_pem: bytes, *, alg: str, kid: str) -> dict[str, Any]:
    """The public JWK (with ``kid``, ``alg``, ``use: sig``) of a PEM private key."""
    private_key = serialization.load_pem_private_key(private_pem, password=None)
    public_key = private_key.public_key()
    jwk: dict[str, Any]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def mint_token(
    private_pem: bytes,
    *,
    alg: str,
    kid: str,
    iss: str,
    aud: str | list[str],
    jku: str | None = None,
    lifetime_s: int = 300,
    extra_claims: dict[str, Any] | None = None,
    extra_headers: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed CDS client JWT, as CDS Hooks 2.0 §Trusting CDS Clients describes it.

    Header ``typ: JWT``, ``kid`` (and ``jku`` when given); claims ``iss``, ``aud``,
    ``iat`` (``now``, default the current time), ``exp = iat + lifetime_s`` and a fresh
    ``jti``.  ``extra_claims`` / ``extra_headers`` are merged last; a ``None`` value
    removes that claim or header (tests use this to build deficient tokens).
    """
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": issued_at,
        "exp": issued_at + lifetime_s,
        "jti": str(uuid.uuid4()),
    }
    claims.update(extra_claims or {})
    claims = {name: value for name, value in claims.items() if value is not None}

    headers: dict[str, Any] = {"typ": "JWT", "kid": kid}
    if jku is not None:
        headers["jku"] = jku
    headers.update(extra_headers or {})
    # PyJWT drops a falsy ``typ``; the other None-valued headers are left out here.
    headers = {name: value for name, value in headers.items() if value is not None or name == "typ"}
    return jwt.encode(claims, private_pem, algorithm=alg, headers=headers)


def keys_new(args: argparse.Namespace) -> int:
    """``cds-service keys new``: write a private key (mode 0600); print its JWKS and TRUSTED_ISSUERS entry."""
    kid = args.kid or f"ivig-cds-client-{uuid.uuid4().hex[:8]}"
    out_path = Path(args.out)
    private_pem, jwk = new_key_pair(args.alg, kid)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        descriptor = os.open(out_path, flags, 0o600)
    except FileExistsError:
        print(f"error: {out_path} exists; choose another --out or pass --force to replace it",
              file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot write {out_path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when --force replaced a file with wider permissions
        handle.write(private_pem)

    jwks = {"keys": [jwk]}
    issuer: dict[str, Any] = {"jwks": jwks}
    if args.jku:
        issuer["jku_allow"] = [args.jku]
    trusted = {args.iss: issuer}
    if args.json:
        print(json.dumps({"key_file": str(out_path), "alg": args.alg, "kid": kid, "iss": args.iss,
                          "jwks": jwks, "trusted_issuers": trusted}, indent=2))
        return EXIT_OK
    jku_option = f" --jku {args.jku}" if args.jku else ""
    print(f"Private key ({args.alg}, kid {kid}) written to {out_path} (mode 0600). Keep it secret.\n")
    print("JWKS — publish it at your jku URL, or hand it to the CDS service's operator:")
    print(json.dumps(jwks, indent=2))
    print("\nTRUSTED_ISSUERS for the CDS service (CDS_TRUSTED_ISSUERS: this inline JSON, or a file path):")
    print(json.dumps(trusted, separators=(",", ":")))
    print("\nFire a signed request:")
    print(f"  cds-service fire --url BASE --fixture pl7-ro52-rpild --jwt-key {out_path} "
          f"--iss {args.iss} --kid {kid} --alg {args.alg}{jku_option}")
    return EXIT_OK
