"""The judge's prompts: classification (the seed's taxonomy, categories from config),
explanation, and the yes/no questions of detection and fuzzing scoring.

Adapted from the seed's prompts (shared/reference/seed-formats.md §6-7) for any model and
corpus: the seed's text assumed a math-reasoning model. Scoring asks about one snippet per
request, so the answer is a single yes/no token whose logprobs give a probability (AUROC), and
a weak judge cannot lose track of a numbered list.
"""

from __future__ import annotations

from circuitflow.interp.examples import Snippet, quote

FEATURE_WORD = "feature"


def _examples_block(examples: list[Snippet], with_acts: bool) -> str:
    lines = []
    for i, s in enumerate(examples, 1):
        act = f" (act={s.acts[s.peak]:.2f})" if with_acts else ""
        lines.append(f"Example {i}{act}:\n{s.marked()}")
    return "\n\n".join(lines)


def _logits_line(feature: dict) -> str:
    return ", ".join(f'"{quote(t)}"' for t in feature.get("top_logits", [])[:10]) or "(none)"


def feature_name(feature: dict) -> str:
    return f"L{feature['layer']}F{feature['feature']}"


def classification_schema(categories: dict, domain_types: dict, mechanisms: dict) -> dict:
    """The classification reply's JSON schema (category first: a reply cut off still names it)."""
    properties = {"category": {"type": "string", "enum": list(categories)},
                  "confidence": {"type": "string", "enum": ["high", "medium", "low"]},
                  "category_description": {"type": "string"},
                  "reasoning": {"type": "string"}}
    if "domain" in categories and domain_types:
        properties["domain_type"] = {"type": "string", "enum": list(domain_types)}
    if "reasoning" in categories and mechanisms:
        properties["mechanism"] = {"type": "string", "enum": list(mechanisms)}
        for name in ("mechanism_description", "input_pattern", "output_pattern"):
            properties[name] = {"type": "string"}
    return {"type": "object", "properties": properties,
            "required": ["category", "confidence", "category_description"]}


def classification_messages(feature: dict, examples: list[Snippet], categories: dict, domain_types: dict,
                            mechanisms: dict) -> list[dict]:
    category_lines = "\n".join(f"- {name}: {text}" for name, text in categories.items())
    # Fields are described in words, never as a template with placeholder values: a weak
    # model copies a template's "..." verbatim.
    extra, fields = [], [f"category: one of {', '.join(categories)}",
                         "confidence: high, medium or low",
                         "category_description: one sentence, in your own words, on what the feature responds to",
                         "reasoning: a short analysis of the pattern"]
    if "domain" in categories and domain_types:
        extra.append("If the category is domain, give domain_type: one of "
                     + ", ".join(f"{k} ({v})" for k, v in domain_types.items()) + ".")
        fields.append(f"domain_type: one of {', '.join(domain_types)} (domain only)")
    if "reasoning" in categories and mechanisms:
        extra.append("If the category is reasoning, give its mechanism: one of "
                     + ", ".join(f"{k} ({v})" for k, v in mechanisms.items()) + ".")
        fields += [f"mechanism: one of {', '.join(mechanisms)} (reasoning only)",
                   "mechanism_description, input_pattern and output_pattern: one sentence each (reasoning only)"]
    system = ("You are a meticulous AI researcher analysing features of a transcoder (a sparse "
              "replacement of a language model's MLP layer). Classify the feature from the contexts "
              "where it activates and the tokens it promotes.\n\nCategories:\n" + category_lines
              + ("\n\n" + "\n".join(extra) if extra else "")
              + "\n\nReply with only a JSON object with these fields, in this order:\n"
              + "\n".join(f"- {f}" for f in fields))
    user = (f"Analyze feature {feature_name(feature)}:\n\n"
            f"## Top logits (tokens this feature promotes when active):\n{_logits_line(feature)}\n\n"
            "## Activating examples (<<<token>>> marks where the feature activates):\n"
            f"{_examples_block(examples, with_acts=False)}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


EXPLANATION_SCHEMA = {"type": "object",
                      "properties": {"description": {"type": "string"}, "reasoning": {"type": "string"}},
                      "required": ["description"]}
EXPLANATION_SYSTEM = (
    "You are a meticulous AI researcher investigating one feature of a language model. You see "
    "text excerpts where it activates; <<<token>>> marks the token it activates on (never use the "
    "markers in your answer). Its activation depends only on the marked token and the tokens before "
    "it. Find what the marked tokens and their contexts have in common, and what the tokens it "
    "promotes suggest.\n\n"
    "Reply with only a JSON object with two fields, in this order: description, a phrase of 5 to 15 "
    "words in your own words that names the common pattern concretely (the words, symbols or kind "
    "of context), written so that someone could predict from it where the feature activates; and "
    "reasoning, one short sentence of evidence.")


def explanation_messages(feature: dict, examples: list[Snippet]) -> list[dict]:
    user = (f"Feature {feature_name(feature)}:\n\n{_examples_block(examples, with_acts=True)}\n\n"
            f"Tokens it promotes: {_logits_line(feature)}")
    return [{"role": "system", "content": EXPLANATION_SYSTEM}, {"role": "user", "content": user}]


def instructions(messages: list[dict]) -> str:
    """The prompt's instructions, apart from the evidence: the system message (what an echo copies)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


DETECTION_SYSTEM = ("You check whether a description of a language-model feature predicts where it activates. "
                    "You see the description and one text. Answer with one word: yes if the text contains "
                    "what the description says the feature activates on, no otherwise.")
FUZZING_SYSTEM = ("You check whether a description of a language-model feature predicts where it activates. "
                  "In the text, the tokens between << and >> are claimed to be where the feature activates. "
                  "Answer with one word: yes if the marked tokens fit the description, no otherwise.")


def detection_messages(description: str, text: str) -> list[dict]:
    return [{"role": "system", "content": DETECTION_SYSTEM},
            {"role": "user", "content": f"Description: {description}\n\nText: {text}\n\n"
                                        "Does the feature activate on this text? Answer yes or no."}]


def fuzzing_messages(description: str, highlighted_text: str) -> list[dict]:
    return [{"role": "system", "content": FUZZING_SYSTEM},
            {"role": "user", "content": f"Description: {description}\n\nText: {highlighted_text}\n\n"
                                        "Are the marked tokens where the feature activates? Answer yes or no."}]
