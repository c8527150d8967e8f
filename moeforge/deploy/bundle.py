"""The air-gapped bundle: an export with everything a customer needs to check and run it offline.

DESIGN.md "Deployment". One folder (optionally also one tar):

    model/            the export (a standard checkpoint + moeforge's sidecar and card)
    model.sig         an OpenSSF model-signing signature over every file of model/, by the publisher's EC key
    publisher.pub     the publisher's public key (pin it out of band: a key shipped beside what it signs proves
                      integrity, not origin)
    bom.cdx.json      CycloneDX ML-BOM: the model, its base, its datasets by fingerprint, the software versions
    LICENSES/         the licence texts of the entries and of the data the base was built from
    wheelhouse/       every wheel the server needs (moeforge's, and its `serve` and `deploy` extras' whole dependency
                      closure at the versions installed where the bundle was made: that machine's Python and platform),
                      requirements.lock pinning them, and README.txt with the offline install command
    README.txt        what is here and the three steps: check, install, serve
    SHA256SUMS        every file above, `sha256sum -c SHA256SUMS` checks it with coreutils alone

Signing: model-signing (not sigstore's keyless flow) because its elliptic-key signer needs no
network at signing or verification time, which an air-gapped customer requires; sigstore would need
a shipped trusted root and its transparency log to mean anything.
"""

import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import ArtifactNotFound, ConfigError, DataError, MoeforgeError
from moeforge.store.protocol import sha256_stream

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"
SIGNATURE = "model.sig"
PUBLIC_KEY = "publisher.pub"
BOM = "bom.cdx.json"
MODEL = "model"


@dataclass(frozen=True)
class Check:
    missing: list[str]
    extra: list[str]
    altered: list[str]
    signature: str | None  # None when the signature verified; else why not

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered or self.signature)


def generate_key(path: Path) -> Path:
    """A new EC P-256 private key (PEM, mode 0600) at `path`, and its public key beside it (`.pub`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public_path(path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def public_path(private: Path) -> Path:
    return private.with_suffix(".pub")


def write_bundle(export: Path, out: Path, *, key: Path, licences: dict[str, str], bom: dict, wheelhouse: bool = True,
                 tar: bool = False) -> Path:
    """Build the bundle of `export` in `out` (a new folder); `licences`: file name → text; `bom`: bom_json()'s fields."""
    from moeforge.atomic import write_folder
    from moeforge.extras import require

    require("deploy", "bundling an export")
    if not (export / "config.json").is_file():
        raise ArtifactNotFound(f"{export}: not an export (no config.json); run `moeforge export` first.")
    if not key.is_file() or not public_path(key).is_file():
        raise ArtifactNotFound(f"{key}: no signing key (and {public_path(key).name} beside it); create one with "
                               "`moeforge bundle keygen`.")

    def fill(folder: Path) -> None:
        shutil.copytree(export, folder / MODEL)
        _sign(folder / MODEL, folder / SIGNATURE, key)
        shutil.copy(public_path(key), folder / PUBLIC_KEY)
        (folder / "LICENSES").mkdir()
        for name, text in sorted(licences.items()):
            (folder / "LICENSES" / name).write_text(text)
        (folder / BOM).write_text(bom_json(folder / MODEL, **bom))
        if wheelhouse:
            _wheelhouse(folder / "wheelhouse")
        (folder / "README.txt").write_text(_readme(wheelhouse))
        (folder / SUMS).write_text("".join(f"{_sha256(folder / rel)}  {rel}\n" for rel in _files(folder)))

    write_folder(out, fill)
    if tar:
        with tarfile.open(out.with_suffix(".tar"), "w") as archive:
            archive.add(out, arcname=out.name)
    return out


