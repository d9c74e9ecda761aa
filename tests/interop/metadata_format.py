"""An independent signer and verifier of the metadata format, written from
docs/metadata.md (not from the Rust code) with pycose, cbor2 and cryptography."""

import hashlib
import time

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import CoseMessage, SignMessage
from pycose.messages.signer import CoseSignature

SPEC_VERSION = 1
COSE_SIGN_TAG = 98


class Key:
    """An Ed25519 key pair, with the key id docs/metadata.md section 2 defines."""

    def __init__(self, private: Ed25519PrivateKey | None = None):
        self.private = private or Ed25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes_raw()
        self.id = hashlib.sha256(self.public).digest()

    def cose(self) -> OKPKey:
        return OKPKey(crv=Ed25519, x=self.public, d=self.private.private_bytes_raw())


def public_key_from_pem(pem: bytes) -> bytes:
    """The raw 32 bytes of a PEM SubjectPublicKeyInfo Ed25519 key (a meshctl .pub file)."""
    key = serialization.load_pem_public_key(pem)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(payload: dict, keys: list[Key]) -> bytes:
    """A tagged COSE_Sign: empty body headers, one EdDSA signature with a kid per key."""
    message = SignMessage(phdr={}, uhdr={}, payload=cbor2.dumps(payload))
    message.signers = [
        CoseSignature(phdr={Algorithm: EdDSA}, uhdr={KID: key.id}, key=key.cose())
        for key in keys
    ]
    return message.encode(tag=True)


def verify(data: bytes, public_keys: dict[bytes, bytes]) -> list[bytes]:
    """Decodes a metadata file and returns the key ids whose signature verifies; every
    signature must name EdDSA and a known kid."""
    assert data[:2] == bytes([0xD8, COSE_SIGN_TAG]), "not tag 98"
    message = CoseMessage.decode(data)
    assert isinstance(message, SignMessage)
    valid = []
    for signer in message.signers:
        assert signer.get_attr(Algorithm) == EdDSA
        kid = signer.get_attr(KID)
        signer.key = OKPKey(crv=Ed25519, x=public_keys[kid])
        try:
            if signer.verify_signature():
                valid.append(kid)
        except Exception:  # pycose raises on some malformed signatures
            pass
    return valid


def payload(data: bytes) -> dict:
    """The CBOR payload of a metadata file (unverified)."""
    return cbor2.loads(CoseMessage.decode(data).payload)


def common(role: str, version: int, lifetime: int) -> dict:
    now = int(time.time())
    return {
        "type": role,
        "spec_version": SPEC_VERSION,
        "version": version,
        "issued": now,
        "expires": now + lifetime,
    }


def root(version: int, root_keys, targets_keys, timestamp_keys, threshold=1) -> dict:
    everyone = {key.public: key for key in [*root_keys, *targets_keys, *timestamp_keys]}
    return {
        **common("root", version, 365 * 86400),
        "keys": [{"scheme": "ed25519", "public": public} for public in everyone],
        "roles": {
            name: {"keyids": [key.id for key in keys], "threshold": threshold}
            for name, keys in [
                ("root", root_keys),
                ("targets", targets_keys),
                ("timestamp", timestamp_keys),
            ]
        },
    }


WHOLE = 1_000_000  # a rollout share of the whole fleet, in millionths (section 4.4)


def check_rollout(rollout: dict) -> None:
    """The rules of section 4.4; raises ValueError naming the broken one."""
    if set(rollout) != {"start", "waves"}:
        raise ValueError(f"rollout keys {sorted(rollout)}")
    waves = rollout["waves"]
    if not 1 <= len(waves) <= 32:
        raise ValueError(f"{len(waves)} waves")
    for i, wave in enumerate(waves):
        if set(wave) != {"share", "delay"}:
            raise ValueError(f"wave {i + 1} keys {sorted(wave)}")
        if not 0 < wave["share"] <= WHOLE:
            raise ValueError(f"wave {i + 1} share {wave['share']}")
        if i and (wave["share"] <= waves[i - 1]["share"] or wave["delay"] <= waves[i - 1]["delay"]):
            raise ValueError(f"wave {i + 1} does not increase")
        if rollout["start"] + wave["delay"] >= 2**64:
            raise ValueError(f"wave {i + 1} opens past 2^64")
    if waves[-1]["share"] != WHOLE:
        raise ValueError("the last wave is not the whole fleet")


def position(spki_der: bytes, target_name: str) -> int:
    """A device's position in a target's rollout, as the numerator over 2^64: the first
    8 bytes of SHA-256(spki || name), big-endian."""
    digest = hashlib.sha256(spki_der + target_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def placement(rollout: dict, position_bits: int) -> tuple[int, int]:
    """The device's wave (from 1) and when it opens: the first wave with
    position / 2^64 < share / 10^6, compared exactly."""
    for i, wave in enumerate(rollout["waves"]):
        if position_bits * WHOLE < wave["share"] << 64:
            return i + 1, rollout["start"] + wave["delay"]
    raise ValueError("no wave takes this position: the rollout is malformed")


def targets(version: int, entries: list[dict]) -> dict:
    return {**common("targets", version, 30 * 86400), "targets": entries}


def timestamp(version: int, signed_targets: bytes, targets_version: int) -> dict:
    return {
        **common("timestamp", version, 86400),
        "targets": {
            "version": targets_version,
            "length": len(signed_targets),
            "sha256": hashlib.sha256(signed_targets).digest(),
        },
    }
