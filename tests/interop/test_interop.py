"""meshctl and the device workflow against an independent implementation (pycose):
each side verifies what the other signed, and neither accepts a flipped byte."""

import datetime
import json

import metadata_format as fmt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

PINS = [
    {
        "name": "app",
        "repository": "ghcr.io/org/app",
        "digest": "sha256:" + "6c" * 32,
        "size": 525,
        "media_type": "application/vnd.oci.image.index.v1+json",
        "selectors": {"hardware_class": "gateway", "platform": "linux/arm64"},
    },
    {
        "name": "tools",
        "repository": "docker.io/library/busybox",
        "digest": "sha256:" + "0c" * 32,
        "size": 1024,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "custom": {"restart": "always"},
    },
]


def meshctl_repository(run, tmp_path, *release_args: str):
    """A repository signed by meshctl (`release_args` added to `meshctl release`); returns
    its folder and the public keys by key id."""
    for name in ["root", "targets", "timestamp"]:
        run("key", "generate", "--out", f"keys/{name}")
    run(
        "root", "init", "--dir", "meta",
        "--root-key", "keys/root.key",
        "--targets-key", "keys/targets.pub",
        "--timestamp-key", "keys/timestamp.pub",
    )
    (tmp_path / "pins.json").write_text(json.dumps(PINS))
    run(
        "release", "--dir", "meta", "--pins", "pins.json",
        "--targets-key", "keys/targets.key",
        "--timestamp-key", "keys/timestamp.key",
        *release_args,
    )
    publics = {}
    for name in ["root", "targets", "timestamp"]:
        raw = fmt.public_key_from_pem((tmp_path / f"keys/{name}.pub").read_bytes())
        publics[fmt.hashlib.sha256(raw).digest()] = raw
    return tmp_path / "meta", publics


def python_repository(tmp_path, pins=PINS):
    """A repository written and signed by the Python side alone, with one root rotation,
    releasing `pins`."""
    root_key, root_key2, targets_key, timestamp_key = (fmt.Key() for _ in range(4))
    meta = tmp_path / "pymeta"
    meta.mkdir()
    root1 = fmt.root(1, [root_key], [targets_key], [timestamp_key])
    (meta / "1.root.cose").write_bytes(fmt.sign(root1, [root_key]))
    # Version 2 moves the root role to a new key: signed by the old and the new.
    root2 = fmt.root(2, [root_key2], [targets_key], [timestamp_key])
    (meta / "2.root.cose").write_bytes(fmt.sign(root2, [root_key, root_key2]))
    signed_targets = fmt.sign(fmt.targets(1, pins), [targets_key])
    (meta / "1.targets.cose").write_bytes(signed_targets)
    signed_timestamp = fmt.sign(fmt.timestamp(1, signed_targets, 1), [timestamp_key])
    (meta / "timestamp.cose").write_bytes(signed_timestamp)
    return meta


def verify_with_meshctl(run, meta):
    return run("--json", "verify", str(meta), "--root", str(meta / "1.root.cose"), check=False)


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_cose_sign_made_by_meshctl_verifies_in_pycose(run, tmp_path):
    meta, publics = meshctl_repository(run, tmp_path)

    for name, role in [("1.root.cose", "root"), ("1.targets.cose", "targets"), ("timestamp.cose", "timestamp")]:
        data = (meta / name).read_bytes()
        assert len(fmt.verify(data, publics)) == 1, name
        body = fmt.payload(data)
        assert body["type"] == role
        assert body["spec_version"] == 1

    targets = fmt.payload((meta / "1.targets.cose").read_bytes())
    assert [t["name"] for t in targets["targets"]] == ["app", "tools"]
    assert targets["targets"][0]["selectors"]["platform"] == "linux/arm64"
    timestamp = fmt.payload((meta / "timestamp.cose").read_bytes())
    signed_targets = (meta / "1.targets.cose").read_bytes()
    assert timestamp["targets"]["length"] == len(signed_targets)
    assert timestamp["targets"]["sha256"] == fmt.hashlib.sha256(signed_targets).digest()


def test_repository_signed_in_python_verifies_in_the_device_workflow(run, tmp_path):
    meta = python_repository(tmp_path)

    done = verify_with_meshctl(run, meta)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["root"]["version"] == 2
    assert report["timestamp"]["version"] == 1
    assert report["targets"]["version"] == 1
    entries = report["targets"]["entries"]
    assert [e["name"] for e in entries] == ["app", "tools"]
    assert entries[0]["digest"] == PINS[0]["digest"]
    assert entries[1]["custom"] == {"restart": "always"}


def test_one_flipped_byte_in_a_meshctl_file_fails_on_both_sides(run, tmp_path):
    meta, publics = meshctl_repository(run, tmp_path)
    assert verify_with_meshctl(run, meta).returncode == 0

    flip_last_byte(meta / "timestamp.cose")

    assert fmt.verify((meta / "timestamp.cose").read_bytes(), publics) == []
    done = verify_with_meshctl(run, meta)
    assert done.returncode != 0
    assert "timestamp.cose" in done.stderr


