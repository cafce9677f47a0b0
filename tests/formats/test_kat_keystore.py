"""Known-answer vectors for the key broker's keystore file (``keybroker/keystore.py``).

The keystore is the model owner's one durable secret: every model key, its release policy and
the audit log's MAC key live in it, and a broker upgraded to a new tdxfl must open the file the
old one wrote, or the models sealed under those keys are lost. These tests pin the format to
two files committed once by ``tests/data/kat/make_vectors.py``:

* ``keystore-passphrase.ks``: protected by the passphrase below through scrypt; the file records
  its own scrypt parameters (n=2**14, r=8, p=1, the smallest tdxfl accepts), so opening it
  takes a few tens of milliseconds;
* ``keystore-keyfile.ks``: protected by the key file ``keystore.key`` (64 hex digits).

Opened with the right secret they hold exactly the known key names, key bytes, policies,
roles, creation times and audit MAC key; a wrong secret is refused. Rewriting an unchanged
keystore with the same salt (``os.urandom`` replaced in the test) reproduces the committed bytes,
so the writer's output is pinned too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tdxfl.attestation.policy import Policy
from tdxfl.errors import ConfigError, WrongKey
from tdxfl.keybroker.keystore import Keystore

KAT = Path(__file__).resolve().parents[1] / "data" / "kat"
PASSPHRASE_KS = KAT / "keystore-passphrase.ks"
KEYFILE_KS = KAT / "keystore-keyfile.ks"
KEY_FILE = KAT / "keystore.key"
PASSPHRASE = "correct horse battery staple (kat)"
KEY_FILE_BYTES = bytes(range(0xE0, 0x100))

SAMPLE_MRTD = bytes.fromhex(
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)
Entries = dict[str, tuple[bytes, Policy, tuple[str, ...], str]]
#: name -> (key bytes, policy, roles, created), as written by make_vectors.py
PASSPHRASE_KEYS: Entries = {
    "model-alpha": (
        bytes(range(0x40, 0x60)),
        Policy(
            tee=frozenset({"tdx"}),
            mrtd=frozenset({SAMPLE_MRTD}),
            rtmr3=frozenset({bytes([0xAB]) * 48}),
            tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}),
            accepted_advisories=frozenset({"INTEL-SA-00615"}),
            allow_dynamic_platform=True,
            allow_cached_keys=True,
            allow_smt=True,
        ),
        ("ps", "worker"),
        "2025-07-19T10:00:34+00:00",
    ),
    "model-beta": (
        bytes(range(0x60, 0x80)),
        Policy(tee=frozenset({"simulated"}), mrtd=None),
        ("worker",),
        "2025-07-20T08:30:00+00:00",
    ),
}
KEYFILE_KEYS: Entries = {
    # the strict default policy: real TDX only, no MRTD listed yet, so nothing is released
    "volume-key": (bytes(range(0xC0, 0xE0)), Policy(), ("ps",), "2025-07-21T12:00:00+00:00"),
}
PASSPHRASE_AUDIT_SECRET = bytes(range(0x80, 0xA0))
KEYFILE_AUDIT_SECRET = bytes(range(0xA0, 0xC0))
PASSPHRASE_PARAMS_LINE = (
    b'TDXFLKS1 {"context":"tdxfl/keystore/00112233445566778899aabbccddeeff","kdf":"scrypt","n":16384,"p":1,"r":8}\n'
)
KEYFILE_PARAMS_LINE = b'TDXFLKS1 {"kdf":"keyfile"}\n'
#: the salt of each file's last write (its sealed header's salt)
PASSPHRASE_SALT = bytes([0x52]) * 32
KEYFILE_SALT = bytes([0x54]) * 32

DIGESTS = {
    PASSPHRASE_KS: "03c225794a4fd044a56d904523435680e171fe0eb39e82cd217c14a7651762c4",
    KEYFILE_KS: "d547b33d138b1a23d1efd68494879ee2f002c6825729946ff6479888ea11eccb",
    KEY_FILE: "69ab93f96c86c1114981efb274cb3010f43ad5668d5ebeb7d094899bbe9c0c3a",
}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The committed key file, with the 0600 mode the keystore demands (git checks it out 0644)."""
    path = tmp_path / "keystore.key"
    shutil.copyfile(KEY_FILE, path)
    path.chmod(0o600)
    return path


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def _assert_contents(ks: Keystore, expected: Entries, audit: bytes) -> None:
    assert [info.name for info in ks.list()] == sorted(expected)
    for name, (key, policy, roles, created) in expected.items():
        entry = ks.get(name)
        assert entry.key == key
        assert entry.policy == policy
        assert entry.roles == roles
        assert entry.created == created
    assert ks.audit_mac_key() == audit


