"""The token label (the non-LLM feature label) on hand-built features in circuit-tracer's
per-feature format: variant merging, junk dropped from the promotes part, the output-centric
heuristic and its output-first wording, features without examples, ties, bad input."""

from __future__ import annotations

import copy
import json

import pytest

from circuitflow.interp.examples import trivial_explanation
from circuitflow.interp.token_label import (
    TokenLabelError,
    input_groups,
    input_token_variants,
    output_centric,
    token_label_fields,
)

# top logits of a feature of the tiny test model's random transcoder: unrelated words and pieces
RANDOM_LOGITS = [" cuc", " Essay", " Wow", " braking", " predecessors", "eworthy", " untreated", " nebul",
                 " correlations", "ocaust"]
CITY_LOGITS = [" Paris", " France", " Lyon", " French", " Marseille", " Europe", " Bordeaux", "ed", " the", "\ufffd"]
DIVERSE = [" the", " in", " of", " to", " and", " a", " for", " on", " with", " at"]


def example(peak_token: str, act: float, before=(" We", " went", " to")) -> dict:
    tokens = [*before, peak_token, " today", "."]
    acts = [0.0] * len(tokens)
    acts[len(before)] = act
    return {"tokens": tokens, "tokens_acts_list": acts, "train_token_ind": len(before),
            "is_repeated_datapoint": False}


def feature(peaks: list[str], top_logits: list[str] | None = None, index: int = 7, **extra) -> dict:
    top = [example(token, 10.0 - 0.1 * i) for i, token in enumerate(peaks)]
    return {"index": index, "layer": 0, "feature": index, "top_logits": list(top_logits or []),
            "bottom_logits": [" Zimbabwe", " quantum"],
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": top},
                                   {"quantile_name": "Random samples", "examples": top[:1]}], **extra}


def test_variants_merge_in_both_parts_and_show_the_most_frequent_form():
    # "Paris" is the strongest example but " Paris" the most frequent form of the group
    f = feature(["Paris", " Paris", " London", " paris", " Paris", " London", " PARIS"],
                [" London", " Paris", "Paris", " LONDON", " paris", " Rome"])
    groups = input_groups(f)
    assert [(shown, count) for shown, count, _ in groups] == [(" Paris", 5), (" London", 2)]
    assert sum(count for _, count, _ in groups) == 7  # every activating example counted once
    assert set(input_token_variants(f, 1)) == {"Paris", " Paris", " paris", " PARIS"}
    fields = token_label_fields(f)
    assert fields["input_tokens"] == [" Paris", " London"]
    assert fields["output_tokens"] == [" London", " Paris", " Rome"]  # logit order, variants merged
    assert fields["label"] == 'Fires on the tokens " Paris", " London"; promotes " London", " Paris", " Rome".'


def test_fragments_and_subword_junk_leave_the_promotes_part_but_not_the_inputs():
    f = feature(["\ufffd", "\ufffd", "ed", " cat"],
                ["\ufffd", "ed", " Paris", ",", " London", "\ufffd\ufffd", "s", "\n", " Rome", "ocaust"])
    fields = token_label_fields(f)
    assert fields["input_tokens"] == ["\ufffd", "ed", " cat"]  # it does fire on them
    assert fields["output_tokens"] == [" Paris", " London", " Rome"]
    assert "\ufffd" not in fields["label"].split("promotes")[1]


def test_continuation_pieces_count_as_junk_only_where_words_start_with_a_space():
    logits = [" marked", "ocaust", " Paris"]
    assert token_label_fields(feature([" a"], logits))["output_tokens"] == [" marked", " Paris"]
    # a vocabulary that decodes words without a leading space: "ocaust" may be a word there
    unmarked = feature(["a"], ["marked", "ocaust", "Paris"], bottom_logits=["Zimbabwe"])
    for e in unmarked["examples_quantiles"][0]["examples"]:
        e["tokens"] = [t.strip() or t for t in e["tokens"]]
    assert token_label_fields(unmarked)["output_tokens"] == ["marked", "ocaust", "Paris"]
    # two-letter lowercase pieces are junk either way
    assert token_label_fields(feature(["a"], ["ed", "Paris"]))["output_tokens"] == ["Paris"]


def test_punctuation_is_kept_when_it_is_all_a_feature_promotes():
    fields = token_label_fields(feature([" x"], [",", "\ufffd", ".", " ;", ","]))
    assert fields["output_tokens"] == [",", ".", " ;"]
    assert fields["label"] == 'Fires on the tokens " x"; promotes ",", ".", " ;".'


def test_diverse_inputs_and_coherent_outputs_make_an_output_first_label():
    f = feature(DIVERSE, CITY_LOGITS)  # 7 of 10 merged logits are capitalised words
    assert output_centric(f)
    fields = token_label_fields(f)
    assert fields["output_centric"] is True
    assert fields["output_tokens"] == [" Paris", " France", " Lyon", " French", " Marseille"]
    assert fields["input_tokens"] == DIVERSE[:5]
    assert fields["label"] == ('Promotes " Paris", " France", " Lyon", " French", " Marseille" (output-centric); '
                               'fires on diverse tokens such as " the", " in", " of".')