def verify_bundle(folder: Path, *, public_key: Path | None = None) -> Check:
    """Every file against SHA256SUMS (naming each missing, extra or altered one) and the signature against the key
    (`public_key`, else the bundle's own publisher.pub, which proves integrity only)."""
    from moeforge.extras import require

    require("deploy", "verifying a bundle's signature")
    folder = Path(folder)
    sums = folder / SUMS
    if not sums.is_file():
        raise ArtifactNotFound(f"{folder}: no {SUMS}; not a moeforge bundle (make one with `moeforge bundle`).")
    listed = {}
    for number, line in enumerate(sums.read_text().splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DataError(f"{sums}:{number}: not a `sha256sum` line: {line[:80]!r}.")
        listed[rel] = digest
    present = set(_files(folder))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    altered = sorted(rel for rel in set(listed) & present if _sha256(folder / rel) != listed[rel])
    key = public_key or folder / PUBLIC_KEY
    signature = None
    try:
        _verify(folder / MODEL, folder / SIGNATURE, key)
    except MoeforgeError as exc:
        signature = str(exc)
    return Check(missing, extra, altered, signature)


def bom_json(model_dir: Path, *, name: str, version: str, base_model: str, base_fingerprint: str, datasets: dict[str, str],
             software: dict[str, str], entries: list[str]) -> str:
    """The CycloneDX 1.6 JSON ML-BOM of an export."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    bom = Bom()
    model = Component(name=name, version=version, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref="model",
                      hashes=[HashType(alg=HashAlgorithm.SHA_256, content=_sha256(p)) for p in sorted(model_dir.glob("*.safetensors"))],
                      properties=[Property(name="moeforge:library_entry", value=e) for e in entries])
    base = Component(name=base_model, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref="base",
                     properties=[Property(name="moeforge:fingerprint", value=base_fingerprint)])
    bom.metadata.component = model
    bom.components.add(base)
    for dataset, fingerprint in sorted(datasets.items()):
        bom.components.add(Component(name=dataset, type=ComponentType.DATA, bom_ref=f"data:{dataset}",
                                     properties=[Property(name="moeforge:data_fingerprint", value=fingerprint)]))
    for package, package_version in sorted(software.items()):
        bom.components.add(Component(name=package, version=package_version, type=ComponentType.LIBRARY, bom_ref=f"pkg:{package}"))
    bom.register_dependency(model, [base])
    return JsonV1Dot6(bom).output_as_string(indent=2)


def _sign(model_dir: Path, signature: Path, key: Path) -> None:
    import model_signing

    try:
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key).sign(model_dir, signature)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot sign with {key}: {exc}. Is it an EC private key in PEM (`moeforge bundle keygen`)?") from None


def _verify(model_dir: Path, signature: Path, key: Path) -> None:
    import model_signing

    if not signature.is_file():
        raise DataError(f"the signature {signature.name} is missing")
    if not Path(key).is_file():
        raise ArtifactNotFound(f"no public key at {key}")
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key).verify(model_dir, signature)
    except Exception as exc:  # model-signing raises ValueError and others from its crypto backends: all mean "not verified"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "mismatch" in reason.lower():
            reason = reason.split(":")[0] + " (a signed file differs from what was signed, or another key signed it)"
        raise DataError(f"the signature does not verify with {key}: {reason[:200]}") from None


SERVER = "moeforge[serve,deploy]"  # what serving a bundle needs: the server, and the bundle's verification before it
INSTALL = f"pip install --no-index --find-links wheelhouse '{SERVER}'"


def _wheelhouse(folder: Path) -> None:
    """Every wheel `SERVER` installs from, at the versions installed here, so `INSTALL` works with no network.

    moeforge's own wheel is built from this installation's source; the others are fetched with pip from the package
    index this machine is configured for (bundling needs it; the customer's machine does not), constrained to the
    installed versions. requirements.lock pins the wheels the wheelhouse holds."""
    from importlib import metadata

    folder.mkdir()
    source = Path(__file__).resolve().parents[2]
    if not (source / "pyproject.toml").is_file():
        raise ConfigError("moeforge is installed from a wheel, not its source, so its own wheel cannot be built for the "
                          "bundle's wheelhouse; bundle with --no-wheelhouse, or from a source checkout.")
    pip = [sys.executable, "-m", "pip"]
    done = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(folder), str(source)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"could not build moeforge's wheel for the bundle: {done.stderr.strip()[-400:]}")
    installed = folder / "installed.txt"
    installed.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
                                 if d.metadata["Name"] and d.metadata["Name"] != "moeforge"))
    own = next(folder.glob("moeforge-*.whl"))
    done = subprocess.run([*pip, "download", "--quiet", "--only-binary", ":all:", "--dest", str(folder), "--constraint",
                           str(installed), f"{SERVER} @ {own.resolve().as_uri()}"], capture_output=True, text=True)
    installed.unlink()
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING:")]
        raise ConfigError("could not fetch the server's wheels for the bundle's wheelhouse (bundling needs the package "
                          f"index; --no-wheelhouse leaves them out): {' '.join(lines)[-400:]}")
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    (folder / "requirements.lock").write_text("".join(f"{_pin(name)}\n" for name in wheels))
    (folder / "README.txt").write_text(
        f"The wheels the moeforge server needs ({len(wheels)}, for Python {platform.python_version()} on "
        f"{sysconfig.get_platform()}, where the bundle was made).\n"
        f"Install them with no network, in a fresh virtual environment of that Python (python{sys.version_info.major}."
        f"{sys.version_info.minor} -m venv), from the bundle's folder:\n\n    {INSTALL}\n\n"
        "then serve the bundle: moeforge serve .\n")


def _readme(wheelhouse: bool) -> str:
    """The bundle's top README.txt: what is in it, and how to check, install and serve it."""
    install = ("with no network, from the wheels in wheelhouse/: see wheelhouse/README.txt (the Python it needs, and\n"
               f"   the command, run in this folder: {INSTALL})") if wheelhouse else \
        f"this bundle carries no wheels; from a package index: pip install '{SERVER}'"
    return (
        "A moeforge bundle: a model to check and serve offline behind an OpenAI-compatible API.\n\n"
        f"    {MODEL}/  the model (a standard checkpoint, moeforge's sidecar and its card)\n"
        f"    {SIGNATURE}  its signature     {PUBLIC_KEY}  the publisher's public key (pin it out of band)\n"
        f"    {BOM}  its bill of materials     LICENSES/  the licences\n"
        + ("    wheelhouse/  every wheel the server needs\n" if wheelhouse else "")
        + f"    {SUMS}  the digest of every file\n\n"
        f"1. Check it: sha256sum -c {SUMS}; with moeforge installed, also the signature:\n"
        "   moeforge bundle verify . --public-key THE_KEY_YOU_PINNED\n"
        f"2. Install the server: {install}\n"
        "3. Serve it: moeforge serve . --api-key A_KEY_OF_YOURS   (moeforge serve --help for the port and the ledger)\n"
    )


def _pin(wheel: str) -> str:
    """`name==version` of a wheel file name (PEP 427: name-version-…)."""
    name, version = wheel.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version}"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != SUMS)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def describe(check: Check) -> str:
    parts = [f"missing: {', '.join(check.missing)}" if check.missing else "", f"extra: {', '.join(check.extra)}" if check.extra else "",
             f"altered: {', '.join(check.altered)}" if check.altered else "", f"signature: {check.signature}" if check.signature else ""]
    return "; ".join(p for p in parts if p) or "every file matches SHA256SUMS and the signature verifies"
