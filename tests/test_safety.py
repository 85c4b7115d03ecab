"""Server-path and zip guards, against hostile folders and archives built here."""
import io
import os
import stat
import warnings
import zipfile

import pytest

from covidxr.evaluate import scan_folder
from tests.hostile import deadline, special_files
from covidxr.safety import (ROOTS_ENV, PathRefused, ZipRefused, allowed_roots, check_zip, read_entry,
                            resolve_inside)


@pytest.fixture
def tree(tmp_path):
    """root/ with a class folder, a file, and links inside and out; outside/ beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "set" / "covid").mkdir(parents=True)
    outside.mkdir()
    (root / "set" / "covid" / "a.png").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"x")
    (root / "out_dir").symlink_to(outside, target_is_directory=True)
    (root / "in_dir").symlink_to(root / "set", target_is_directory=True)
    return root, outside


def test_allowed_roots_from_env_and_extra(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv(ROOTS_ENV, os.pathsep.join([str(a), str(tmp_path / "missing"), ""]))
    assert allowed_roots() == [a.resolve()]
    assert allowed_roots([b]) == [a.resolve(), b.resolve()]
    monkeypatch.delenv(ROOTS_ENV)
    assert allowed_roots() == []


def test_resolve_inside_accepts_paths_within(tree):
    root, _ = tree
    assert resolve_inside("set", [root]) == (root / "set").resolve()
    assert resolve_inside(root / "set" / "covid", [root]) == (root / "set" / "covid").resolve()
    assert resolve_inside("in_dir", [root]) == (root / "set").resolve()  # a link that stays inside
    assert resolve_inside("set/covid/a.png", [root], want_dir=False).name == "a.png"


@pytest.mark.parametrize("path, why", [
    ("set/../set", "'..' is not allowed"),
    ("../outside", "'..' is not allowed"),
    ("out_dir", "symbolic link leads outside"),
    ("nowhere", "no such file"),
    ("set/covid/a.png", "not a folder"),
    ("", "empty or malformed"),
])
def test_resolve_inside_refusals(tree, path, why):
    root, _ = tree
    with pytest.raises(PathRefused, match=why):
        resolve_inside(path, [root])


def test_resolve_inside_refuses_absolute_elsewhere_and_no_roots(tree):
    root, outside = tree
    with pytest.raises(PathRefused, match="outside the allowed folders"):
        resolve_inside(outside, [root])
    with pytest.raises(PathRefused, match="outside the allowed folders"):
        resolve_inside("/etc", [root])
    with pytest.raises(PathRefused, match="no server folders are allowed"):
        resolve_inside(root, [])


def test_scan_folder_reports_links_that_leave(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "covid").mkdir(parents=True)
    (root / "normal").mkdir()
    outside.mkdir()
    (outside / "x.png").write_bytes(b"x")
    (root / "covid" / "real.png").write_bytes(b"x")
    (root / "covid" / "leak.png").symlink_to(outside / "x.png")
    (root / "normal" / "alias.png").symlink_to(root / "covid" / "real.png")  # inside: allowed
    (root / "normal" / "away").symlink_to(outside, target_is_directory=True)
    items = {i.path.removeprefix(str(root) + "/"): i for i in scan_folder(root)}
    assert set(items) == {"covid/real.png", "covid/leak.png", "normal/alias.png", "normal/away"}
    assert "outside the evaluated folder" in items["covid/leak.png"].error
    assert "outside the evaluated folder" in items["normal/away"].error
    assert items["covid/real.png"].error is None and items["normal/alias.png"].error is None


# ---------------------------------------------------------------------------------------------
# zips


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate name we build on purpose
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def test_check_zip_lists_files_only():
    data = make_zip([("set/", b""), ("set/covid/a.png", b"1"), ("set/normal/b.png", b"22")])
    assert [i.filename for i in check_zip(data)] == ["set/covid/a.png", "set/normal/b.png"]


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "absolute path"),
    ("covid/../../evil.png", "'..' component"),
    ("..", "'..' component"),
    ("covid\\..\\evil.png", "backslash"),
    ("C:/Windows/evil.png", "drive letter"),
])
def test_check_zip_refuses_zip_slip(name, why):
    with pytest.raises(ZipRefused, match=why):
        check_zip(make_zip([("covid/ok.png", b"1"), (name, b"1")]))


def test_check_zip_refuses_non_zips_and_corrupt_ones():
    with pytest.raises(ZipRefused, match="empty"):
        check_zip(b"")
    with pytest.raises(ZipRefused, match="not a readable zip"):
        check_zip(b"PNG and not much else" * 10)
    whole = make_zip([("covid/a.png", os.urandom(5000))])
    with pytest.raises(ZipRefused, match="not a readable zip"):
        check_zip(whole[:-30])  # central directory cut off


def test_check_zip_limits_entries_and_total_size():
    many = make_zip([(f"covid/{i}.png", b"1") for i in range(12)])
    with pytest.raises(ZipRefused, match="12 entries, more than the 10"):
        check_zip(many, max_entries=10)
    big = make_zip([("covid/a.png", os.urandom(3000)), ("covid/b.png", os.urandom(3000))])
    with pytest.raises(ZipRefused, match="more than the 5,000 bytes allowed"):
        check_zip(big, max_total_bytes=5000)
    with pytest.raises(ZipRefused, match="more than the 2,000 allowed for one file"):
        check_zip(big, max_entry_bytes=2000)


def test_check_zip_refuses_a_bomb_by_ratio():
    bomb = make_zip([("covid/a.png", bytes(8 << 20))])  # 8 MiB of zeros deflate ~1000:1
    with pytest.raises(ZipRefused, match="zip bomb"):
        check_zip(bomb)
    films = make_zip([("covid/a.png", os.urandom(2 << 20))])  # incompressible, like real films
    assert len(check_zip(films)) == 1


def test_check_zip_refuses_encrypted_symlink_and_duplicate_entries():
    data = bytearray(make_zip([("covid/a.png", b"secret")]))
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1  # the general-purpose "encrypted" bit, as an encrypting tool sets it
    with pytest.raises(ZipRefused, match="encrypted"):
        check_zip(bytes(data))

    link = zipfile.ZipInfo("covid/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ZipRefused, match="symbolic link"):
        check_zip(make_zip([(link, "/etc/passwd")]))

    with pytest.raises(ZipRefused, match="appears twice"):
        check_zip(make_zip([("covid/a.png", b"1"), ("covid/a.png", b"2")]))


def test_read_entry_does_not_trust_declared_sizes():
    payload = os.urandom(100_000)
    data = bytearray(make_zip([("covid/a.png", payload)], zipfile.ZIP_STORED))
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")  # declares 1,000 bytes, holds 100,000
    infos = check_zip(bytes(data))
    assert infos[0].file_size == 1000
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf, pytest.raises(ZipRefused, match="covid/a.png"):
        read_entry(zf, infos[0])

    honest = make_zip([("covid/a.png", payload)])
    with zipfile.ZipFile(io.BytesIO(honest)) as zf:
        info = zf.infolist()[0]
        assert read_entry(zf, info) == payload
        with pytest.raises(ZipRefused, match="inflates beyond"):
            read_entry(zf, info, max_bytes=50_000)


# ---------------------------------------------------------------------------------------------
# files: the one bounded reader (safety.read_regular), made with real special files in tmp


@pytest.fixture
def alarm():
    with deadline(60):
        yield


def test_read_regular_refuses_special_and_huge_files_without_reading(tmp_path, alarm):
    from covidxr.safety import FileRefused, read_regular

    for name, why in special_files(tmp_path).items():
        with pytest.raises(FileRefused, match=why):
            read_regular(tmp_path / name)
    with pytest.raises(FileRefused, match="folder"):
        read_regular(tmp_path)
    (tmp_path / "ok.png").write_bytes(b"abc" * 1000)
    assert read_regular(tmp_path / "ok.png") == b"abc" * 1000
    assert read_regular(tmp_path / "ok.png", first=4) == b"abca"
    assert read_regular(tmp_path / "huge.dcm", first=8) == bytes(8)  # a head is read whatever the size
    with pytest.raises(FileRefused, match="too large \\(3,000 bytes; the limit is 2,999 bytes\\)"):
        read_regular(tmp_path / "ok.png", limit=2999)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing.png")


def test_every_path_reader_goes_through_it(tmp_path, alarm):
    """read_film(path), a server folder's items (and the extension-less DICOM sniff), the Ray engine's reader
    and --resume's hash all refuse the same files, each with its reason, and the real film is still read."""
    from covidxr.engines.batch import _HashingReader
    from covidxr.engines.results import sha256_of
    from covidxr.evaluate import _read
    from covidxr.films import FilmError, read_film
    from tests.bad_inputs import encode, film_array

    root = tmp_path / "root"
    made = special_files(root / "covid")
    os.mkfifo(root / "covid" / "noext")  # a name without a suffix is sniffed for DICOM: that must not block
    (root / "normal").mkdir()
    (root / "normal" / "real.png").write_bytes(encode(film_array(), "PNG"))
    items = {i.path.rsplit("/", 1)[1]: i for i in scan_folder(root)}
    assert set(items) == set(made) | {"real.png"}  # the FIFO without a suffix is not taken for a film
    for name, why in made.items():
        film, error = _read(items[name])
        why_here = "outside the evaluated folder" if name == "devzero.jpg" else why  # refused as a link first
        assert film is None and why_here in error, (name, error)
        with pytest.raises(FilmError, match=why):
            read_film(root / "covid" / name)
        with pytest.raises(OSError, match=why):
            _HashingReader(str(root / "covid" / name))()
        assert sha256_of(str(root / "covid" / name)) == ""
    assert _read(items["real.png"])[0].width == 256
