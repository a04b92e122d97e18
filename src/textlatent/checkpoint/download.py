"""Fetch checkpoint directories and files from ``gs://`` (anonymous), ``hf://`` or the local disk, once.

Remote trees are cached under ``$TEXTLATENT_CACHE`` (default ``~/.cache/textlatent``), mirroring the URL. A tree is
marked complete only after every file arrived, so an interrupted download resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import urllib.error
import urllib.parse
import urllib.request

from tqdm.auto import tqdm

CACHE_ENV = "TEXTLATENT_CACHE"
_COMPLETE_MARK = ".textlatent-complete"
_GCS_API = "https://storage.googleapis.com/storage/v1/b/{bucket}/o"
_GCS_MEDIA = "https://storage.googleapis.com/{bucket}/{name}"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV, "~/.cache/textlatent")).expanduser()


def resolve(location: str | os.PathLike, *, force: bool = False) -> pathlib.Path:
    """Local path of ``location`` (a local path, ``gs://bucket/path`` or ``hf://owner/repo[/path][@revision]``),
    downloading it into the cache first if it is remote. Works for a single file or a whole directory."""
    text = os.fspath(location)
    if text.startswith("gs://"):
        return _resolve_gcs(text, force=force)
    if text.startswith("hf://"):
        return _resolve_hf(text, force=force)
    if "://" in text:
        raise ValueError(f"unsupported location {text!r}: use a local path, gs://bucket/path or hf://owner/repo/path")
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give a local path, gs://… or hf://…)")
    return path


def _resolve_gcs(url: str, *, force: bool) -> pathlib.Path:
    bucket, _, prefix = url[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket; expected gs://bucket/path")
    local = cache_dir() / "gs" / bucket / prefix
    if _is_complete(local) and not force:
        return local
    objects = _gcs_list(bucket, prefix)
    if not objects:
        raise FileNotFoundError(f"nothing found at {url} (anonymous access); check the path")
    if len(objects) == 1 and objects[0][0] == prefix:  # a single file
        _download_files(
            bucket, [(prefix, objects[0][1])], local.parent, strip=str(pathlib.PurePosixPath(prefix).parent)
        )
        return local
    files = [(name, size) for name, size in objects if not name.endswith("/")]
    _download_files(bucket, files, local, strip=prefix)
    _mark_complete(local)
    return local


def _gcs_list(bucket: str, prefix: str) -> list[tuple[str, int]]:
    out, token = [], None
    for query_prefix in (prefix, prefix + "/"):
        out, token = [], None
        while True:
            query = {"prefix": query_prefix, "fields": "items(name,size),nextPageToken"}
            if token:
                query["pageToken"] = token
            url = _GCS_API.format(bucket=bucket) + "?" + urllib.parse.urlencode(query)
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    page = json.load(resp)
            except urllib.error.HTTPError as e:
                raise PermissionError(f"listing gs://{bucket}/{prefix} failed ({e.code} {e.reason})") from e
            out += [(item["name"], int(item["size"])) for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                break
        exact = [o for o in out if o[0] == prefix]
        if exact:
            return exact
        inside = [o for o in out if o[0].startswith(prefix + "/")]
        if inside:
            return inside
    return []


def _download_files(bucket: str, files: list[tuple[str, int]], root: pathlib.Path, *, strip: str) -> None:
    todo = []
    for name, size in files:
        rel = name[len(strip) :].lstrip("/") if strip and strip != "." else name
        target = root / rel
        if not (target.exists() and target.stat().st_size == size):
            todo.append((name, size, target))
    if not todo:
        return
    total = sum(size for _, size, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"gs://{bucket}/{strip}") as bar:

        def fetch(item):
            name, _, target = item
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            url = _GCS_MEDIA.format(bucket=bucket, name=urllib.parse.quote(name))
            with urllib.request.urlopen(url, timeout=300) as resp, open(partial, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
            partial.replace(target)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for future in concurrent.futures.as_completed([pool.submit(fetch, item) for item in todo]):
                future.result()


def _resolve_hf(url: str, *, force: bool) -> pathlib.Path:
    spec = url[len("hf://") :]
    revision = None
    if "@" in spec:
        spec, revision = spec.rsplit("@", 1)
    parts = spec.strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("datasets", "spaces"):
        repo_type = parts.pop(0)[:-1]
    if len(parts) < 2:
        raise ValueError(f"{url!r}: expected hf://owner/repo[/path][@revision] or hf://datasets/owner/repo[/path]")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    local = cache_dir() / "hf" / repo_type / repo_id / (revision or "main")
    target = local / sub if sub else local
    if _is_complete(target) and not force:
        return target

    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id,
        repo_type=repo_type,
        revision=revision,
        local_dir=local,
        allow_patterns=[sub, f"{sub}/**"] if sub else None,
        force_download=force,
    )
    if not target.exists():
        raise FileNotFoundError(f"{url}: {sub!r} not found in {repo_type} {repo_id}")
    if target.is_dir():
        _mark_complete(target)
    return target


def _is_complete(path: pathlib.Path) -> bool:
    return (path / _COMPLETE_MARK).exists() or (path.is_file())


def _mark_complete(path: pathlib.Path) -> None:
    (path / _COMPLETE_MARK).write_text("ok\n")
