"""Registry, cache and downloader for the pretrained artifacts StyleCLIP uses.

Every official file (StyleGAN2 generator, OpenAI CLIP, ArcFace IR-SE50, e4e,
the 14 StyleCLIP latent mappers, the FFHQ global-direction matrix ``fs3`` and
the e4e-inverted CelebA-HQ latents) is described by an :class:`ArtifactSpec`
in :data:`ARTIFACTS`: where it comes from (an HTTP(S) URL and/or a Google
Drive id), the file name it is cached under, its sha256 where one is
published, its kind, description, license and citation, and where the
id/URL was confirmed.

The main entry points:

* :func:`resolve` -- ``resolve(name_or_path, kind=None) -> Path``: an existing
  file path is returned as is; a registry name returns the cached file,
  fetching it first if missing; anything else raises a clear error that lists
  close registry names.
* :func:`fetch` -- download one artifact into the cache (resumable, verified,
  atomic, safe against concurrent fetches).
* :func:`list_artifacts`, :func:`info`, :func:`is_cached`, :func:`path_for`,
  :func:`get_cache_dir`, :func:`verify`.
* :func:`main` -- the command line (``python -m styleclip_lib fetch|list|path|info|verify``).

Cache directory: ``$STYLECLIP_HOME`` if set; else ``<repo>/pretrained/`` when
the package runs from a source checkout (that folder exists next to the
package directory); else ``$XDG_CACHE_HOME/styleclip_lib`` (default
``~/.cache/styleclip_lib``).  ``STYLECLIP_OFFLINE=1`` forbids any network
access: a missing file is then an immediate, explicit error.

Integrity: downloads stream into ``<file>.part`` (resumed with an HTTP Range
request when a partial file exists), are checked against the published
sha256 (or, when none is published, the observed sha256 is recorded in
``<file>.sha256`` and checked on later loads: trust on first use), and are
moved into place with :func:`os.replace`.  A cached file is re-hashed on load
only when it is newer than its ``.sha256`` record, so loads stay fast.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import html
import http.client
import importlib
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

__all__ = [
    "ArtifactSpec",
    "ARTIFACTS",
    "KINDS",
    "PretrainedError",
    "UnknownArtifactError",
    "KindMismatchError",
    "DownloadError",
    "ChecksumError",
    "resolve",
    "fetch",
    "verify",
    "list_artifacts",
    "info",
    "is_cached",
    "path_for",
    "get_cache_dir",
    "main",
]

KINDS = ("generator", "clip", "arcface", "e4e", "mapper", "fs3", "latents")

# Google Drive "direct download" endpoint (the confirm=t form skips the virus-scan page).
# A module constant so that tests can point it at a local server.
GDRIVE_ENDPOINT = "https://drive.usercontent.google.com/download"
GDRIVE_VIEW_URL = "https://drive.google.com/file/d/{id}/view"

_CHUNK = 1 << 20
_HTML_SNIFF_LIMIT = 256 * 1024
_USER_AGENT = "styleclip_lib-pretrained/1.0 (+python urllib)"
_OFFLINE_VALUES = {"1", "true", "yes", "on"}
# <repo>/pretrained, used as the cache when it exists (source checkout).
_REPO_PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"


# --------------------------------------------------------------------------- errors


class PretrainedError(Exception):
    """Base class of every error raised by this module."""


class UnknownArtifactError(PretrainedError, FileNotFoundError, LookupError):
    """Neither an existing file nor a registry name (the message lists close names)."""


class KindMismatchError(PretrainedError, ValueError):
    """A registry name of another kind than the caller asked for."""


class DownloadError(PretrainedError, OSError):
    """A file could not be obtained; the message says how to download it by hand."""


class ChecksumError(DownloadError):
    """A file's sha256 (or size) is not the expected one."""

    def __init__(self, message: str, *, name: str = "", path: str | os.PathLike = "",
                 expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.name = name
        self.path = str(path)
        self.expected = expected
        self.actual = actual


class _HtmlPage(Exception):
    """Internal: the server sent an HTML page instead of the file."""

    def __init__(self, url: str, text: str, status: int):
        super().__init__(f"HTML page from {url}")
        self.url = url
        self.text = text
        self.status = status


class _Incomplete(Exception):
    """Internal: the transfer stopped early; the .part file is kept for a resume."""


# --------------------------------------------------------------------------- registry


@dataclass
class ArtifactSpec:
    """One downloadable artifact.

    ``url`` (HTTP/HTTPS) and/or ``gdrive_id`` say where it comes from; the
    sources are tried in the order url, gdrive_id, then ``mirrors`` (each an
    URL or ``"gdrive:<id>"``).  ``filename`` is relative to the cache
    directory.  ``sha256`` is the published hash (``None`` when none is
    published: the observed hash is then recorded on first download).
    ``provides`` lists other kinds the file can serve (an e4e or mapper
    checkpoint also holds a StyleGAN2 generator).  ``reference`` says where
    the id/URL was confirmed; ``note`` carries any caveat.
    """

    name: str
    kind: str
    filename: str
    url: str | None = None
    gdrive_id: str | None = None
    sha256: str | None = None
    size: int | None = None
    approx_size: str = ""
    description: str = ""
    license: str = ""
    citation: str = ""
    reference: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def sources(self) -> list[str]:
        """Download sources in the order they are tried: URLs and ``gdrive:<id>``."""
        out: list[str] = []
        if self.url:
            out.append(self.url)
        if self.gdrive_id:
            out.append(f"gdrive:{self.gdrive_id}")
        for m in self.mirrors:
            if m not in out:
                out.append(m)
        return out

    @property
    def manual_url(self) -> str | None:
        """The URL a person should open to download the file by hand."""
        srcs = self.sources()
        return _manual_url(srcs[0]) if srcs else None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = self.sources()
        d["manual_url"] = self.manual_url
        return d


def _manual_url(source: str) -> str:
    if source.startswith("gdrive:"):
        return GDRIVE_VIEW_URL.format(id=source[len("gdrive:"):])
    return source


_NV_NC = ("weights derived from NVIDIA's StyleGAN2 FFHQ release: Nvidia Source Code License-NC "
          "(non-commercial use only, https://nvlabs.github.io/stylegan2/license.html)")
_CITE_STYLECLIP = ("Patashnik, Wu, Shechtman, Cohen-Or, Lischinski. StyleCLIP: Text-Driven Manipulation "
                   "of StyleGAN Imagery. ICCV 2021, arXiv:2103.17249")
_CITE_STYLEGAN2 = ("Karras, Laine, Aittala, Hellsten, Lehtinen, Aila. Analyzing and Improving the Image "
                   "Quality of StyleGAN. CVPR 2020, arXiv:1912.04958")
_CITE_CLIP = ("Radford et al. Learning Transferable Visual Models From Natural Language Supervision. "
              "ICML 2021, arXiv:2103.00020")
_CITE_E4E = ("Tov, Alaluf, Nitzan, Patashnik, Cohen-Or. Designing an Encoder for StyleGAN Image "
             "Manipulation. SIGGRAPH 2021, arXiv:2102.02766")
_CITE_ARCFACE = ("Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face "
                 "Recognition. CVPR 2019, arXiv:1801.07698")
_STYLECLIP_README = "orpatashnik/StyleCLIP README.md"
_STYLECLIP_UTILS = "orpatashnik/StyleCLIP utils.py (google_drive_paths)"

_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{sha}/{file}"


def _clip(name: str, sha: str, file: str, desc: str, ref: str, approx: str = "") -> ArtifactSpec:
    stem = file[:-3]
    return ArtifactSpec(
        name=name, kind="clip", filename=f"clip/{file}",
        url=_CLIP_URL.format(sha=sha, file=file), sha256=sha, approx_size=approx,
        description=f"OpenAI CLIP {name} (TorchScript archive): {desc}",
        license="MIT (openai/CLIP LICENSE)", citation=_CITE_CLIP, reference=ref,
        note="sha256 confirmed: OpenAI embeds it in the URL path and openai/CLIP clip/clip.py "
             "_download() checks the file against it. Exact size not published"
             + ("; approx_size derived from the parameter count (151M, mostly fp16)." if approx else "."),
        aliases=(stem, f"clip-{stem}", f"clip-{name}"),
    )


# (registry suffix, Drive id, no_fine_mapper flag of the notebook meta_data, display text)
_MAPPERS = (
    ("afro", "1i5vAqo4z0I-Yon3FNft_YZOq7ClWayQJ", True, "afro hairstyle"),
    ("angry", "1g82HEH0jFDrcbCtn3M22gesWKfzWV_ma", True, "angry face"),
    ("beyonce", "1KJTc-h02LXs4zqCyo7pzCp0iWeO6T9fz", False, "Beyonce"),
    ("bobcut", "1IvyqjZzKS-vNdq_OhwapAcwrxgLAY8UF", True, "bob-cut hairstyle"),
    ("bowlcut", "1xwdxI2YCewSt05dEHgkpmmzoauPjEnnZ", True, "bowl-cut hairstyle"),
    ("curly_hair", "1xZ7fFB12Ci6rUbUfaHPpo44xUFzpWQ6M", True, "curly hair"),
    ("depp", "1FPiJkvFPG_y-bFanxLLP91wUKuy-l3IV", False, "Johnny Depp"),
    ("hilary_clinton", "1X7U2zj2lt0KFifIsTfOOzVZXqYyCWVll", False, "Hillary Clinton"),
    ("mohawk", "1oMMPc8iQZ7dhyWavZ7VNWLwzf9aX4C09", True, "mohawk hairstyle"),
    ("purple_hair", "14H0CGXWxePrrKIYmZnDD2Ccs65EEww75", False, "purple hair"),
    ("surprised", "1F-mPrhO-UeWrV1QYMZck63R43aLtPChI", True, "surprised face"),
    ("taylor_swift", "10jHuHsKKJxuf3N0vgQbX_SMEQgFHDrZa", False, "Taylor Swift"),
    ("trump", "14v8D0uzy4tOyfBU3ca9T0AzTt3v-dNyh", False, "Donald Trump"),
    ("zuckerberg", "1NjDcMUL8G-pO3i_9N6EPpQNXeMc3Ar1r", False, "Mark Zuckerberg"),
)


def _mapper(key: str, drive_id: str, no_fine: bool, text: str) -> ArtifactSpec:
    variant = "no_fine_mapper=True" if no_fine else "all three (coarse/medium/fine) mappers"
    return ArtifactSpec(
        name=f"mapper-{key}", kind="mapper", filename=f"mappers/{key}.pt", gdrive_id=drive_id,
        approx_size="~130 MB",
        description=(f"StyleCLIP latent mapper (LevelsMapper) for '{text}' ({variant}, per the "
                     "mapper_playground notebook meta_data); checkpoint {'state_dict': mapper.* + "
                     "decoder.* (FFHQ StyleGAN2 1024), 'opts'}"),
        license=f"MIT (StyleCLIP code); the embedded decoder: {_NV_NC}",
        citation=_CITE_STYLECLIP,
        reference=(f"{_STYLECLIP_UTILS}: 'mapper/pretrained/{key}.pt'; names/flags from "
                   "orpatashnik/StyleCLIP notebooks/mapper_playground.ipynb"),
        note=("Drive id confirmed; no sha256 published (recorded on first download). "
              "approx_size is derived from the parameter count (mapper + 1024px generator, fp32), "
              "not measured."),
        aliases=(key, f"mapper/{key}", f"mapper_{key}"),
        provides=("generator",),
    )


_SPECS: list[ArtifactSpec] = [
    ArtifactSpec(
        name="stylegan2-ffhq-config-f", kind="generator", filename="stylegan2-ffhq-config-f.pt",
        gdrive_id="1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT",
        description=("StyleGAN2 FFHQ config-f 1024x1024 generator converted to PyTorch by rosinality's "
                     "convert_weight.py (keys g, d, g_ema, latent_avg); the generator StyleCLIP, e4e "
                     "and pSp use"),
        license=f"{_NV_NC}; converter code: rosinality/stylegan2-pytorch (MIT)",
        citation=_CITE_STYLEGAN2,
        reference=(f"{_STYLECLIP_README} ('manually download from here'), {_STYLECLIP_UTILS}, "
                   "omertov/encoder4editing README.md (FFHQ StyleGAN)"),
        note="Drive id confirmed in three places; no sha256 published (recorded on first download).",
        aliases=("stylegan2-ffhq", "ffhq-generator", "stylegan2_ffhq_config_f"),
    ),
    _clip("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt",
          "the model StyleCLIP uses for all three methods",
          "openai/CLIP clip/clip.py _MODELS", approx="~0.3 GB"),
    _clip("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt",
          "ViT-B/16 image encoder",
          "openai/CLIP clip/clip.py _MODELS (later versions; the copy in the search index predates "
          "ViT-B/16, the URL was confirmed from several verbatim copies of that _MODELS table)"),
    _clip("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt",
          "ResNet-50 image encoder", "openai/CLIP clip/clip.py _MODELS"),
    ArtifactSpec(
        name="model_ir_se50", kind="arcface", filename="model_ir_se50.pth",
        gdrive_id="1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn", approx_size="~175 MB",
        description=("ArcFace IR-SE50 face-recognition backbone (plain state dict) used by the ID loss "
                     "of StyleCLIP mappers / e4e / pSp"),
        license="MIT (TreB1eN/InsightFace_Pytorch, where the weights come from)",
        citation=_CITE_ARCFACE,
        reference=(f"{_STYLECLIP_README} (mapper setup), omertov/encoder4editing README.md (IR-SE50 Model), "
                   "eladrich/pixel2style2pixel README.md"),
        note=("Drive id confirmed; no sha256 published (recorded on first download). approx_size derived "
              "from 43.8M float32 parameters."),
        aliases=("arcface", "ir_se50", "arcface-ir-se50", "model_ir_se50.pth"),
    ),
    ArtifactSpec(
        name="e4e_ffhq_encode", kind="e4e", filename="e4e_ffhq_encode.pt",
        gdrive_id="1cUv_reLE6k3604or78EranS7XzuVMWeO",
        mirrors=("gdrive:1O8OLrVNOItOJoNGMyQ8G8YRTeTYEfs0P",), approx_size="~1.2 GB",
        description=("e4e FFHQ inversion encoder (pSp framework; checkpoint {'state_dict': encoder.* + "
                     "decoder.*, 'opts', 'latent_avg'}) used to invert real faces for StyleCLIP"),
        license=f"MIT (encoder4editing); the embedded decoder: {_NV_NC}",
        citation=_CITE_E4E,
        reference=("omertov/encoder4editing README.md (FFHQ Inversion); mirror id from "
                   "orpatashnik/StyleCLIP notebooks/StyleCLIP_global_torch.ipynb (e4e setup cell)"),
        note=("Primary Drive id confirmed in the e4e README. The mirror is the id the StyleCLIP notebook "
              "downloads (its log shows 1.20GB); that it is byte-identical to the primary is not "
              "confirmed. No sha256 published (recorded on first download)."),
        aliases=("e4e", "e4e-ffhq", "e4e_ffhq_encode.pt"),
        provides=("generator",),
    ),
    *[_mapper(*m) for m in _MAPPERS],
    ArtifactSpec(
        name="ffhq-fs3", kind="fs3", filename="global_directions/ffhq/fs3.npy",
        url="https://raw.githubusercontent.com/orpatashnik/StyleCLIP/main/global_directions/npy/ffhq/fs3.npy",
        description=("StyleCLIP global directions: precomputed relevance matrix fs3 (CLIP-space direction "
                     "of every StyleSpace channel) for StyleGAN2 FFHQ config-f"),
        license="MIT (StyleCLIP)", citation=_CITE_STYLECLIP,
        reference=("orpatashnik/StyleCLIP README.md ('we precompute the results for StyleGAN2 on ffhq ... "
                   "we can skip the preprocess step'); global_directions/cog_predict.py loads "
                   "'./npy/ffhq/fs3.npy'"),
        note=("Hosted inside the StyleCLIP git repository (not LFS: .gitattributes only lists a deeplab "
              "file), at global_directions/npy/ffhq/fs3.npy; the raw.githubusercontent URL is built from "
              "that path on branch main and was not fetched live. No sha256 published (recorded on "
              "first download). Global directions also need the style statistics (S_mean_std), which "
              "StyleCLIP computes with GetCode.py; they are not part of this entry."),
        aliases=("fs3", "fs3-ffhq", "fs3.npy", "global-directions-ffhq"),
    ),
    ArtifactSpec(
        name="celeba-hq-test-latents", kind="latents", filename="latents/test_faces.pt",
        gdrive_id="1j7RIfmrCoisxx3t-r-KC02Qc8barBecr",
        description=("CelebA-HQ test set inverted by e4e: W+ latents [N, 18, 512] (the mapper's default "
                     "--latents_test_path test_faces.pt)"),
        license="CelebA / CelebA-HQ terms: non-commercial research use only", citation=_CITE_STYLECLIP,
        reference=f"{_STYLECLIP_README} (mapper setup: 'test set')",
        note="Drive id confirmed; no sha256 published (recorded on first download).",
        aliases=("test_faces", "test_faces.pt", "celeba-hq-test"),
    ),
    ArtifactSpec(
        name="celeba-hq-train-latents", kind="latents", filename="latents/train_faces.pt",
        gdrive_id="1gof8kYc_gDLUT4wQlmUdAtPnQIlCO26q",
        description=("CelebA-HQ train set inverted by e4e: W+ latents [N, 18, 512] (the mapper's default "
                     "--latents_train_path train_faces.pt)"),
        license="CelebA / CelebA-HQ terms: non-commercial research use only", citation=_CITE_STYLECLIP,
        reference=f"{_STYLECLIP_README} (mapper setup: 'train set')",
        note="Drive id confirmed; no sha256 published (recorded on first download).",
        aliases=("train_faces", "train_faces.pt", "celeba-hq-train"),
    ),
    ArtifactSpec(
        name="example-celebs", kind="latents", filename="latents/example_celebs.pt",
        gdrive_id="1VL3lP4avRhz75LxSza6jgDe-pHd2veQG",
        description="W+ latents of 6 celebrities used by StyleCLIP's mapper_playground notebook",
        license="MIT (StyleCLIP); source images are photos of public figures", citation=_CITE_STYLECLIP,
        reference=f"{_STYLECLIP_UTILS}: 'example_celebs.pt'",
        note="Drive id confirmed; no sha256 published (recorded on first download).",
        aliases=("example_celebs", "example_celebs.pt"),
    ),
]

#: name -> spec, in display order.  Tests and users may add or patch entries.
ARTIFACTS: dict[str, ArtifactSpec] = {s.name: s for s in _SPECS}
del _SPECS


def _norm(name: str) -> str:
    return re.sub(r"[\s_/]+", "-", str(name).strip().lower())


def _index() -> dict[str, ArtifactSpec]:
    idx: dict[str, ArtifactSpec] = {}
    for spec in ARTIFACTS.values():  # exact names first, then aliases, then file names
        idx.setdefault(_norm(spec.name), spec)
    for spec in ARTIFACTS.values():
        for a in spec.aliases:
            idx.setdefault(_norm(a), spec)
    for spec in ARTIFACTS.values():
        idx.setdefault(_norm(Path(spec.filename).name), spec)
    return idx


def _lookup(name: str) -> ArtifactSpec | None:
    if name in ARTIFACTS:
        return ARTIFACTS[name]
    return _index().get(_norm(name))


def _close_names(name: str, kind: str | None = None, n: int = 6) -> list[str]:
    specs = [s for s in ARTIFACTS.values() if kind is None or s.kind == kind or kind in s.provides]
    keys: dict[str, str] = {}
    for s in specs:
        for k in (s.name, *s.aliases):
            keys.setdefault(_norm(k), s.name)
    out: list[str] = []
    for m in difflib.get_close_matches(_norm(name), list(keys), n=n * 3, cutoff=0.5):
        if keys[m] not in out:
            out.append(keys[m])
    q = _norm(name)
    if len(q) >= 3:  # substring matches ("ffhq", "clip", "hair")
        for k, canon in keys.items():
            if q in k and canon not in out:
                out.append(canon)
    return out[:n]


def _unknown(name: str, kind: str | None = None) -> UnknownArtifactError:
    close = _close_names(name, kind)
    where = f" of kind {kind!r}" if kind else ""
    if close:
        hint = "close registry names: " + ", ".join(close)
    else:
        pool = [s.name for s in ARTIFACTS.values() if kind is None or s.kind == kind]
        hint = "known names: " + ", ".join(pool) if pool else "the registry has no such kind"
    return UnknownArtifactError(
        f"{str(name)!r} is neither an existing file nor a known pretrained name{where}; {hint}. "
        "Run `python -m styleclip_lib list` for the full registry.")


def _spec(name_or_spec: str | ArtifactSpec) -> ArtifactSpec:
    if isinstance(name_or_spec, ArtifactSpec):
        return name_or_spec
    spec = _lookup(str(name_or_spec))
    if spec is None:
        raise _unknown(str(name_or_spec))
    return spec


def list_artifacts(kind: str | None = None) -> list[ArtifactSpec]:
    """All registry entries (optionally only one kind, including files that also provide it)."""
    return [s for s in ARTIFACTS.values() if kind is None or s.kind == kind or kind in s.provides]


def info(name: str | ArtifactSpec) -> ArtifactSpec:
    """The :class:`ArtifactSpec` of a registry name or alias (raises :class:`UnknownArtifactError`)."""
    return _spec(name)


# --------------------------------------------------------------------------- cache


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir`` > ``$STYLECLIP_HOME`` > ``<repo>/pretrained`` > ``~/.cache/styleclip_lib``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("STYLECLIP_HOME")
    if env:
        return Path(env).expanduser()
    if _REPO_PRETRAINED.is_dir():
        return _REPO_PRETRAINED
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "styleclip_lib"


def path_for(name: str | ArtifactSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the artifact is (or will be) cached; does not download."""
    return get_cache_dir(cache_dir) / _spec(name).filename


def is_cached(name: str | ArtifactSpec, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the artifact's file is present in the cache (not re-verified)."""
    return path_for(name, cache_dir).is_file()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _part_src(target: Path) -> Path:
    return target.with_name(target.name + ".part.src")


def _offline() -> bool:
    return os.environ.get("STYLECLIP_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    digest = h.hexdigest()
    _HASH_MEMO[key] = digest
    return digest


def _read_sidecar(target: Path) -> str | None:
    try:
        text = _sidecar(target).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    return m.group(1).lower() if m else None


def _write_sidecar(target: Path, digest: str) -> None:
    """Record ``<sha256>  <name>`` (``sha256sum -c`` format) next to the file; best effort."""
    side = _sidecar(target)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{digest}  {target.name}\n", encoding="utf-8")
        os.replace(tmp, side)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _verify_cached(spec: ArtifactSpec, target: Path, *, full: bool = False) -> Path:
    """Check a cached file against the published / recorded sha256; returns ``target``."""
    if not target.is_file():
        raise DownloadError(f"{target} exists but is not a regular file; remove it and fetch {spec.name} again")
    st = target.stat()
    if spec.size is not None and st.st_size != spec.size:
        raise ChecksumError(
            f"cached file {target} for {spec.name} has {st.st_size} bytes, expected {spec.size}. "
            f"Delete it and run `python -m styleclip_lib fetch {spec.name} --force`.",
            name=spec.name, path=target, expected=f"{spec.size} bytes", actual=f"{st.st_size} bytes")
    expected = spec.sha256.lower() if spec.sha256 else None
    recorded = _read_sidecar(target)
    if not full and recorded and (expected is None or recorded == expected):
        with contextlib.suppress(OSError):
            if _sidecar(target).stat().st_mtime_ns >= st.st_mtime_ns:
                return target  # verified when it was written; unchanged since
    actual = _sha256_file(target)
    want = expected or recorded
    if want and actual != want:
        if expected:
            why = f"expected the published sha256 {expected}"
            fix = (f"Delete it and run `python -m styleclip_lib fetch {spec.name} --force`, or place "
                   f"the correct file there.")
        else:
            why = f"expected the sha256 recorded when it was first fetched ({_sidecar(target)}): {recorded}"
            fix = (f"If you replaced the file on purpose, delete {_sidecar(target)}; otherwise run "
                   f"`python -m styleclip_lib fetch {spec.name} --force`.")
        raise ChecksumError(f"checksum mismatch for {spec.name}: {why}, got {actual} (file: {target}). {fix}",
                            name=spec.name, path=target, expected=want, actual=actual)
    _write_sidecar(target, actual)
    return target


def verify(name: str | ArtifactSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fully re-hash a cached artifact and check it; raises if missing or corrupt."""
    spec = _spec(name)
    target = path_for(spec, cache_dir)
    if not target.exists():
        raise DownloadError(f"{spec.name} is not cached (expected at {target})")
    return _verify_cached(spec, target, full=True)


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def _file_lock(root: Path, spec: ArtifactSpec, progress: bool) -> Iterator[None]:
    """Exclusive inter-process lock for one cached file (``<cache>/.locks/<file>.lock``)."""
    target = root / spec.filename
    lock_dir = root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lock_dir / (spec.filename.replace("/", "__").replace(os.sep, "__") + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if progress:
                    print(f"waiting for another process to finish downloading {target.name} ...",
                          file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            try:
                import msvcrt
            except ImportError:  # neither: no locking, os.replace still keeps the file consistent
                yield
                return
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(0.2)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- HTTP


class _NullBar:
    def __init__(self, *a, **k):
        pass

    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except Exception:  # tqdm missing or broken: no bar
        return _NullBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=True, dynamic_ncols=True)


def _opener() -> urllib.request.OpenerDirector:
    import http.cookiejar

    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _looks_like_html(content_type: str | None, head: bytes) -> bool:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        return True
    s = head[:1024].lstrip().lower()
    return s.startswith(b"<!doctype html") or s.startswith(b"<html")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100)."""
    if not value:
        return None, None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", value)
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) and m.group(3) != "*" else None
    return start, end, total


def _hash_prefix(part: Path) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h


def _download_url(url: str, part: Path, *, spec: ArtifactSpec, progress: bool, timeout: float,
                  opener: urllib.request.OpenerDirector) -> str:
    """Download ``url`` into ``part`` (resuming it when possible); return the complete file's sha256.

    Raises urllib errors / TimeoutError for connection-level failures, :class:`_HtmlPage`
    when an HTML page arrives instead of the file, :class:`_Incomplete` when the
    transfer stops early (``part`` is kept for a later resume).
    """
    for _attempt in range(3):
        existing = part.stat().st_size if part.exists() else 0
        if spec.size is not None and existing > spec.size:
            part.unlink()
            existing = 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if existing:
            headers["Range"] = f"bytes={existing}-"
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and existing:
                _, _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
                e.close()
                if total == existing or (total is None and spec.size == existing):
                    return _hash_prefix(part).hexdigest()  # the partial file was already complete
                part.unlink()  # the .part is longer than the file: start over
                continue
            raise
        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            clen = resp.headers.get("Content-Length")
            clen_i = int(clen) if clen and clen.strip().isdigit() else None
            mode, offset, total = "wb", 0, clen_i
            if existing and status == 206:
                start, _end, full = _parse_content_range(resp.headers.get("Content-Range"))
                if start != existing:  # a range we did not ask for: start over
                    part.unlink()
                    continue
                mode, offset = "ab", existing
                total = full if full is not None else (existing + clen_i if clen_i is not None else None)
            elif status == 206:  # partial content without asking: unusable
                raise _Failed(f"the server sent 206 Partial Content to a plain request ({url})")
            first = resp.read(min(_CHUNK, 64 * 1024))
            if _looks_like_html(resp.headers.get("Content-Type"), first):
                body = first + resp.read(_HTML_SNIFF_LIMIT)
                raise _HtmlPage(url, body.decode("utf-8", "replace"), status)
            if existing and mode == "wb" and progress:
                print(f"{spec.name}: the server ignored the resume request (HTTP {status}); "
                      "restarting the download from the beginning", file=sys.stderr)
            h = _hash_prefix(part) if mode == "ab" else hashlib.sha256()
            got = 0
            bar = _progress_bar(total, offset, Path(spec.filename).name, progress)
            try:
                with open(part, mode) as f:
                    chunk = first
                    try:
                        while chunk:
                            f.write(chunk)
                            h.update(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                            chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        f.flush()
                        raise _Incomplete(
                            f"transfer interrupted after {offset + got} bytes: {e.__class__.__name__}: {e}"
                        ) from e
                    f.flush()
                    with contextlib.suppress(OSError):
                        os.fsync(f.fileno())
            finally:
                bar.close()
            size = offset + got
            if total is not None and size != total:
                raise _Incomplete(f"transfer incomplete: received {size} of {total} bytes")
            if size == 0:
                raise _Incomplete("the server sent an empty file")
            return h.hexdigest()
    raise _Incomplete(f"the server kept answering resume requests with unusable ranges ({url})")


_FORM_RE = re.compile(r"<form[^>]*id=\"download-form\"[^>]*>(.*?)</form>", re.S | re.I)
_ACTION_RE = re.compile(r"action=\"([^\"]+)\"", re.I)
_INPUT_RE = re.compile(r"<input[^>]*type=\"hidden\"[^>]*>", re.I)
_NAME_RE = re.compile(r"name=\"([^\"]+)\"", re.I)
_VALUE_RE = re.compile(r"value=\"([^\"]*)\"", re.I)
_HREF_CONFIRM_RE = re.compile(r"href=\"(/uc\?export=download[^\"]*confirm=[^\"]+)\"", re.I)


def _gdrive_url(file_id: str) -> str:
    q = urllib.parse.urlencode({"id": file_id, "export": "download", "confirm": "t"})
    return f"{GDRIVE_ENDPOINT}?{q}"


def _gdrive_confirm_url(page: str, base_url: str) -> str | None:
    """The download URL behind Drive's "can't scan for viruses" confirmation page, if any."""
    m = re.search(r"<form[^>]*id=\"download-form\"[^>]*>", page, re.I)
    if m:
        form_tag = m.group(0)
        fm = _FORM_RE.search(page)
        inner = fm.group(1) if fm else page[m.end():]
        am = _ACTION_RE.search(form_tag)
        action = html.unescape(am.group(1)) if am else base_url.split("?")[0]
        params = {}
        for tag in _INPUT_RE.findall(inner):
            n, v = _NAME_RE.search(tag), _VALUE_RE.search(tag)
            if n:
                params[html.unescape(n.group(1))] = html.unescape(v.group(1)) if v else ""
        if params:
            return urllib.parse.urljoin(base_url, action) + "?" + urllib.parse.urlencode(params)
    m = _HREF_CONFIRM_RE.search(page)
    if m:
        return urllib.parse.urljoin("https://drive.google.com/", html.unescape(m.group(1)))
    return None


def _diagnose_html(page: str, drive: bool) -> str:
    low = page.lower()
    if "quota" in low or "too many users have viewed or downloaded" in low:
        return ("Google Drive refused to serve the file: its download quota is exceeded (too many "
                "downloads in the last 24 hours); try again later or download it in a browser while signed in")
    if "virus" in low:
        return "Google Drive's virus-scan confirmation page came back and could not be bypassed"
    if ("you need access" in low or "request access" in low or "accounts.google.com" in low
            or "permission" in low or "sign in" in low):
        return "permission denied: the file is not public or needs a sign-in (an HTML login/access page came back)"
    m = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
    title = f" (page title: {html.unescape(m.group(1)).strip()[:80]!r})" if m else ""
    who = "Google Drive" if drive else "the server"
    return f"{who} returned an HTML page instead of the file{title}"


def _try_gdown(file_id: str, part: Path, progress: bool) -> bool:
    """Optional fallback through ``gdown`` (the ``[download]`` extra) when it is installed."""
    if os.environ.get("STYLECLIP_NO_GDOWN"):
        return False
    try:
        import gdown  # type: ignore[import-not-found]
    except Exception:
        return False
    tmp = part.with_name(part.name + ".gdown")
    try:
        out = gdown.download(id=file_id, output=str(tmp), quiet=not progress)
    except Exception:
        out = None
    if not out or not tmp.is_file() or tmp.stat().st_size == 0:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    with open(tmp, "rb") as f:
        head = f.read(1024)
    if _looks_like_html(None, head):
        tmp.unlink()
        return False
    os.replace(tmp, part)
    return True


def _download_source(source: str, part: Path, *, spec: ArtifactSpec, progress: bool, timeout: float) -> str:
    opener = _opener()
    if not source.startswith("gdrive:"):
        try:
            return _download_url(source, part, spec=spec, progress=progress, timeout=timeout, opener=opener)
        except _HtmlPage as page:
            raise _Failed(_diagnose_html(page.text, drive=False)) from None
    file_id = source[len("gdrive:"):]
    url = _gdrive_url(file_id)
    page: _HtmlPage | None = None
    for _ in range(2):
        try:
            return _download_url(url, part, spec=spec, progress=progress, timeout=timeout, opener=opener)
        except _HtmlPage as p:
            page = p
            nxt = _gdrive_confirm_url(p.text, p.url)
            if not nxt or nxt == url:
                break
            url = nxt
    assert page is not None
    if _try_gdown(file_id, part, progress):
        return _hash_prefix(part).hexdigest()
    raise _Failed(_diagnose_html(page.text, drive=True))


class _Failed(Exception):
    """Internal: a source failed before any data was written (reason in args[0])."""


def _reason(exc: BaseException, source: str) -> str:
    manual = _manual_url(source)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason} from {manual}"
    if isinstance(exc, urllib.error.URLError):
        r = exc.reason
        if isinstance(r, (socket.timeout, TimeoutError)):
            return f"timed out connecting to {urllib.parse.urlsplit(manual).netloc}"
        if isinstance(r, socket.gaierror):
            return f"cannot resolve {urllib.parse.urlsplit(manual).netloc} (offline? DNS failure: {r})"
        return f"network error: {r}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out waiting for the server"
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return f"connection failed: {exc.__class__.__name__}: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.__class__.__name__}: {exc}"
    return str(exc)


def _manual_hint(spec: ArtifactSpec, target: Path) -> str:
    urls = [_manual_url(s) for s in spec.sources()]
    where = " or ".join(urls) if urls else "its original source (see `python -m styleclip_lib info NAME`)"
    return (f"Download it manually from {where} and save it as {target}, or set STYLECLIP_HOME "
            f"to a folder that already contains {spec.filename}.")


def fetch(name: str | ArtifactSpec, *, force: bool = False, progress: bool = True,
          cache_dir: str | os.PathLike | None = None, timeout: float = 30) -> Path:
    """Make sure the artifact is in the cache and return its path.

    Already-cached files are verified (cheaply, see the module docstring) and
    returned without touching the network.  Otherwise the file is downloaded
    into ``<file>.part`` (resuming an existing one with an HTTP Range request),
    checked against the published sha256 (:class:`ChecksumError` on mismatch;
    the bad data is deleted), and moved into place atomically.  ``force``
    discards the cached file and any partial download first.  Concurrent
    fetches of the same file (threads or processes) wait on a file lock.

    Raises :class:`DownloadError` (offline, HTTP error, HTML page instead of
    the file, interrupted transfer...) with the manual-download URL and the
    exact target path in the message.
    """
    spec = _spec(name)
    target = path_for(spec, cache_dir)
    if not force and target.exists():
        return _verify_cached(spec, target)
    if _offline():
        state = "--force was given" if force and target.exists() else "it is not cached"
        raise DownloadError(
            f"could not download {spec.name} (STYLECLIP_OFFLINE is set and {state}). "
            + _manual_hint(spec, target) + " Or unset STYLECLIP_OFFLINE.")
    sources = spec.sources()
    if not sources:
        raise DownloadError(f"could not download {spec.name} (no download source is known). "
                            f"Place the file at {target}, or set STYLECLIP_HOME.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(get_cache_dir(cache_dir), spec, progress)
        lock.__enter__()
    except OSError as e:
        raise DownloadError(f"could not download {spec.name} (cannot write to {target.parent}: {e}). "
                            "Set STYLECLIP_HOME to a writable folder.") from None
    try:
        if not force and target.exists():  # another process finished meanwhile
            return _verify_cached(spec, target)
        part, src_file = _part(target), _part_src(target)
        if force:
            for p in (target, _sidecar(target), part, src_file):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        failures: list[str] = []
        for source in sources:
            if part.exists():
                prev = src_file.read_text(encoding="utf-8").strip() if src_file.exists() else None
                if prev is not None and prev != source:
                    part.unlink()  # bytes from another source cannot be resumed from this one
            try:
                src_file.write_text(source + "\n", encoding="utf-8")
            except OSError:
                pass
            if progress:
                print(f"downloading {spec.name} from {_manual_url(source)}\n  -> {target}", file=sys.stderr)
            try:
                digest = _download_source(source, part, spec=spec, progress=progress, timeout=timeout)
            except _Incomplete as e:
                raise DownloadError(
                    f"could not download {spec.name} ({e}). The partial download is kept at {part}; "
                    f"run the same command again to resume. " + _manual_hint(spec, target)) from None
            except _Failed as e:
                failures.append(str(e.args[0]))
                continue
            except (OSError, http.client.HTTPException, ValueError) as e:
                failures.append(_reason(e, source))
                continue
            return _finish(spec, target, part, src_file, digest)
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        if not part.exists():
            with contextlib.suppress(FileNotFoundError):
                src_file.unlink()
            if target.parent != get_cache_dir(cache_dir):
                with contextlib.suppress(OSError):
                    target.parent.rmdir()  # only succeeds when empty: no clutter after a failure
        raise DownloadError(f"could not download {spec.name} ({'; '.join(failures)}). "
                            + _manual_hint(spec, target))
    finally:
        lock.__exit__(None, None, None)


def _finish(spec: ArtifactSpec, target: Path, part: Path, src_file: Path, digest: str) -> Path:
    size = part.stat().st_size
    problem = None
    if spec.sha256 and digest != spec.sha256.lower():
        problem = (f"checksum mismatch for {spec.name}: expected sha256 {spec.sha256.lower()}, got {digest} "
                   f"(file: {target})", spec.sha256.lower(), digest)
    elif spec.size is not None and size != spec.size:
        problem = (f"size mismatch for {spec.name}: expected {spec.size} bytes, got {size} (file: {target})",
                   f"{spec.size} bytes", f"{size} bytes")
    if problem:
        for p in (part, src_file):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        msg, exp, act = problem
        raise ChecksumError(msg + ". The corrupt download was deleted; run the command again. If it "
                            "keeps happening the upstream file changed or the transfer is being altered. "
                            + _manual_hint(spec, target), name=spec.name, path=target,
                            expected=exp, actual=act)
    os.replace(part, target)
    with contextlib.suppress(FileNotFoundError):
        src_file.unlink()
    st = target.stat()
    _HASH_MEMO[(str(target.resolve()), st.st_size, st.st_mtime_ns)] = digest
    _write_sidecar(target, digest)
    return target


# --------------------------------------------------------------------------- resolve


def _resolve_toy(name: str, kind: str | None = None) -> Path:
    """Names starting with ``toy`` belong to the (future) bundled toy world."""
    try:
        toy = importlib.import_module("styleclip_lib.toy")
    except ModuleNotFoundError as e:
        if e.name not in ("styleclip_lib.toy", "styleclip_lib"):
            raise
        toy = None
    fn = getattr(toy, "weights_path", None)
    if fn is None:
        raise UnknownArtifactError(
            f"{name!r} is a reserved toy-model name, but the toy world is not available in this "
            "installation (styleclip_lib.toy.weights_path is missing)")
    return Path(fn(name, kind))


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or (os.altsep or "/") in s or s.startswith((".", "~"))
            or Path(s).suffix.lower() in {".pt", ".pth", ".pkl", ".npy", ".npz", ".bin", ".ckpt", ".safetensors"})


def resolve(name_or_path: str | os.PathLike | ArtifactSpec, kind: str | None = None) -> Path:
    """A usable local file for ``name_or_path``.

    * an existing file path is returned as is (``~`` is expanded);
    * a registry name or alias (case-insensitive; ``_``, ``/`` and ``-`` are
      interchangeable) returns the cached file, fetched first if missing;
    * names starting with ``toy`` are delegated to ``styleclip_lib.toy.weights_path``;
    * anything else raises :class:`UnknownArtifactError` (a ``FileNotFoundError``)
      listing close registry names.

    ``kind`` (e.g. ``"generator"``) rejects registry entries of another kind,
    except files that also provide it (e4e and mapper checkpoints embed a generator).
    """
    if isinstance(name_or_path, ArtifactSpec):
        return fetch(name_or_path)
    raw = os.fspath(name_or_path)
    p = Path(raw).expanduser()
    if p.exists():
        return p
    if raw.lower().startswith("toy") and not _looks_like_path(raw):
        return _resolve_toy(raw, kind)
    spec = _lookup(raw)
    if spec is None:
        has_dir = os.sep in raw or (os.altsep and os.altsep in raw)
        if has_dir and _lookup(Path(raw).name) is None:
            close = _close_names(Path(raw).stem, kind)
            extra = f"; close registry names: {', '.join(close)}" if close else ""
            raise UnknownArtifactError(f"no such file: {raw!r} (and it is not a pretrained name){extra}")
        if has_dir:
            raise UnknownArtifactError(
                f"no such file: {raw!r}. Its file name matches the registry entry "
                f"{_lookup(Path(raw).name).name!r}: pass that name to download it into the cache.")
        raise _unknown(raw, kind)
    if kind is not None and kind != spec.kind and kind not in spec.provides:
        raise KindMismatchError(
            f"{raw!r} is a {spec.kind} artifact ({spec.name}), not a {kind}; names of kind {kind!r}: "
            + ", ".join(s.name for s in list_artifacts(kind)))
    return fetch(spec)


# --------------------------------------------------------------------------- CLI


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cache_state(spec: ArtifactSpec, cache_dir) -> tuple[str, str]:
    target = path_for(spec, cache_dir)
    if target.is_file():
        return "yes", _fmt_size(target.stat().st_size)
    part = _part(target)
    if part.is_file():
        return "partial", _fmt_size(part.stat().st_size) + " so far"
    if spec.size is not None:
        return "no", _fmt_size(spec.size)
    return "no", spec.approx_size or "?"


def _cmd_list(args) -> int:
    specs = list_artifacts(args.kind)
    root = get_cache_dir(args.cache_dir)
    print(f"cache: {root}")
    rows = [("NAME", "KIND", "CACHED", "SIZE", "SOURCE")]
    for s in specs:
        cached, size = _cache_state(s, args.cache_dir)
        src = s.sources()[0] if s.sources() else "-"
        rows.append((s.name, s.kind, cached, size, "gdrive" if src.startswith("gdrive:") else
                     urllib.parse.urlsplit(src).netloc or src))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _cmd_fetch(args) -> int:
    rc = 0
    for name in args.names:
        try:
            path = fetch(name, force=args.force, progress=not args.quiet, cache_dir=args.cache_dir,
                         timeout=args.timeout)
        except UnknownArtifactError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = max(rc, 2)
            continue
        except PretrainedError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = max(rc, 1)
            continue
        print(path)
    return rc


def _cmd_path(args) -> int:
    spec = _spec(args.name)
    target = path_for(spec, args.cache_dir)
    print(target)
    if not target.is_file():
        print(f"note: {spec.name} is not cached yet; run `python -m styleclip_lib fetch {spec.name}`",
              file=sys.stderr)
        return 1
    return 0


def _cmd_info(args) -> int:
    spec = _spec(args.name)
    target = path_for(spec, args.cache_dir)
    d = spec.as_dict()
    d["path"] = str(target)
    d["cached"] = target.is_file()
    for k in ("name", "kind", "description", "sources", "manual_url", "filename", "path", "cached",
              "sha256", "size", "approx_size", "license", "citation", "reference", "note", "aliases",
              "provides"):
        v = d.get(k)
        if isinstance(v, (list, tuple)):
            v = ", ".join(v) if v else "-"
        print(f"{k:12s} {v if v not in (None, '') else '-'}")
    return 0


def _cmd_verify(args) -> int:
    rc = 0
    for name in args.names:
        try:
            path = verify(name, cache_dir=args.cache_dir)
        except PretrainedError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"ok {path}")
    return rc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m styleclip_lib",
        description="Manage StyleCLIP's pretrained artifacts (cache: $STYLECLIP_HOME, <repo>/pretrained "
                    "or ~/.cache/styleclip_lib; STYLECLIP_OFFLINE=1 forbids network access).")
    sub = p.add_subparsers(dest="cmd", metavar="{fetch,list,path,info,verify}")

    def common(sp):
        sp.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="cache folder (default: $STYLECLIP_HOME, <repo>/pretrained or ~/.cache/styleclip_lib)")

    sp = sub.add_parser("fetch", help="download artifacts into the cache (exit 0 ok, 1 failed, 2 unknown name)")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("--force", action="store_true", help="re-download even if cached")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar or status lines")
    sp.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default 30)")
    common(sp)
    sp.set_defaults(func=_cmd_fetch)

    sp = sub.add_parser("list", help="table of artifacts: name, kind, cached?, size")
    sp.add_argument("--kind", choices=KINDS, default=None)
    common(sp)
    sp.set_defaults(func=_cmd_list)

    sp = sub.add_parser("path", help="print the cache path of NAME (exit 1 if not cached yet)")
    sp.add_argument("name", metavar="NAME")
    common(sp)
    sp.set_defaults(func=_cmd_path)

    sp = sub.add_parser("info", help="show everything the registry knows about NAME")
    sp.add_argument("name", metavar="NAME")
    common(sp)
    sp.set_defaults(func=_cmd_info)

    sp = sub.add_parser("verify", help="re-hash cached artifacts and check them")
    sp.add_argument("names", nargs="+", metavar="NAME")
    common(sp)
    sp.set_defaults(func=_cmd_verify)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    """CLI: ``fetch NAME [NAME...] [--force] [--cache-dir DIR]``, ``list``, ``path NAME``, ``info``, ``verify``.

    ``argv`` starts with the subcommand (``main(['fetch', 'ViT-B/32'])``).  Returns
    the exit code; errors go to stderr without a traceback.
    """
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "cmd", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except UnknownArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PretrainedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a partial download is kept and resumes next time)", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
