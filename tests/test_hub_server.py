"""huggingface_hub's real client against the stdlib FakeHub server (no network needed)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import fixtures_hub  # noqa: E402
import httpx2  # noqa: E402
import pytest  # noqa: E402
from hub_server import FakeHub, git_blob_sha  # noqa: E402
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TOKEN = fixtures_hub.FAKE_HUB_TOKEN
REPO = "lune-test/adapter"
README = b"---\nlicense: apache-2.0\nbase_model: tiny/base\ntags:\n- lune\n- unlearning\n---\n\n# Adapter\n"
WEIGHTS = bytes(range(256)) * 4 + b"\x00\xff\x00"

fake_hub = fixtures_hub.fake_hub
hub_no_retry_sleep = fixtures_hub.hub_no_retry_sleep


@pytest.fixture
def hub(fake_hub: FakeHub) -> Iterator[FakeHub]:
    """The shared `fake_hub` fixture, plus a check that the server itself never crashed."""
    yield fake_hub
    assert fake_hub.server_errors == []


@pytest.fixture(params=[False, True], ids=["create_commit", "xet_pipeline"])
def upload_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run upload tests on both client paths: with hf_xet installed `upload_folder` uses a pipelined
    uploader (PRs via /discussions, commits retried on 5xx/network errors); without it, plain `create_commit`."""
    use_xet = request.param
    if use_xet:
        pytest.importorskip("hf_xet")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not use_xet)
    return "xet_pipeline" if use_xet else "create_commit"


@pytest.fixture
def api(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


def _make_folder(root: Path, weights: bytes = WEIGHTS, extra: dict[str, bytes] | None = None) -> Path:
    folder = root / "adapter"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_bytes(README)
    (folder / "adapter_config.json").write_bytes(b'{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "sub" / "notes.txt").write_bytes(b"nested")
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


def test_create_repo_public_private_exist_ok(hub: FakeHub, api: HfApi) -> None:
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.startswith(hub.endpoint)
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_repo(REPO)
    assert exc_info.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO

    api.create_repo("lune-test/secret", private=True)
    assert hub.repo("lune-test/secret").private and not hub.repo(REPO).private
    assert api.model_info("lune-test/secret").private is True
    assert set(hub.files(REPO)) == {".gitattributes"}  # like the Hub: "initial commit"
    assert api.repo_exists(REPO) and not api.repo_exists("lune-test/nope")
    assert HfApi(endpoint=hub.endpoint).whoami(token=TOKEN)["name"] == "fake-user"


def test_upload_two_commits_then_download(hub: FakeHub, api: HfApi, tmp_path: Path, upload_path: str) -> None:
    api.create_repo(REPO)
    folder = _make_folder(tmp_path)
    first = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="first upload")
    assert first.oid == hub.repo(REPO).refs["main"]
    assert first.commit_url == f"{hub.endpoint}/{REPO}/commit/{first.oid}"
    expected = {
        "README.md": README,
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": WEIGHTS,
        "sub/notes.txt": b"nested",
    }
    assert {k: v for k, v in hub.files(REPO).items() if k != ".gitattributes"} == expected
    validations = hub.requests_of("validate")  # README front matter is validated (once or twice) before uploading
    assert validations and all(b"license: apache-2.0" in r.body for r in validations)

    new_weights = WEIGHTS[::-1]
    second = api.upload_folder(repo_id=REPO, folder_path=_make_folder(tmp_path, weights=new_weights))
    assert second.oid != first.oid
    history = hub.commits(REPO)
    assert [c.title for c in history] == ["initial commit", "first upload", "Upload folder using huggingface_hub"]
    assert hub.files(REPO)["adapter_model.safetensors"] == new_weights
    assert hub.files(REPO, revision=first.oid)["adapter_model.safetensors"] == WEIGHTS
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == [c.sha for c in reversed(history)]

    cache = tmp_path / "cache"
    path = hf_hub_download(REPO, "adapter_model.safetensors", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache)
    assert Path(path).read_bytes() == new_weights
    old = hf_hub_download(
        REPO, "adapter_model.safetensors", revision=first.oid, endpoint=hub.endpoint, token=TOKEN, cache_dir=cache
    )
    assert Path(old).read_bytes() == WEIGHTS
    snap = Path(snapshot_download(REPO, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "cache2"))
    assert (snap / "sub" / "notes.txt").read_bytes() == b"nested"
    assert (snap / "README.md").read_bytes() == README
    assert api.file_exists(REPO, "sub/notes.txt") and not api.file_exists(REPO, "missing.bin")

    for request in hub.requests:  # the token travels only in the Authorization header
        assert TOKEN not in request.path
        assert request.authorization in (None, f"Bearer {TOKEN}")


def test_create_pr_leaves_main_unchanged(hub: FakeHub, api: HfApi, tmp_path: Path, upload_path: str) -> None:
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=_make_folder(tmp_path))
    main_before = hub.files(REPO)
    folder = _make_folder(tmp_path, extra={"proposal.txt": b"please merge"})
    info = api.upload_folder(repo_id=REPO, folder_path=folder, create_pr=True, commit_message="Proposal")
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert info.pr_url == f"{hub.endpoint}/{REPO}/discussions/1"
    assert hub.files(REPO) == main_before
    assert hub.files(REPO, revision="refs/pr/1")["proposal.txt"] == b"please merge"
    assert hub.repo(REPO).pr_refs == ["refs/pr/1"]
    if upload_path == "xet_pipeline":  # opens the PR via POST /discussions, then commits to refs/pr/1
        assert [r.method for r in hub.requests_of("discussion")] == ["POST", "GET"]
        assert hub.requests_of("commit")[-1].url_path.endswith("/commit/refs%2Fpr%2F1")
    else:  # a single POST /commit/main?create_pr=1
        assert hub.requests_of("commit")[-1].query == {"create_pr": ["1"]}
    assert [r.ref for r in api.list_repo_refs(REPO, include_pull_requests=True).pull_requests] == ["refs/pr/1"]
    path = hf_hub_download(
        REPO, "proposal.txt", revision="refs/pr/1", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c"
    )
    assert Path(path).read_bytes() == b"please merge"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "proposal.txt", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c")


