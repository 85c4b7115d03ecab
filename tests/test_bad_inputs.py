"""Every kind of bad input gets FilmError with its own specific message, and nothing else escapes."""
from __future__ import annotations

import pytest

from covidxr.films import FilmError, read_film
from tests.bad_inputs import bad_inputs

CORPUS = bad_inputs()


def test_corpus_is_broad_and_unambiguous():
    kinds = [case.kind for case in CORPUS]
    assert len(set(kinds)) == len(kinds) >= 22
    assert all(case.expect for case in CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[case.kind for case in CORPUS])
def test_bad_input_raises_film_error_with_its_message(case):
    with pytest.raises(FilmError) as caught:
        read_film(case.data, name=case.filename)
    message = str(caught.value)
    assert case.expect in message
    assert "\n" not in message and len(message) < 400  # one line, fit for a page or a CLI error


def test_messages_tell_kinds_apart():
    """A generic 'cannot read' for everything would pass a substring test; the messages must differ."""
    messages = set()
    for case in CORPUS:
        with pytest.raises(FilmError) as caught:
            read_film(case.data)
        messages.add(str(caught.value).split(" (")[0])
    assert len(messages) >= 20


def test_bad_input_read_from_a_path_gives_the_same_message(tmp_path):
    case = next(c for c in CORPUS if c.kind == "html-renamed-jpg")
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    with pytest.raises(FilmError, match=case.expect):
        read_film(path)
