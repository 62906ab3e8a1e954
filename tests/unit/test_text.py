"""Text handling without a model: stop sequences, token choice, the gate, chat templates."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest
import torch

from selftune.engines.base import GenerationParams
from selftune.engines.sampling import next_token
from selftune.engines.stops import StopMatcher
from selftune.evaluation.gate import GateFigures, GatePolicy, decide
from selftune.models.templates import PRESETS, resolve_template

# --- StopMatcher -------------------------------------------------------------------------------


def _feed_all(matcher: StopMatcher, texts: list[str]) -> tuple[list[str], bool]:
    """Feed growing texts until a stop; return the emitted pieces and whether it stopped."""
    pieces = []
    for text in texts:
        piece, stopped = matcher.feed(text)
        pieces.append(piece)
        if stopped:
            return pieces, True
    return pieces, False


def _growing(text: str, sizes: list[int]) -> list[str]:
    """The decoded text after each token, for tokens of the given sizes."""
    out, end = [], 0
    for size in sizes:
        end += size
        out.append(text[:end])
        if end >= len(text):
            break
    return out


def test_without_stops_everything_is_emitted_at_once() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("Hel") == ("Hel", False)
    assert matcher.feed("Hello") == ("lo", False)
    assert matcher.feed("Hello") == ("", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(("",))
    assert matcher.stops == ()
    assert matcher.feed("abc") == ("abc", False)


def test_stop_split_across_feeds_is_cut_cleanly() -> None:
    stop = "\n\nUser:"
    text = "Sure, here it is." + stop + " more"
    matcher = StopMatcher((stop,))
    pieces, stopped = _feed_all(matcher, _growing(text, [1] * len(text)))

    assert stopped
    assert "".join(pieces) == "Sure, here it is."
    # no piece ever carried the first character of the stop sequence
    assert all("\n" not in piece for piece in pieces)
    assert matcher.flush() == ""


def test_stop_arriving_in_one_feed_with_text_before_it() -> None:
    matcher = StopMatcher(("###",))
    assert matcher.feed("ab") == ("", False)  # could still become the stop: held back
    assert matcher.feed("abcd") == ("ab", False)
    assert matcher.feed("abcd e### f") == ("cd e", True)
    assert matcher.flush() == ""


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(("<END>",))
    pieces, stopped = _feed_all(matcher, ["x<EN", "x<ENx", "x<ENxyzw"])
    assert not stopped
    assert "".join(pieces) == "x<EN"  # the last 4 characters may still start a stop
    assert matcher.flush() == "xyzw"


def test_flush_returns_what_was_held_back() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("ab") == ("", False)
    assert matcher.flush() == "ab"
    assert matcher.flush() == ""


def test_stop_at_the_very_start_emits_nothing() -> None:
    matcher = StopMatcher(("</s>",))
    pieces, stopped = _feed_all(matcher, ["<", "</", "</s", "</s>", "</s>more"])
    assert stopped
    assert "".join(pieces) == ""
    assert matcher.flush() == ""


@pytest.mark.parametrize("seed", range(20))
def test_stop_cut_matches_the_first_occurrence_for_random_token_sizes(seed: int) -> None:
    rng = random.Random(seed)
    stop = rng.choice(["ab", "aab", "<|x|>", "\n\n", "bba"])
    text = "".join(rng.choice("ab<|x>\n ") for _ in range(60))
    if seed % 4:  # most texts contain the stop; it may also occur earlier by chance
        at = rng.randint(0, len(text))
        text = text[:at] + stop + text[at:]
    sizes = [rng.randint(1, 4) for _ in range(60)]
    matcher = StopMatcher((stop,))

    pieces, stopped = _feed_all(matcher, _growing(text, sizes))
    emitted = "".join(pieces) + matcher.flush()

    index = text.find(stop)
    if index == -1:
        assert not stopped
        assert emitted == text
    else:
        assert stopped
        assert emitted == text[:index]


def test_trailing_replacement_character_is_held_back() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("caf") == ("caf", False)
    assert matcher.feed("caf\ufffd") == ("", False)  # half of "é"
    assert matcher.feed("café") == ("é", False)
    assert matcher.feed("café \ufffd\ufffd") == (" ", False)
    assert matcher.feed("café 🙂") == ("🙂", False)


def test_trailing_replacement_character_with_stops() -> None:
    matcher = StopMatcher(("ZZ",))  # holds back one character
    assert matcher.feed("ab\ufffd\ufffd") == ("ab", False)
    assert matcher.feed("ab€x") == ("€", False)
    assert matcher.flush() == "x"


def test_replacement_character_is_flushed_at_the_end() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("a\ufffd") == ("a", False)
    assert matcher.flush() == "\ufffd"


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(("END", "STOP"))
    piece, stopped = matcher.feed("one STOP two END three")
    assert stopped
    assert piece + matcher.flush() == "one "


# --- next_token --------------------------------------------------------------------------------

LOGITS = torch.tensor([0.1, 2.0, -1.0, 1.9, 0.5])


def _params(temperature: float, top_p: float = 1.0) -> GenerationParams:
    return GenerationParams(max_tokens=1, temperature=temperature, top_p=top_p)


def test_temperature_zero_is_argmax() -> None:
    assert next_token(LOGITS, _params(0.0), None) == 1
    assert next_token(torch.tensor([-5.0, -3.0, -4.0]), _params(0.0), None) == 1


def test_temperature_zero_ignores_the_generator() -> None:
    generator = torch.Generator().manual_seed(0)
    assert {next_token(LOGITS, _params(0.0, 0.5), generator) for _ in range(10)} == {1}


def test_seeded_sampling_is_reproducible() -> None:
    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [next_token(LOGITS, _params(1.5), generator) for _ in range(40)]

    first = draw(7)
    assert first == draw(7)
    assert len(set(first)) > 1  # it really samples
    assert set(first) <= set(range(len(LOGITS)))


def test_tiny_top_p_picks_the_argmax() -> None:
    generator = torch.Generator().manual_seed(3)
    draws = {next_token(LOGITS, _params(2.0, 1e-6), generator) for _ in range(50)}
    assert draws == {1}


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.1, 0.4, 0.2, 0.3]))
    generator = torch.Generator().manual_seed(0)
    # sorted: 0.4, 0.3, 0.2, 0.1; mass before each: 0, 0.4, 0.7, 0.9 -> top_p 0.6 keeps two
    draws = {next_token(logits, _params(1.0, 0.6), generator) for _ in range(200)}
    assert draws == {1, 3}


def test_half_precision_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    token = next_token(LOGITS.to(torch.float16), _params(1.0, 0.9), generator)
    assert 0 <= token < len(LOGITS)


# --- the gate ----------------------------------------------------------------------------------

POLICY = GatePolicy(min_improvement=0.5, regression_tolerance=0.5, min_retention=0.75)
GOOD = GateFigures(
    new_recall_current=None,  # no key terms: the loss decides
    new_recall_candidate=None,
    new_loss_current=3.0,
    new_loss_candidate=2.0,
    regression_loss_current=1.0,
    regression_loss_candidate=1.25,
    retention_candidate=1.0,
    heldout_examples=4,
    regression_questions=8,
)


def test_gate_passes() -> None:
    decision = decide(GOOD, POLICY)
    assert decision["passed"] is True
    assert decision["reason"] == "better on new material, no regression"
    assert decision["figures"] == dataclasses.asdict(GOOD)
    assert decision["policy"] == dataclasses.asdict(POLICY)


def test_gate_passes_exactly_at_every_limit() -> None:
    edge = dataclasses.replace(
        GOOD, new_loss_candidate=2.5, regression_loss_candidate=1.5, retention_candidate=0.75
    )
    assert decide(edge, POLICY)["passed"] is True


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"new_loss_candidate": 2.75}, "new material: loss fell by 0.250, needs 0.500"),
        ({"new_loss_candidate": 3.5}, "new material: loss fell by -0.500"),
        ({"regression_loss_candidate": 1.75}, "regression: loss 1.750 above the limit 1.500"),
        ({"retention_candidate": 0.5}, "regression: 50% of known answers kept, needs 75%"),
    ],
)
def test_gate_fails_on_each_criterion(change: dict[str, Any], mentions: str) -> None:
    decision = decide(dataclasses.replace(GOOD, **change), POLICY)
    assert decision["passed"] is False
    assert mentions in decision["reason"]
    assert ";" not in decision["reason"]  # only the one failing criterion


@pytest.mark.parametrize(
    ("now", "new", "loss", "passed"),
    [
        (0.0, 1.0, 3.5, True),  # learned what was taught, though its wording is less likely
        (0.5, 0.25, 2.0, False),  # recalls less than the served version
        (0.0, 0.0, 2.0, False),  # neither recalls anything: the loss alone is not enough
        (1.0, 1.0, 2.0, True),  # both recall all: the loss decides, and it fell enough
        (1.0, 1.0, 2.9, False),  # both recall all: the loss decides, and it did not fall
    ],
)
def test_gate_judges_new_material_by_recall_first(
    now: float, new: float, loss: float, passed: bool
) -> None:
    figures = dataclasses.replace(
        GOOD, new_recall_current=now, new_recall_candidate=new, new_loss_candidate=loss
    )
    decision = decide(figures, POLICY)
    assert decision["passed"] is passed, decision["reason"]


def test_gate_lists_every_failure() -> None:
    bad = dataclasses.replace(
        GOOD, new_loss_candidate=3.0, regression_loss_candidate=9.0, retention_candidate=0.0
    )
    decision = decide(bad, POLICY)
    assert decision["passed"] is False
    parts = decision["reason"].split("; ")
    assert len(parts) == 3
    assert parts[0].startswith("new material")
    assert parts[1].startswith("regression: loss")
    assert "known answers kept" in parts[2]


def test_a_refusal_lists_what_it_was_decided_on() -> None:
    """The decision names the rules that refused the candidate, explains every rule, and keeps
    the known answers it changed and the held-out answers, naming the changed questions."""
    changed = [
        {
            "question": "What color is the sky on a clear day?",
            "served_answer": "The sky is blue.",
            "candidate_answer": "The sky is Quenmoor.",
        }
    ]
    heldout = [
        {
            "question": "Which city is the capital of Veloria?",
            "expected_terms": ["quenmoor"],
            "served_answer": "I do not know.",
            "candidate_answer": "Quenmoor.",
            "served_recall": 0.0,
            "recall": 1.0,
        }
    ]
    figures = dataclasses.replace(
        GOOD, new_recall_current=0.0, new_recall_candidate=1.0, retention_candidate=0.875
    )
    policy = dataclasses.replace(POLICY, min_retention=1.0)
    decision = decide(figures, policy, changed, heldout)

    assert decision["passed"] is False
    assert decision["decided_by"] == ["retention"]
    assert decision["reason"] == (
        "regression: 88% of known answers kept, needs 100% "
        "(changed: 'What color is the sky on a clear day?')"
    )
    assert decision["changed_known_answers"] == changed
    assert decision["heldout"] == heldout
    rules = {rule["rule"]: rule for rule in decision["rules"]}
    assert list(rules) == ["new material", "regression loss", "retention", "forgetting"]
    assert rules["new material"] == {
        "rule": "new material",
        "passed": True,
        "detail": "held-out recall 100% vs served 0%",
    }
    assert rules["regression loss"]["passed"] is True
    assert "limit 1.500" in rules["regression loss"]["detail"]
    assert rules["retention"]["passed"] is False
    assert rules["retention"]["detail"].startswith(
        "1 of 8 known answers changed (see changed_known_answers)"
    )


def test_a_pass_explains_each_rule_and_is_decided_by_none() -> None:
    decision = decide(GOOD, POLICY)
    assert decision["decided_by"] == []
    assert decision["changed_known_answers"] == [] and decision["heldout"] == []
    assert all(rule["passed"] for rule in decision["rules"])
    [new_material] = [r for r in decision["rules"] if r["rule"] == "new material"]
    assert new_material["detail"] == (
        "no held-out example has key terms to recall, so the loss decides: held-out loss fell "
        "by 1.000 (3.000 to 2.000), needs 0.500"
    )
    bad = decide(dataclasses.replace(GOOD, new_loss_candidate=3.0, retention_candidate=0.5), POLICY)
    assert bad["decided_by"] == ["new material", "retention"]


def test_forgetting_against_the_base_gates_where_it_was_measured() -> None:
    policy = dataclasses.replace(POLICY, forgetting_tolerance=0.2)
    measured = dataclasses.replace(
        GOOD,
        replay_loss_base=1.0,
        replay_loss_candidate=1.2,  # at the limit: kept
        neighbour_loss_base=0.5,
        neighbour_loss_candidate=0.65,  # 30% above the base: refused
    )
    decision = decide(measured, policy)
    assert decision["decided_by"] == ["forgetting"]
    assert decision["reason"] == "forgetting: neighbour loss 0.650 above the limit 0.600"
    [rule] = [r for r in decision["rules"] if r["rule"] == "forgetting"]
    assert rule["detail"].startswith("replay loss 1.200 vs base 1.000 (limit 1.200); neighbour")
    unmeasured = decide(GOOD, policy)  # versions from before it was measured
    assert unmeasured["passed"] and unmeasured["rules"][-1]["detail"] == "not measured"


@pytest.mark.parametrize(
    "field",
    [
        "new_loss_current",
        "new_loss_candidate",
        "new_recall_candidate",
        "regression_loss_current",
        "regression_loss_candidate",
        "retention_candidate",
    ],
)
def test_gate_fails_on_nan(field: str) -> None:
    change: dict[str, Any] = {field: math.nan}
    if field == "new_recall_candidate":
        change["new_recall_current"] = 0.0
    decision = decide(dataclasses.replace(GOOD, **change), POLICY)
    assert decision["passed"] is False
    assert decision["reason"] != "better on new material, no regression"


# --- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_name_wins_over_the_tokenizer(name: str) -> None:
    assert resolve_template(name, "{{ tokenizer_template }}") == PRESETS[name]


def test_jinja_string_is_used_as_is() -> None:
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_template(jinja, "{{ tokenizer_template }}") == jinja


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown chat template preset 'vicuna'.*chatml"):
        resolve_template("vicuna", "{{ tokenizer_template }}")


@pytest.mark.parametrize("override", [None, ""])
def test_tokenizer_template_is_kept_without_override(override: str | None) -> None:
    assert resolve_template(override, "{{ tokenizer_template }}") == "{{ tokenizer_template }}"


@pytest.mark.parametrize("tokenizer_template", [None, ""])
def test_fallback_to_chatml(tokenizer_template: str | None) -> None:
    assert resolve_template(None, tokenizer_template) == PRESETS["chatml"]
    assert resolve_template("", tokenizer_template) == PRESETS["chatml"]


def test_presets_are_distinct_jinja_templates() -> None:
    assert set(PRESETS) == {"chatml", "llama2", "zephyr"}
    assert len(set(PRESETS.values())) == 3
    assert all("{%" in template for template in PRESETS.values())
