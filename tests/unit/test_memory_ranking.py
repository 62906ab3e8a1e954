"""Memory's small parts: tags (normalized, from keywords, from importers), query words, and rank
fusion with rare channels lifted, its explanation adding up to its score."""

from __future__ import annotations

import pytest

from selftune.memory.keywords import query_words
from selftune.memory.rank import RRF_K, fuse, rarity
from selftune.memory.tags import TagError, import_tags, keyword_tags, normalize_tags


def test_tags_are_compared_without_case_or_extra_spaces() -> None:
    assert normalize_tags([" Garden ", "garden", "Home  Office", ""]) == ["garden", "home office"]
    with pytest.raises(TagError, match="at most 32 tags"):
        normalize_tags([f"t{n}" for n in range(33)])
    with pytest.raises(TagError):
        normalize_tags(["x" * 65])


def test_keyword_tags_are_the_most_frequent_content_words_in_first_order() -> None:
    text = "Compost needs air. Turn the compost weekly; air keeps compost sweet. The the the."
    # "air" is too short to name a channel; ties go to the word seen first.
    assert keyword_tags(text, 2) == ["compost", "needs"]
    assert keyword_tags(text, 1) == ["compost"]
    assert keyword_tags("the and of", 3) == []
    assert keyword_tags(text, 0) == []


def test_importers_tag_the_site_the_file_and_its_folder() -> None:
    assert import_tags("https://www.Example.org/a/b.html", "url") == ["site:example.org"]
    assert import_tags("notes/garden/Compost.md", "file") == ["file:compost.md", "folder:garden"]
    assert import_tags("upload", "file") == ["file:upload"]
    assert import_tags("text", "text") == []


def test_query_words_drop_stop_words_unless_nothing_else_is_left() -> None:
    assert query_words("What is the bypass ratio of the Zephyr 400?") == [
        "bypass",
        "ratio",
        "zephyr",
        "400",
    ]
    assert query_words("who is it") == ["who", "is", "it"]
    # Query syntax is only words here (each is quoted for FTS5); one letter says too little.
    assert query_words('"quoted" OR NEAR(x)') == ["quoted", "near"]


def test_a_record_both_searches_found_ranks_above_one_only_one_found() -> None:
    keyword = [(1, 9.0), (2, 8.0)]
    vector = [(3, 0.9), (2, 0.8)]
    hits = fuse(keyword, vector, {}, {}, tag_weight=1.0)
    assert [h.record_id for h in hits] == [2, 1, 3]
    assert hits[0].score == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 2))


def test_a_rare_channel_lifts_a_record_and_the_explanation_adds_up() -> None:
    sizes = {"big": 990, "rare": 2}
    rare = rarity(sizes, 1000)
    assert 0 <= rare["big"] < 0.01 < rare["rare"] <= 1
    keyword = [(1, 5.0), (2, 4.0)]
    channels = {1: ["big"], 2: ["rare"]}
    plain = fuse(keyword, [], channels, rare, tag_weight=0)
    lifted = fuse(keyword, [], channels, rare, tag_weight=1.0)
    assert [h.record_id for h in plain] == [1, 2]
    assert [h.record_id for h in lifted] == [2, 1]
    top = lifted[0]
    assert top.rarest_tag == "rare"
    parts = top.explain(1.0)
    total = sum(
        float(part["contributes"])  # type: ignore[index]
        for name, part in parts.items()
        if name in ("keyword", "vector", "channel")
    )
    assert total == pytest.approx(top.score, abs=1e-5)


def test_rarity_of_a_store_of_one_record_is_zero() -> None:
    assert rarity({"only": 1}, 1) == {"only": 0.0}
