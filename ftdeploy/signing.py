"""Ed25519 signatures on what ftdeploy hands to a production line: exported ONNX files and
sign-off report folders (docs/signing.md).

The content hash an export carries (``ftdeploy.content_sha256``) detects corruption only: anyone
who edits a file can recompute it. A signature can only be made with the release engineer's
private key, so a line that trusts only that key's public half refuses any file changed after it
was signed, hash recomputed or not.

What is signed, exactly (UTF-8 text, each line ending in a newline):

* an ONNX file: ``ftdeploy-onnx-signature/1``, its ``ftdeploy.content_sha256``, and the signer's
  fingerprint. The content hash covers the whole model (graph, cells, every other metadata key,
  ``ftdeploy.signer`` included) except ``ftdeploy.content_sha256`` and ``ftdeploy.signature``.
* a report folder: ``ftdeploy-report-signature/1``, one line ``<sha256>  <name>`` per report
  file (report.json and its renderings, by name), and ``signer <fingerprint>``.

A key's fingerprint is the SHA-256 (hex) of its public key in DER SubjectPublicKeyInfo form, as
``openssl pkey -pubin -in KEY.pub -outform DER | sha256sum`` prints it.

``cryptography`` is imported only when a key is made, read or used: ``ftdeploy --help`` and every
command that signs nothing never load it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, VerifyError

#: The environment variable holding the private key's passphrase (never a command-line option:
#: a command line is visible to every user of the machine and kept in shell histories).
PASSPHRASE_ENV = "FTDEPLOY_KEY_PASSPHRASE"
ONNX_SCHEME = "ftdeploy-onnx-signature/1"
REPORT_SCHEME = "ftdeploy-report-signature/1"
REPORT_SIG = "report.sig"
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


# --- keys -----------------------------------------------------------------------------------


def fingerprint(public_key) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate_key_pair(stem: Path) -> tuple[Path, Path, str]:
    """Write ``STEM.key`` (private, PEM PKCS8, mode 0600, encrypted with $FTDEPLOY_KEY_PASSPHRASE
    where set) and ``STEM.pub`` (public, PEM); neither may exist yet. (key, pub, fingerprint)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = Path(f"{stem}.key"), Path(f"{stem}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; keygen never overwrites a key (choose another --out, or "
                              "remove the old pair once nothing needs it)")  # fmt: skip
    private = Ed25519PrivateKey.generate()
    passphrase = _passphrase()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, pem, 0o600)
    _write_new(pub_path, public_pem, 0o644)
    return key_path, pub_path, fingerprint(private.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never over a file made meanwhile),
    so the private key is never readable by others, not even for a moment."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; keygen never overwrites a key") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed the public key's mode; the key's stays 0600


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key, read and ready to sign."""

    private: object
    fingerprint: str

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode("ascii")


def load_signing_key(path: str | Path) -> SigningKey:
    """The private key at ``path`` (``ftdeploy keygen``'s KEY.key); one-line ConfigError for a
    missing file, a public key given instead, a wrong or missing passphrase, another key type."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_key_file(path, "--sign")
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise ConfigError(f"--sign {path}: a public key; signing needs the private key (the .key file keygen wrote)")
    passphrase = _passphrase()
    try:
        private = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:  # encrypted without a passphrase, or a passphrase for an unencrypted key
        if passphrase is None:
            raise ConfigError(f"--sign {path}: the key is encrypted; set {PASSPHRASE_ENV} to its passphrase") from None
        raise ConfigError(f"--sign {path}: the key is not encrypted; unset {PASSPHRASE_ENV}") from None
    except ValueError:
        hint = f" or {PASSPHRASE_ENV} is not its passphrase" if passphrase else ""
        raise ConfigError(f"--sign {path}: not a PEM private key{hint}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"--sign {path}: a {type(private).__name__.removeprefix('_')}; ftdeploy signs with Ed25519 "
                          "keys (ftdeploy keygen makes one)")  # fmt: skip
    return SigningKey(private, fingerprint(private.public_key()))


def _read_key_file(path: Path, option: str) -> bytes:
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a key file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{option} {path}: key file not found") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a production line accepts signatures from, by fingerprint."""

    keys: dict  # fingerprint -> Ed25519PublicKey

    def check(self, what: str, signer: str | None, signature: str | None, message: bytes) -> None:
        """Raise a one-line VerifyError unless ``signature`` is ``signer``'s, a trusted key's, on ``message``."""
        from cryptography.exceptions import InvalidSignature

        if not signature or not signer:
            raise VerifyError(f"{what}: not signed; the trusted keys accept only signed files (sign with --sign KEY)")
        key = self.keys.get(signer)
        if key is None:
            raise VerifyError(f"{what}: signed by key {signer[:16]}…, which is not a trusted key "
                              f"({', '.join(f[:16] + '…' for f in self.keys)})")  # fmt: skip
        try:
            key.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise VerifyError(f"{what}: the signature does not verify: the file was changed after it was signed") from None


def load_trusted_keys(paths: list[Path]) -> TrustedKeys:
    """Every PEM public key in ``paths`` (a file may hold several, one after another: rotate keys
    by trusting the old and the new until nothing signed with the old one is in use)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = {}
    for path in paths:
        data = _read_key_file(Path(path), "--trust")
        if b"PRIVATE KEY" in data:
            raise ConfigError(f"--trust {path}: a private key; trust its public half (the .pub file), and keep the "
                              "private key with the release engineer only")  # fmt: skip
        blocks = _PEM_PUBLIC.findall(data)
        if not blocks:
            raise ConfigError(f"--trust {path}: no PEM public key in it (expected -----BEGIN PUBLIC KEY-----)")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except ValueError:
                raise ConfigError(f"--trust {path}: a public key in it is not valid PEM") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"--trust {path}: not an Ed25519 public key; ftdeploy keygen makes one")
            keys[fingerprint(key)] = key
    return TrustedKeys(keys)


# --- ONNX files -----------------------------------------------------------------------------


def onnx_message(content_sha256: str, signer: str) -> bytes:
    """The bytes an ONNX file's signature is made over (see the module docstring)."""
    return f"{ONNX_SCHEME}\n{content_sha256}\n{signer}\n".encode()


def sign_proto(proto, key: SigningKey) -> None:
    """Set ``ftdeploy.signer``, recompute ``ftdeploy.content_sha256`` (it covers the signer), and
    set ``ftdeploy.signature`` over both."""
    import onnx

    from .onnx_format import HASH_KEY, SIGNATURE_KEY, SIGNER_KEY, content_hash, read_metadata

    props = {k: v for k, v in read_metadata(proto).items() if k not in (HASH_KEY, SIGNATURE_KEY)}
    props[SIGNER_KEY] = key.fingerprint
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    digest = content_hash(proto)
    onnx.helper.set_model_props(proto, {**props, HASH_KEY: digest, SIGNATURE_KEY: key.sign(onnx_message(digest, key.fingerprint))})


def onnx_signature(path: str | Path, trusted: TrustedKeys | None) -> dict:
    """Check the signature of the ONNX file at ``path`` against ``trusted`` (None: record who
    signed it, check nothing). One read of the file: the record carries the SHA-256 of the very
    bytes checked, so a caller can tell that the file it then measured is the same.
    Raises a one-line VerifyError for an unsigned file, another key, or a failed signature."""
    import onnx

    from .onnx_format import HASH_KEY, SIGNATURE_KEY, SIGNER_KEY, content_hash, read_metadata

    path = Path(path)
    try:
        data = path.read_bytes()
        proto = onnx.load_from_string(data)
    except Exception:  # a missing or unreadable file: load_export says why, in its own words
        if trusted is None:
            return {"signer": None, "checked": False, "file_sha256": None}
        from .exported import load_export

        load_export(path)  # raises its one line for what it cannot read
        raise VerifyError(f"{path}: not a readable ONNX file") from None
    meta = read_metadata(proto)
    signer = meta.get(SIGNER_KEY)
    if trusted is not None:
        if meta.get(HASH_KEY) != content_hash(proto):
            raise VerifyError(f"{path}: content hash mismatch: the file was modified after export")
        trusted.check(str(path), signer, meta.get(SIGNATURE_KEY), onnx_message(meta.get(HASH_KEY, ""), signer or ""))
    return {"signer": signer, "checked": trusted is not None, "file_sha256": hashlib.sha256(data).hexdigest()}


# --- report folders -------------------------------------------------------------------------


def _report_message(files: dict[str, str], signer: str) -> bytes:
    lines = [REPORT_SCHEME] + [f"{files[name]}  {name}" for name in sorted(files)] + [f"signer {signer}"]
    return ("\n".join(lines) + "\n").encode()


def report_signature(files: dict[str, bytes], key: SigningKey) -> str:
    """The text of report.sig over ``files`` (name -> the bytes written under it)."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    record = {"scheme": REPORT_SCHEME, "signer": key.fingerprint, "files": digests,
              "signature": key.sign(_report_message(digests, key.fingerprint))}  # fmt: skip
    return json.dumps(record, indent=2) + "\n"


def check_report_folder(folder: str | Path, trusted: TrustedKeys) -> dict:
    """Check ``folder``'s report.sig against ``trusted``: every file it names is unchanged, every
    report file present is named (report.json first of all), and the signature is a trusted key's.
    Returns the signature record; raises a one-line VerifyError otherwise."""
    folder = Path(folder)
    sig_path = folder / REPORT_SIG
    if not folder.is_dir():
        raise VerifyError(f"{folder}: not a report folder (give the folder verify --out wrote)")
    if not sig_path.is_file():
        raise VerifyError(f"{folder}: no {REPORT_SIG}: the report is not signed (verify --sign KEY --out DIR signs one)")
    try:
        record = json.loads(sig_path.read_text(encoding="utf-8"))
        files, signer, signature = dict(record["files"]), record["signer"], record["signature"]
    except (ValueError, KeyError, TypeError):
        raise VerifyError(f"{sig_path}: not a report signature written by ftdeploy") from None
    present = {p.name for p in folder.glob("report.*") if p.name != REPORT_SIG}
    unsigned = sorted(present - set(files)) or (["report.json"] if "report.json" not in files else [])
    if unsigned:
        raise VerifyError(f"{folder}: {unsigned[0]} is not covered by {REPORT_SIG}")
    for name, digest in sorted(files.items()):
        path = folder / Path(name).name  # a name, never a path out of the folder
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise VerifyError(f"{path}: changed or missing since the report was signed")
    trusted.check(str(folder / "report.json"), signer, signature, _report_message(files, signer))
    return {"signer": signer, "files": sorted(files)}