@pytest.mark.parametrize("path", list(DIGESTS), ids=lambda p: p.name)
def test_committed_vectors_are_unchanged(path: Path) -> None:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGESTS[path]


def test_clear_header_records_how_the_wrapping_key_is_made() -> None:
    assert PASSPHRASE_KS.read_bytes().startswith(PASSPHRASE_PARAMS_LINE + b"TDXFLSEAL\x01" + PASSPHRASE_SALT)
    assert KEYFILE_KS.read_bytes().startswith(KEYFILE_PARAMS_LINE + b"TDXFLSEAL\x01" + KEYFILE_SALT)
    assert KEY_FILE.read_bytes() == KEY_FILE_BYTES.hex().encode() + b"\n"


def test_passphrase_keystore_opens_to_the_known_keys() -> None:
    ks = Keystore.open(PASSPHRASE_KS, passphrase=PASSPHRASE)
    _assert_contents(ks, PASSPHRASE_KEYS, PASSPHRASE_AUDIT_SECRET)


def test_keyfile_keystore_opens_to_the_known_keys(key_file: Path) -> None:
    ks = Keystore.open(KEYFILE_KS, key_file=key_file)
    _assert_contents(ks, KEYFILE_KEYS, KEYFILE_AUDIT_SECRET)


def test_raw_key_file_opens_it_too(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(KEY_FILE_BYTES)
    raw.chmod(0o600)
    assert Keystore.open(KEYFILE_KS, key_file=raw).get("volume-key").key == bytes(range(0xC0, 0xE0))


def test_wrong_passphrase_is_refused() -> None:
    with pytest.raises(WrongKey, match="wrong passphrase"):
        Keystore.open(PASSPHRASE_KS, passphrase=PASSPHRASE + "!")
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        Keystore.open(PASSPHRASE_KS, key_file=KEY_FILE)


def test_wrong_key_file_is_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text(bytes(range(32)).hex())
    wrong.chmod(0o600)
    with pytest.raises(WrongKey, match="wrong passphrase or key file"):
        Keystore.open(KEYFILE_KS, key_file=wrong)
    with pytest.raises(ConfigError, match="protected by a key file"):
        Keystore.open(KEYFILE_KS, passphrase=PASSPHRASE)


@pytest.mark.parametrize(
    ("vector", "salt", "name"),
    [(PASSPHRASE_KS, PASSPHRASE_SALT, "model-alpha"), (KEYFILE_KS, KEYFILE_SALT, "volume-key")],
    ids=["passphrase", "keyfile"],
)
def test_rewriting_an_unchanged_keystore_reproduces_it(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch, vector: Path, salt: bytes, name: str
) -> None:
    path = _copy(vector, tmp_path)
    if vector == PASSPHRASE_KS:
        ks = Keystore.open(path, passphrase=PASSPHRASE)
    else:
        ks = Keystore.open(path, key_file=key_file)
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: salt if n == len(salt) else real(n))
    ks.set_policy(name)  # same policy and roles: only rewrites the file
    monkeypatch.undo()
    assert path.read_bytes() == vector.read_bytes()
