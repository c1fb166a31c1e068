"""Tests of cxr_lightning.data.download against a local HTTP server (no network needed)."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.download import (
    NIH_ARCHIVES,
    Archive,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    add_download_arguments,
    download_nih_images,
    read_md5_file,
    run_download,
    select_archives,
)
from cxr_lightning.data.download.report import human_size

# ----------------------------------------------------------------------------- fixtures


def png_bytes(seed: int) -> bytes:
    """A small, distinct grayscale PNG."""
    img = Image.new("L", (16, 16))
    img.putdata([(seed * 37 + i * 11) % 256 for i in range(256)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_tar_gz(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


@dataclass
class Server:
    """A threaded HTTP server over a dict of files, with optional Range support and a request log."""

    files: dict[str, bytes]
    honor_range: bool = True
    truncate_once: set[str] = field(default_factory=set)  # paths whose next response is cut in half
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p == path)


def _handler_for(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            server.requests.append((path, range_header))
            if path.startswith("redirect/"):  # like Box: shared/static/... -> a download host
                self.send_response(302)
                self.send_header("Location", f"{server.url}/{path[len('redirect/') :]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = server.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            total = len(data)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if server.honor_range and match:
                start = int(match.group(1))
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            if path in server.truncate_once:
                server.truncate_once.discard(path)
                body = body[: len(body) // 2]
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def serve():
    started: list[ThreadingHTTPServer] = []

    def start(files: dict[str, bytes], **kwargs) -> Server:
        state = Server(files=files, **kwargs)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        started.append(httpd)
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def release():
    """Three tiny archives laid out like NIH's: images/NNNNNNNN_NNN.png."""
    images = {
        "images_01.tar.gz": {f"images/0000000{i}_000.png": png_bytes(i) for i in (1, 2)},
        "images_02.tar.gz": {f"images/0000000{i}_000.png": png_bytes(i) for i in (3, 4, 5)},
        "images_03.tar.gz": {"images/00000006_000.png": png_bytes(6)},
    }
    blobs = {name: make_tar_gz(members) for name, members in images.items()}
    return images, blobs


def archives_for(server: Server, blobs: dict[str, bytes], *, checksums: bool = True) -> list[Archive]:
    return [
        Archive(
            name,
            f"{server.url}/{name}",
            len(blob) if checksums else None,
            hashlib.md5(blob).hexdigest() if checksums else None,
        )
        for name, blob in blobs.items()
    ]


def assert_images(root: Path, images: dict[str, dict[str, bytes]], names=None) -> None:
    for name, members in images.items():
        if names is not None and name not in names:
            continue
        for member, data in members.items():
            assert (root / member).read_bytes() == data


# ----------------------------------------------------------------------------- the release table


def test_nih_archive_table():
    assert [a.name for a in NIH_ARCHIVES] == [f"images_{i:02d}.tar.gz" for i in range(1, 13)]
    assert len({a.url for a in NIH_ARCHIVES}) == 12
    assert all(re.fullmatch(r"https://nihcc\.box\.com/shared/static/[0-9a-z]{32}\.gz", a.url) for a in NIH_ARCHIVES)
    assert NIH_ARCHIVES[0].url.endswith("/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz")
    assert NIH_ARCHIVES[11].url.endswith("/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz")
    assert all(re.fullmatch(r"[0-9a-f]{32}", a.md5 or "") for a in NIH_ARCHIVES)
    total = sum(a.size for a in NIH_ARCHIVES)
    assert 44e9 < total < 46e9  # "about 45 GB"


# ----------------------------------------------------------------------------- downloads