def test_a_stem_family_or_one_script_is_coherent_and_plain_lowercase_words_are_not():
    family = [" connect", " connection", " connected", " dog", " blue", " ran", " very", " tax", " pie", " up"]
    assert output_centric(feature(DIVERSE, family))
    variants = [" Paris", "Paris", " paris", " dog", " blue", " ran", " very", " tax", " pie", " up"]
    assert output_centric(feature(DIVERSE, variants))
    cyrillic = [" Москва", " город", " река", " дом", " лес", " мир", " день", "ed", " the", " a"]
    assert output_centric(feature(DIVERSE, cyrillic))
    numbers = [" 1990", " 1991", " 2001", " 12", " 7", " 1,000", " 3.5", " and", " of", " a"]
    assert output_centric(feature(DIVERSE, numbers))
    assert not output_centric(feature(DIVERSE, RANDOM_LOGITS))
    lowercase = [" dog", " blue", " ran", " very", " tax", " pie", " up", " sea", " hot", " odd"]
    assert not output_centric(feature(DIVERSE, lowercase))  # what any direction promotes
    six_of_ten = [" Paris", " France", " Lyon", " French", " Marseille", " Europe", " dog", " blue", " ran", " up"]
    assert not output_centric(feature(DIVERSE, six_of_ten))  # under the 70% kind share


def test_one_dominant_input_token_keeps_the_input_first_label():
    f = feature([" Paris"] * 7 + [" in", " of", " to"], CITY_LOGITS)
    fields = token_label_fields(f)
    assert not output_centric(f) and fields["output_centric"] is False
    assert fields["label"].startswith('Fires on the tokens " Paris", " in", " of", " to"; promotes " Paris"')
    # diverse but too few examples to tell
    assert not output_centric(feature(DIVERSE[:4], CITY_LOGITS))
    # 3 of 10 is the most a "diverse" feature's top token may cover
    assert output_centric(feature([" the"] * 3 + DIVERSE[1:8], CITY_LOGITS))
    assert not output_centric(feature([" the"] * 4 + DIVERSE[1:7], CITY_LOGITS))


def test_features_without_examples_fire_rarely():
    bare = {"index": 3, "top_logits": [" Paris", "\ufffd"]}
    assert token_label_fields(bare) == {"label": 'Fires rarely; promotes " Paris".', "output_centric": False,
                                        "input_tokens": [], "output_tokens": [" Paris"]}
    assert token_label_fields({"index": 3, "examples_quantiles": []})["label"] == "Fires rarely."
    silent = feature([" a", " b"], CITY_LOGITS)
    for e in silent["examples_quantiles"][0]["examples"]:
        e["tokens_acts_list"] = [0.0] * len(e["tokens"])
    assert token_label_fields(silent)["label"].startswith('Fires rarely; promotes " Paris"')
    assert token_label_fields(feature([" a"], []))["label"] == 'Fires on the tokens " a".'


def test_ties_break_by_first_appearance_and_the_label_is_deterministic():
    f = feature([" b", " a", " a", " b", " c"], [" Rome", "Rome", " Oslo"])
    assert token_label_fields(f)["input_tokens"] == [" b", " a", " c"]  # " b" and " a" tie: strongest first
    # surface forms tie: the one seen first (the stronger example / the higher logit) is shown
    assert token_label_fields(feature(["Paris", " Paris"], []))["input_tokens"] == ["Paris"]
    assert token_label_fields(f)["output_tokens"] == [" Rome", " Oslo"]
    again = json.loads(json.dumps(f))
    assert [token_label_fields(again) for _ in range(3)] == [token_label_fields(f)] * 3
    swapped = copy.deepcopy(f)
    examples = swapped["examples_quantiles"][0]["examples"]
    examples[0], examples[1] = examples[1], examples[0]  # now " a" is seen first
    assert token_label_fields(swapped)["input_tokens"] == [" a", " b", " c"]


def test_trivial_explanation_is_the_token_label_and_quotes_stay_readable():
    f = feature(DIVERSE, CITY_LOGITS)
    assert trivial_explanation(f) == token_label_fields(f)["label"]
    quoted = token_label_fields(feature(['"', "\n"], [' "Hello']))["label"]
    assert quoted == 'Fires on the tokens "\\"", "\'\\n\'"; promotes " \\"Hello".'


def test_bad_feature_json_names_the_feature_and_the_fix():
    broken = feature([" a"], [" b"], index=42)
    del broken["examples_quantiles"][0]["examples"][0]["train_token_ind"]
    with pytest.raises(TokenLabelError, match=r"feature 42: example 0 of 'Top activations' lacks .*collect_features"):
        token_label_fields(broken)
    outside = feature([" a"], [" b"], index=42)
    outside["examples_quantiles"][0]["examples"][0]["train_token_ind"] = 99
    with pytest.raises(TokenLabelError, match="train_token_ind 99 outside its 6 tokens"):
        token_label_fields(outside)
    with pytest.raises(TokenLabelError, match="feature 42: top_logits must be a list of token strings"):
        token_label_fields(feature([" a"], index=42) | {"top_logits": " Paris"})
    with pytest.raises(TokenLabelError, match="must be a JSON object"):
        token_label_fields([" a"])
