import pytest

from collector.errors import SourceError
from collector.paging import TokenPaginator


def pager(pages: dict, **kwargs):
    """pages: token → (items, next token); records the tokens fetch was called with."""
    calls = []

    def fetch(token):
        calls.append(token)
        return pages[token]

    return TokenPaginator(fetch, lambda page: page[1], source="src", request="test:List",
                          **kwargs), calls


def test_follows_tokens_until_the_last_page():
    p, calls = pager({None: ([1, 2], "a"), "a": ([3], "b"), "b": ([4], None)})
    assert [item for page in p for item in page[0]] == [1, 2, 3, 4]
    assert calls == [None, "a", "b"]
    assert p.pages == 3


@pytest.mark.parametrize("last", [None, "", False])
def test_false_token_ends_paging(last):
    p, calls = pager({None: ([1], last)})
    assert list(p) == [([1], last)]
    assert calls == [None]


def test_repeated_token_raises_after_yielding_the_page():
    p, calls = pager({None: ([1], "a"), "a": ([2], "a")})
    seen = []
    with pytest.raises(SourceError) as err:
        for page in p:
            seen.append(page[0])
    assert seen == [[1], [2]]          # the faulty page is still handed over (to be recorded)
    assert calls == [None, "a"]
    assert err.value.source == "src"
    assert "test:List" in str(err.value) and "'a'" in str(err.value)


def test_non_adjacent_repeat_is_a_loop_too():
    p, calls = pager({None: ([], "a"), "a": ([], "b"), "b": ([], "a")})
    with pytest.raises(SourceError, match="second time"):
        list(p)
    assert calls == [None, "a", "b"]


def test_structured_tokens():
    def fetch(token):
        offset = 0 if token is None else token["offset"]
        return {"items": [offset], "next": {"offset": offset + 1} if offset < 2 else None}

    p = TokenPaginator(fetch, lambda page: page["next"], source="src", request="test:List")
    assert [page["items"][0] for page in p] == [0, 1, 2]

    loop = TokenPaginator(lambda token: {"next": {"offset": 5}}, lambda page: page["next"],
                          source="src", request="test:List")
    with pytest.raises(SourceError, match="second time"):
        list(loop)
    assert loop.pages == 2


def test_max_pages():
    p = TokenPaginator(lambda token: (token or 0) + 1, lambda page: page, source="src",
                       request="test:List", max_pages=3)
    with pytest.raises(SourceError, match="more than 3 pages"):
        list(p)
    assert p.pages == 3


def test_lazy_nothing_fetched_before_iteration():
    p, calls = pager({None: ([1], None)})
    assert calls == [] and p.pages == 0