def test_one_flipped_byte_in_a_python_file_fails_on_both_sides(run, tmp_path):
    meta = python_repository(tmp_path)
    root1 = fmt.payload((meta / "1.root.cose").read_bytes())
    root2 = fmt.payload((meta / "2.root.cose").read_bytes())
    publics = {fmt.hashlib.sha256(k["public"]).digest(): k["public"] for r in (root1, root2) for k in r["keys"]}
    assert len(fmt.verify((meta / "1.targets.cose").read_bytes(), publics)) == 1

    flip_last_byte(meta / "1.targets.cose")

    assert fmt.verify((meta / "1.targets.cose").read_bytes(), publics) == []
    done = verify_with_meshctl(run, meta)
    assert done.returncode != 0
    assert "1.targets.cose" in done.stderr


WAVES = "1%@0,10%@2h,100%@24h"
START = "2026-12-01T08:00:00Z"
START_UNIX = 1_796_112_000


def device_certificate(tmp_path, name: str, key) -> tuple[bytes, bytes]:
    """A self-signed device certificate for `key`, written to NAME.pem; returns its DER
    SubjectPublicKeyInfo and its PEM."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, algorithm)
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / f"{name}.pem").write_bytes(pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki, pem


def test_meshctl_waves_decode_verify_and_place_devices_the_same_in_python(run, tmp_path):
    meta, publics = meshctl_repository(
        run, tmp_path, "--waves", WAVES, "--rollout-start", START
    )

    # Python checks the signature over the payload that carries the waves, and decodes them.
    signed = (meta / "1.targets.cose").read_bytes()
    assert len(fmt.verify(signed, publics)) == 1
    expected = {
        "start": START_UNIX,
        "waves": [
            {"share": 10_000, "delay": 0},
            {"share": 100_000, "delay": 7200},
            {"share": 1_000_000, "delay": 86400},
        ],
    }
    for entry in fmt.payload(signed)["targets"]:
        assert entry["rollout"] == expected, entry["name"]
        fmt.check_rollout(entry["rollout"])

    # Device identities of both key kinds: Python and meshctl put each in the same place.
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(6)]
    keys += [ed25519.Ed25519PrivateKey.generate() for _ in range(6)]
    for i, key in enumerate(keys):
        spki, _ = device_certificate(tmp_path, f"device-{i}", key)
        done = run(
            "--json", "verify", str(meta), "--root", str(meta / "1.root.cose"),
            "--certificate", str(tmp_path / f"device-{i}.pem"),
        )
        device = json.loads(done.stdout)["device"]
        assert [d["target"] for d in device] == ["app", "tools"]
        for placed in device:
            bits = fmt.position(spki, placed["target"])
            wave, opens = fmt.placement(expected, bits)
            assert placed["position_bits"] == bits, (i, placed)
            assert placed["wave"] == wave, (i, placed)
            assert placed["opens_unix"] == opens, (i, placed)

    # Positions at the exact edges of each wave, computed by both sides' rules.
    edge_1 = (10_000 << 64) // fmt.WHOLE  # 1 % of 2^64, rounded down: still wave 1
    assert fmt.placement(expected, edge_1) == (1, START_UNIX)
    assert fmt.placement(expected, edge_1 + 1) == (2, START_UNIX + 7200)
    assert fmt.placement(expected, 2**64 - 1) == (3, START_UNIX + 86400)


def python_waves_repository(tmp_path, rollout: dict):
    """A repository signed in Python whose "app" target carries `rollout`."""
    return python_repository(tmp_path, [dict(PINS[0], rollout=rollout), PINS[1]])


def test_waves_signed_in_python_are_what_the_device_workflow_places_devices_by(run, tmp_path):
    rollout = {
        "start": START_UNIX,
        "waves": [{"share": 250_000, "delay": 0}, {"share": 1_000_000, "delay": 3600}],
    }
    fmt.check_rollout(rollout)
    meta = python_waves_repository(tmp_path, rollout)
    spki, _ = device_certificate(tmp_path, "device", ec.generate_private_key(ec.SECP384R1()))

    done = run(
        "--json", "verify", str(meta), "--root", str(meta / "1.root.cose"),
        "--certificate", str(tmp_path / "device.pem"),
    )

    report = json.loads(done.stdout)
    assert report["targets"]["entries"][0]["rollout"] == rollout
    assert "rollout" not in report["targets"]["entries"][1]
    app = report["device"][0]
    wave, opens = fmt.placement(rollout, fmt.position(spki, "app"))
    assert (app["position_bits"], app["wave"], app["opens_unix"]) == (
        fmt.position(spki, "app"), wave, opens
    )
    assert report["device"][1]["wave"] is None  # "tools" has no rollout


def test_a_malformed_rollout_signed_in_python_is_refused_naming_the_target(run, tmp_path):
    # Shares that go down: signed correctly, but against the rules of section 4.4.
    rollout = {
        "start": START_UNIX,
        "waves": [{"share": 500_000, "delay": 0}, {"share": 100_000, "delay": 60}, {"share": 1_000_000, "delay": 120}],
    }
    meta = python_waves_repository(tmp_path, rollout)

    done = verify_with_meshctl(run, meta)

    assert done.returncode != 0
    assert "target app" in done.stderr, done.stderr
    assert "rollout wave 2" in done.stderr, done.stderr