def test_create_commit_pr_and_delete(hub: FakeHub, api: HfApi) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    hub.add_repo(REPO, {"a.txt": b"a", "b.txt": b"b"})
    ops = [CommitOperationAdd("c.txt", b"c"), CommitOperationDelete("a.txt")]
    info = api.create_commit(REPO, ops, commit_message="via ?create_pr=1", create_pr=True)
    assert info.pr_revision == "refs/pr/1"
    assert set(hub.files(REPO, "refs/pr/1")) == {".gitattributes", "b.txt", "c.txt"}
    assert set(hub.files(REPO)) == {".gitattributes", "a.txt", "b.txt"}
    api.delete_file("b.txt", REPO)
    assert set(hub.files(REPO)) == {".gitattributes", "a.txt"}


def test_private_repo_requires_token(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("lune-test/base", {"config.json": b"{}", "model.safetensors": WEIGHTS}, private=True)
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError) as exc_info:
        hf_hub_download("lune-test/base", "config.json", endpoint=hub.endpoint, token=False, cache_dir=cache)
    assert exc_info.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("lune-test/base", endpoint=hub.endpoint, token=False, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info("lune-test/base")

    snap = Path(snapshot_download("lune-test/base", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache))
    assert (snap / "model.safetensors").read_bytes() == WEIGHTS


def test_wrong_token_is_401(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(REPO, {"config.json": b"{}"})
    bad = HfApi(endpoint=hub.endpoint, token="hf_wrong")
    with pytest.raises(HfHubHTTPError) as exc_info:
        bad.create_repo("lune-test/other")
    assert exc_info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc_info:
        bad.create_repo(REPO, exist_ok=True)
    assert exc_info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc_info:
        hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, token="hf_wrong", cache_dir=tmp_path)
    assert exc_info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc_info:  # no token at all: cannot write
        HfApi(endpoint=hub.endpoint, token=False).create_repo("lune-test/anon")
    assert exc_info.value.response.status_code == 401
    assert not hub.has_repo("lune-test/other") and not hub.has_repo("lune-test/anon")


def test_missing_entry_and_revision(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(REPO, {"config.json": b"{}"})
    kwargs = {"endpoint": hub.endpoint, "token": TOKEN, "cache_dir": tmp_path}
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.bin", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("lune-test/nope", "config.json", **kwargs)


def test_fail_next_commit_500_fails_upload(
    hub: FakeHub, api: HfApi, tmp_path: Path, upload_path: str, hub_no_retry_sleep: list[float]
) -> None:
    api.create_repo(REPO)
    before = hub.repo(REPO).refs["main"]
    hub.fail_next("commit", 500, count=100)
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.upload_folder(repo_id=REPO, folder_path=_make_folder(tmp_path))
    assert exc_info.value.response.status_code == 500
    assert hub.repo(REPO).refs["main"] == before
    attempts = len(hub.requests_of("commit"))
    # create_commit posts once; the xet pipeline retries 5 times with 1+2+4+8+8 s back-off.
    assert attempts == (6 if upload_path == "xet_pipeline" else 1)
    assert hub_no_retry_sleep == ([1, 2, 4, 8, 8] if upload_path == "xet_pipeline" else [])


def test_drop_next_commit_fails_upload_then_recovers(
    hub: FakeHub, api: HfApi, tmp_path: Path, upload_path: str, hub_no_retry_sleep: list[float]
) -> None:
    api.create_repo(REPO)
    before = hub.repo(REPO).refs["main"]
    hub.drop_next("commit", count=100)
    with pytest.raises(httpx2.RemoteProtocolError):  # "Server disconnected without sending a response."
        api.upload_folder(repo_id=REPO, folder_path=_make_folder(tmp_path))
    assert hub.repo(REPO).refs["main"] == before
    dropped = hub.requests_of("commit")
    assert len(dropped) == (6 if upload_path == "xet_pipeline" else 1)  # the pipeline retries network errors too
    assert all(r.status is None for r in dropped)

    hub.clear_faults()  # the server is still alive after dropped connections
    api.upload_folder(repo_id=REPO, folder_path=_make_folder(tmp_path))
    assert hub.files(REPO)["adapter_model.safetensors"] == WEIGHTS


def test_transient_faults(hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    with pytest.raises(HfHubHTTPError) as exc_info:
        hub.fail_next("create", 403)
        api.create_repo(REPO)
    assert exc_info.value.response.status_code == 403
    api.create_repo(REPO)  # count=1: the next request succeeds

    hub.add_commit(REPO, {"config.json": b"{}"})
    hub.fail_next("resolve", 503)  # first HEAD fails, hf_hub_download retries it once without sleeping
    path = hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"{}"
    assert [r.status for r in hub.requests_of("resolve")] == [503, 200, 200]

    hub.fail_next("info", 500)  # snapshot_download does not retry /api/models: reported as "not cached"
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "other")
    with pytest.raises(ValueError):
        hub.fail_next("nonsense", 500)


def test_resolve_headers_and_range(hub: FakeHub) -> None:
    sha = hub.add_repo(REPO, {"w.bin": WEIGHTS})
    head = httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/w.bin")
    assert head.status_code == 200
    assert head.headers["ETag"] == f'"{git_blob_sha(WEIGHTS)}"'
    assert head.headers["X-Repo-Commit"] == sha
    assert int(head.headers["Content-Length"]) == len(WEIGHTS)
    part = httpx2.get(f"{hub.endpoint}/{REPO}/resolve/{sha}/w.bin", headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == WEIGHTS[10:]
    missing = httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/nope")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == sha