def test_full_download_and_extraction(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    report = download_nih_images(tmp_path, archives_for(server, blobs), progress=False)

    assert_images(tmp_path, images)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"0000000{i}_000.png" for i in range(1, 7)]
    assert report.images_total == 6
    for name, blob in blobs.items():
        result = report[name]
        assert result.status == "downloaded"
        assert result.bytes_downloaded == len(blob)
        assert result.images_extracted == len(images[name])
        assert result.md5 == hashlib.md5(blob).hexdigest()
        marker = tmp_path / "archives" / f"{name}.done"
        assert marker.is_file()
        assert f'"images": {len(images[name])}' in marker.read_text()
        assert not (tmp_path / "archives" / name).exists()  # deleted after extraction
        assert not (tmp_path / "archives" / f"{name}.part").exists()
    assert server.count() == 3
    assert all(rng is None for _, rng in server.requests)
    lines = report.summary_lines()
    assert (
        lines[0] == f"images_01.tar.gz: downloaded {human_size(len(blobs['images_01.tar.gz']))} "
        f"({len(blobs['images_01.tar.gz'])} bytes), extracted 2 images"
    )
    assert lines[-1] == f"6 PNG files in {tmp_path / 'images'}"


def test_keep_archives(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    download_nih_images(tmp_path, archives_for(server, blobs), keep_archives=True, progress=False)
    assert_images(tmp_path, images)
    for name, blob in blobs.items():
        assert (tmp_path / "archives" / name).read_bytes() == blob


def test_second_run_downloads_nothing(tmp_path, serve, release):
    _, blobs = release
    server = serve(blobs)
    archives = archives_for(server, blobs)
    download_nih_images(tmp_path, archives, progress=False)
    before = server.count()

    report = download_nih_images(tmp_path, archives, progress=False)
    assert server.count() == before == 3
    assert [r.status for r in report.results] == ["skipped"] * 3
    assert all(r.already_done and r.bytes_downloaded == 0 for r in report.results)
    assert [r.images_extracted for r in report.results] == [2, 3, 1]
    assert report.images_total == 6
    assert report.summary_lines()[1] == "images_02.tar.gz: skipped (already extracted earlier: 3 images)"


def test_no_extract_then_extract_reuses_verified_archive(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    archives = archives_for(server, blobs)
    report = download_nih_images(tmp_path, archives, extract=False, progress=False)
    assert not (tmp_path / "images").exists()
    assert report.images_total == 0
    assert not list((tmp_path / "archives").glob("*.done"))
    for name, blob in blobs.items():
        assert (tmp_path / "archives" / name).read_bytes() == blob
        assert "not extracted" in report[name].summary()

    report = download_nih_images(tmp_path, archives, progress=False)
    assert server.count() == 3  # nothing fetched again
    assert [r.status for r in report.results] == ["skipped"] * 3
    assert not any(r.already_done for r in report.results)
    assert_images(tmp_path, images)
    assert report.images_total == 6
    assert not list((tmp_path / "archives").glob("*.tar.gz"))


def test_resume_with_range_request(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    name = "images_02.tar.gz"
    blob = blobs[name]
    half = len(blob) // 2
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / f"{name}.part").write_bytes(blob[:half])

    report = download_nih_images(tmp_path, archives_for(server, blobs), progress=False)

    assert (name, f"bytes={half}-") in server.requests
    assert server.count(name) == 1
    result = report[name]
    assert result.status == "resumed"
    assert result.resumed_from == half
    assert result.bytes_downloaded == len(blob) - half
    assert result.md5 == hashlib.md5(blob).hexdigest()
    assert "resumed at" in result.summary()
    assert report["images_01.tar.gz"].status == "downloaded"
    assert_images(tmp_path, images)


def test_resume_follows_redirect_with_range_and_shows_progress(tmp_path, serve, release, capsys):
    images, blobs = release
    server = serve(blobs)
    name = "images_01.tar.gz"
    blob = blobs[name]
    third = len(blob) // 3
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / f"{name}.part").write_bytes(blob[:third])
    archive = Archive(name, f"{server.url}/redirect/{name}", len(blob), hashlib.md5(blob).hexdigest())

    report = download_nih_images(tmp_path, [archive], progress=True)

    assert server.requests == [(f"redirect/{name}", f"bytes={third}-"), (name, f"bytes={third}-")]
    assert report[name].status == "resumed"
    assert_images(tmp_path, images, names={name})
    assert name in capsys.readouterr().err  # the tqdm bar


def test_resume_when_server_ignores_range(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs, honor_range=False)
    name = "images_01.tar.gz"
    blob = blobs[name]
    # A .part that is *not* a prefix of the file: appending to it would corrupt the archive,
    # and no size/md5 is given, so only a correct restart-from-zero gives the right images.
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / f"{name}.part").write_bytes(b"\0" * (len(blob) // 2))

    archives = archives_for(server, {name: blob}, checksums=False)
    report = download_nih_images(tmp_path, archives, progress=False)

    assert server.requests == [(name, f"bytes={len(blob) // 2}-")]  # asked for a range, got 200
    assert report[name].status == "downloaded"
    assert report[name].bytes_downloaded == len(blob)
    assert report[name].md5 == hashlib.md5(blob).hexdigest()
    assert_images(tmp_path, images, names={name})


def test_complete_part_gets_416_and_is_used(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    name = "images_03.tar.gz"
    blob = blobs[name]
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / f"{name}.part").write_bytes(blob)
    # No size known, so the downloader has to ask; the server answers 416 with the total.
    report = download_nih_images(tmp_path, archives_for(server, {name: blob}, checksums=False), progress=False)
    assert server.requests == [(name, f"bytes={len(blob)}-")]
    assert report[name].status == "resumed" and report[name].bytes_downloaded == 0
    assert_images(tmp_path, images, names={name})


def test_interrupted_download_is_resumed_by_next_run(tmp_path, serve, release):
    images, blobs = release
    name = "images_02.tar.gz"
    blob = blobs[name]
    server = serve(blobs, truncate_once={name})
    archives = archives_for(server, blobs)

    with pytest.raises(DownloadError) as err:
        download_nih_images(tmp_path, archives, progress=False)
    message = str(err.value)
    assert name in message and "re-run" in message and "resume" in message
    assert not isinstance(err.value, ChecksumError)
    part = tmp_path / "archives" / f"{name}.part"
    assert part.read_bytes() == blob[: len(blob) // 2]  # kept for resuming
    assert (tmp_path / "archives" / "images_01.tar.gz.done").exists()  # the one before is finished

    report = download_nih_images(tmp_path, archives, progress=False)
    assert report["images_01.tar.gz"].already_done
    assert report[name].status == "resumed"
    assert server.requests[-2] == (name, f"bytes={len(blob) // 2}-")
    assert_images(tmp_path, images)


# ----------------------------------------------------------------------------- verification


def test_md5_mismatch_deletes_file_and_names_archive(tmp_path, serve, release):
    images, blobs = release
    server = serve(blobs)
    name = "images_02.tar.gz"
    archives = [a if a.name != name else Archive(a.name, a.url, a.size, "0" * 32) for a in archives_for(server, blobs)]

    with pytest.raises(ChecksumError) as err:
        download_nih_images(tmp_path, archives, progress=False)
    message = str(err.value)
    assert name in message
    assert "0" * 32 in message
    assert hashlib.md5(blobs[name]).hexdigest() in message
    assert not (tmp_path / "archives" / name).exists()
    assert not (tmp_path / "archives" / f"{name}.part").exists()
    assert not (tmp_path / "archives" / f"{name}.done").exists()
    assert not (tmp_path / "images" / "00000003_000.png").exists()

    # The next run (with the right checksum) fetches it again from the start.
    download_nih_images(tmp_path, archives_for(server, blobs), progress=False)
    assert server.requests[-2:] == [(name, None), ("images_03.tar.gz", None)]
    assert_images(tmp_path, images)


def test_md5_mismatch_of_archive_left_on_disk(tmp_path, serve, release):
    _, blobs = release
    server = serve(blobs)
    name = "images_01.tar.gz"
    (tmp_path / "archives").mkdir()
    bad = bytearray(blobs[name])
    bad[-30] ^= 0xFF
    (tmp_path / "archives" / name).write_bytes(bytes(bad))
    with pytest.raises(ChecksumError, match=r"MD5 mismatch for images_01\.tar\.gz"):
        download_nih_images(tmp_path, archives_for(server, {name: blobs[name]}), progress=False)
    assert not (tmp_path / "archives" / name).exists()
    assert server.count() == 0


def test_size_mismatch_against_known_size(tmp_path, serve, release):
    _, blobs = release
    server = serve(blobs)
    name = "images_03.tar.gz"
    blob = blobs[name]
    expected = len(blob) + 10
    (tmp_path / "archives").mkdir()
    part = tmp_path / "archives" / f"{name}.part"
    part.write_bytes(blob[:5])

    archive = Archive(name, f"{server.url}/{name}", size=expected)
    with pytest.raises(ChecksumError) as err:
        download_nih_images(tmp_path, [archive], progress=False)
    message = str(err.value)
    assert f"size mismatch for {name}" in message
    assert str(expected) in message and str(len(blob)) in message
    assert not part.exists()
    assert not (tmp_path / "archives" / name).exists()


def test_size_mismatch_of_archive_left_on_disk(tmp_path, release):
    _, blobs = release
    name = "images_01.tar.gz"
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / name).write_bytes(blobs[name][:-1])
    archive = Archive(name, "http://127.0.0.1:9/never-fetched", size=len(blobs[name]))
    with pytest.raises(ChecksumError) as err:
        download_nih_images(tmp_path, [archive], progress=False)
    assert f"expected {len(blobs[name])} bytes, got {len(blobs[name]) - 1} bytes" in str(err.value)
    assert not (tmp_path / "archives" / name).exists()


# ----------------------------------------------------------------------------- errors


def test_http_error_shows_status(tmp_path, serve, release):
    _, blobs = release
    server = serve(blobs)
    archive = Archive("images_09.tar.gz", f"{server.url}/missing.tar.gz")
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        download_nih_images(tmp_path, [archive], progress=False)
    assert "images_09.tar.gz" in str(err.value) and archive.url in str(err.value)


def test_network_failure_names_url_and_suggests_rerun(tmp_path):
    # A port that was free a moment ago: nothing listens there, so the connection is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead_url = f"http://127.0.0.1:{port}/images_01.tar.gz"
    with pytest.raises(DownloadError) as err:
        download_nih_images(tmp_path, [Archive("images_01.tar.gz", dead_url)], timeout=5, progress=False)
    message = str(err.value)
    assert dead_url in message and "re-run" in message


# ----------------------------------------------------------------------------- unsafe archives


def _evil(kind: str) -> bytes:
    ok = {"images/00000001_000.png": png_bytes(1)}
    if kind == "dotdot":
        return make_tar_gz({**ok, "../evil": b"pwned"})
    if kind == "nested-dotdot":
        return make_tar_gz({**ok, "images/../../evil": b"pwned"})
    if kind == "absolute":
        return make_tar_gz({**ok, "/tmp/evil-cxr-lightning-test": b"pwned"})
    link = tarfile.TarInfo("images/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../evil" if kind == "symlink" else "/etc/passwd"
    return make_tar_gz(ok, extra=[link])


@pytest.mark.parametrize("kind", ["dotdot", "nested-dotdot", "absolute", "symlink", "absolute-symlink"])
def test_unsafe_member_is_refused(tmp_path, serve, kind):
    blob = _evil(kind)
    server = serve({"images_01.tar.gz": blob})
    root = tmp_path / "root"
    archive = Archive("images_01.tar.gz", f"{server.url}/images_01.tar.gz", len(blob), hashlib.md5(blob).hexdigest())
    with pytest.raises(UnsafeArchiveError, match=r"refusing to extract images_01\.tar\.gz") as err:
        download_nih_images(root, [archive], progress=False)
    assert "member" in str(err.value)
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-cxr-lightning-test").exists()
    assert not (root / "images").exists()  # nothing at all was extracted
    assert not (root / "archives" / "images_01.tar.gz.done").exists()


def test_corrupt_archive_is_deleted(tmp_path, serve):
    blob = b"this is not a gzip file" * 10
    server = serve({"images_01.tar.gz": blob})
    with pytest.raises(DownloadError, match=r"images_01\.tar\.gz is not a readable tar\.gz archive"):
        download_nih_images(tmp_path, [Archive("images_01.tar.gz", f"{server.url}/images_01.tar.gz")], progress=False)
    assert not (tmp_path / "archives" / "images_01.tar.gz").exists()


# ----------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = CommandParser()
    add_download_arguments(parser)
    return parser.parse_args(argv)


def test_cli_options():
    args = _parse(["--root", "/x"])
    assert args.data_root == Path("/x")
    assert args.only is None and args.base_url is None and args.md5_file is None
    assert not args.keep_archives and not args.no_extract and args.timeout == 60
    with pytest.raises(SystemExit):
        _parse([])  # --root is required


def test_run_download_with_base_url_and_only(tmp_path, serve, release, capsys):
    images, blobs = release
    server = serve(blobs)
    md5_file = tmp_path / "md5.txt"
    # md5sum output, with NIH's 3-digit spelling for one of the names.
    md5_file.write_text(
        f"{hashlib.md5(blobs['images_01.tar.gz']).hexdigest()}  images_001.tar.gz\n"
        f"{hashlib.md5(blobs['images_03.tar.gz']).hexdigest()} *images_03.tar.gz\n"
    )
    root = tmp_path / "nih"
    args = _parse(
        [
            "--root",
            str(root),
            "--base-url",
            server.url + "/",
            "--only",
            "images_01",
            "images_03",
            "--md5-file",
            str(md5_file),
            "--no-progress",
        ]
    )
    assert run_download(args) == 0

    assert sorted(p for p, _ in server.requests) == ["images_01.tar.gz", "images_03.tar.gz"]
    assert_images(root, images, names={"images_01.tar.gz", "images_03.tar.gz"})
    assert not (root / "images" / "00000003_000.png").exists()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("images_01.tar.gz: downloaded ") and out[0].endswith("extracted 2 images")
    assert out[1].startswith("images_03.tar.gz: downloaded ") and out[1].endswith("extracted 1 images")
    assert out[2] == f"3 PNG files in {root / 'images'}"

    # Re-running downloads nothing and reports the archives as skipped.
    assert run_download(args) == 0
    assert server.count() == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "images_01.tar.gz: skipped (already extracted earlier: 2 images)"


def test_run_download_checks_builtin_size_for_mirrors(tmp_path, serve, release, capsys):
    _, blobs = release
    server = serve(blobs)
    args = _parse(["--root", str(tmp_path), "--base-url", server.url, "--only", "2", "--no-progress"])
    assert run_download(args) == 1  # the tiny test file is not NIH's images_02 (3,952,623,504 bytes)
    err = capsys.readouterr().err
    assert "size mismatch for images_02.tar.gz" in err
    assert "3952623504" in err and str(len(blobs["images_02.tar.gz"])) in err


def test_run_download_no_extract_keep_archives(tmp_path, serve, release, capsys):
    _, blobs = release
    server = serve(blobs)
    md5_file = tmp_path / "md5.txt"
    md5_file.write_text(f"{hashlib.md5(blobs['images_02.tar.gz']).hexdigest()}  images_02.tar.gz\n")
    args = _parse(
        [
            "--root",
            str(tmp_path / "r"),
            "--base-url",
            server.url,
            "--only",
            "images_02.tar.gz",
            "--md5-file",
            str(md5_file),
            "--no-extract",
            "--no-progress",
        ]
    )
    assert run_download(args) == 0
    assert (tmp_path / "r" / "archives" / "images_02.tar.gz").read_bytes() == blobs["images_02.tar.gz"]
    out = capsys.readouterr().out
    assert "not extracted" in out and "0 PNG files" in out


def test_run_download_rejects_unknown_names(tmp_path, capsys):
    assert run_download(_parse(["--root", str(tmp_path), "--only", "images_13"])) == 2
    err = capsys.readouterr().err
    assert "images_13" in err and "images_01" in err


def test_read_md5_file(tmp_path):
    path = tmp_path / "sums"
    path.write_text(
        "# NIH FAQ Q07\n\nFE8ED0A6961412FDDCBB3603C11B3698  images_001.tar.gz\n"
        "MD5 (images_002.tar.gz) = ab07a2d7cbe6f65ddd97b4ed7bde10bf\n"
    )
    sums = read_md5_file(path)
    assert sums == {
        "images_001.tar.gz": "fe8ed0a6961412fddcbb3603c11b3698",
        "images_002.tar.gz": "ab07a2d7cbe6f65ddd97b4ed7bde10bf",
    }
    chosen = select_archives(["images_01", "images_002"], md5s={"images_001.tar.gz": "a" * 32})
    assert [a.name for a in chosen] == ["images_01.tar.gz", "images_02.tar.gz"]
    assert chosen[0].md5 == "a" * 32 and chosen[0].size is None  # user checksum replaces built-ins
    assert chosen[1] == NIH_ARCHIVES[1]
    path.write_text("not a checksum line\n")
    with pytest.raises(ValueError, match=r"sums:1"):
        read_md5_file(path)


# ----------------------------------------------------------------------------- local mirrors


def _mirror(folder: Path, blobs: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    (folder / "md5.txt").write_text("".join(f"{hashlib.md5(b).hexdigest()}  {n}\n" for n, b in blobs.items()))
    return folder


@pytest.mark.parametrize("spelling", ["path", "file_url"])
def test_local_mirror_folder_or_file_url_is_copied_checked_and_extracted(tmp_path, release, capsys, spelling):
    images, blobs = release
    mirror = _mirror(tmp_path / "mirror dir", blobs)  # a space: the file URL is quoted
    base = str(mirror) if spelling == "path" else mirror.as_uri()
    root = tmp_path / "nih"
    args = _parse(["--root", str(root), "--base-url", base, "--only", "1", "3", "--md5-file", str(mirror / "md5.txt"), "--no-progress"])
    assert run_download(args) == 0
    assert_images(root, images, names={"images_01.tar.gz", "images_03.tar.gz"})
    assert not (root / "images" / "00000003_000.png").exists()
    # Resuming works as for HTTP: a prefix of the archive left as .part is completed, not restarted.
    blob = blobs["images_02.tar.gz"]
    (root / "archives" / "images_02.tar.gz.part").write_bytes(blob[:10])
    assert run_download(_parse(["--root", str(root), "--base-url", base, "--only", "2", "--md5-file", str(mirror / "md5.txt"), "--no-progress"])) == 0
    assert_images(root, images)
    assert "images_02.tar.gz: resumed" in capsys.readouterr().out


def test_local_mirror_without_the_archive_names_the_missing_file(tmp_path, release, capsys):
    _, blobs = release
    mirror = _mirror(tmp_path / "mirror", {"images_01.tar.gz": blobs["images_01.tar.gz"]})
    args = _parse(["--root", str(tmp_path / "nih"), "--base-url", str(mirror), "--only", "2", "--no-progress"])
    assert run_download(args) == 1
    err = capsys.readouterr().err
    assert f"local mirror file {mirror / 'images_02.tar.gz'}" in err and "does not exist" in err and "--base_url" in err


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("ftp://example.org/nih", "unsupported URL scheme 'ftp'; use http://, https://, file://"),
        ("s3://bucket/nih", "unsupported URL scheme 's3'"),
        ("file://otherhost/data/nih", "must name a local path (file:///path), not the host 'otherhost'"),
        ("/no/such/mirror/folder", "/no/such/mirror/folder: no such folder"),
    ],
)
def test_unusable_base_url_is_refused_before_anything_is_fetched(tmp_path, capsys, base_url, expected):
    root = tmp_path / "nih"
    assert run_download(_parse(["--root", str(root), "--base-url", base_url, "--only", "1", "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert expected in err and base_url in err and "Traceback" not in err
    assert not root.exists()  # refused before the archive folder was made
