"""meshctl and the device workflow against an independent implementation (pycose):
each side verifies what the other signed, and neither accepts a flipped byte."""

import json

import metadata_format as fmt

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


def meshctl_repository(run, tmp_path):
    """A repository signed by meshctl; returns its folder and the public keys by key id."""
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
    )
    publics = {}
    for name in ["root", "targets", "timestamp"]:
        raw = fmt.public_key_from_pem((tmp_path / f"keys/{name}.pub").read_bytes())
        publics[fmt.hashlib.sha256(raw).digest()] = raw
    return tmp_path / "meta", publics


def python_repository(tmp_path):
    """A repository written and signed by the Python side alone, with one root rotation."""
    root_key, root_key2, targets_key, timestamp_key = (fmt.Key() for _ in range(4))
    meta = tmp_path / "pymeta"
    meta.mkdir()
    root1 = fmt.root(1, [root_key], [targets_key], [timestamp_key])
    (meta / "1.root.cose").write_bytes(fmt.sign(root1, [root_key]))
    # Version 2 moves the root role to a new key: signed by the old and the new.
    root2 = fmt.root(2, [root_key2], [targets_key], [timestamp_key])
    (meta / "2.root.cose").write_bytes(fmt.sign(root2, [root_key, root_key2]))
    signed_targets = fmt.sign(fmt.targets(1, PINS), [targets_key])
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
