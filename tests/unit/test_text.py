"""reconciler.domain.text: what makes live and config text safe to show (terminal, markdown, YAML)."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from reconciler.adoption.yamledit import yaml_scalar
from reconciler.domain.text import html_text, inert, is_inert, json_text, md, md_code, told_apart

UNSAFE = ["\x00", "\x07", "\x08", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u061c", "\u200e", "\u200f",
          "\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
          "\u2069", "\ufeff", "\ud800", "\udfff"]


@pytest.mark.parametrize("ch", UNSAFE)
def test_inert_shows_every_unsafe_character_escaped(ch: str) -> None:
    shown = inert(f"a{ch}b")
    assert ch not in shown
    assert shown.startswith("a\\") and shown.endswith("b")
    assert shown.isascii() and shown.isprintable()
    assert not is_inert(f"a{ch}b") and is_inert(shown)


def test_inert_forms() -> None:
    assert inert("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert inert("a\r\nb\tc") == "a\\r\\nb\\tc"
    assert inert("\u202etxt.exe") == "\\u202etxt.exe"
    assert inert("\x9b") == "\\x9b"
    assert inert(42) == "42"


def test_inert_leaves_ordinary_text_alone() -> None:
    for text in ("SharePoint ContosoFlows", "Café Ünïcode — ✓ ✗ →", "日本語の名前", "emoji 👍🏽 ZWJ 👩‍💻",
                 "path\\to\\file", "a `b` [c](d) <e>"):
        assert inert(text) == text
        assert is_inert(text)


def test_md_escapes_markup_made_of_data() -> None:
    assert md("`code`") == "\\`code\\`"
    assert md("[link](https://evil.example)") == "\\[link\\](https:&#8203;//evil.example)"
    assert md("![img](x)") == "\\!\\[img\\](x)"
    assert md("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md("a|b") == "a\\|b"
    assert md("@admin and svc@contoso.com") == "@&#8203;admin and svc@&#8203;contoso.com"
    assert md("*bold* _it_ ~~s~~") == "\\*bold\\* \\_it\\_ \\~\\~s\\~\\~"
    assert md("www.evil.example") == "www&#8203;.evil.example"
    assert md("&amp;") == "&amp;amp;"
    assert md("\x1b[2J") == "\\\\x1b\\[2J"  # inert first, then its backslash kept literal


@pytest.mark.parametrize(("text", "shown"), [("# title", "\\# title"), ("- item", "\\- item"),
                                             ("+ item", "\\+ item"), ("12. item", "12\\. item"),
                                             ("3) item", "3\\) item"), ("> quote", "&gt; quote")])
def test_md_escapes_a_block_marker_at_the_start(text: str, shown: str) -> None:
    assert md(text) == shown


def test_md_keeps_plain_names_readable() -> None:
    assert md("contoso_SharePoint") == "contoso_SharePoint"  # intraword: no emphasis possible
    assert md("SharePoint ContosoFlows (owner svc)") == "SharePoint ContosoFlows (owner svc)"


def test_md_code() -> None:
    assert md_code("contoso_X") == "`contoso_X`"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x") == "`` `x ``"
    assert md_code("a|b", table=True) == "`a\\|b`"
    assert md_code("\x1b[31m") == "`\\x1b[31m`"


def test_html_text() -> None:
    assert html_text('<b a="1">@x</b>\x07') == "&lt;b a=&quot;1&quot;&gt;@&#8203;x&lt;/b&gt;\\x07"


def _random_text(rng: random.Random) -> str:
    alphabet = [*UNSAFE, "a", "Z", "0", " ", ":", "#", "'", '"', "-", "?", "{", "[", "&", "*", "!", "|", ">",
                "%", "@", "`", "é", "日", "👍"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_yaml_scalar_round_trips_and_holds_nothing_raw() -> None:
    rng = random.Random(16)
    for _ in range(2000):
        value = _random_text(rng)
        text = yaml_scalar(value)
        assert is_inert(text), (value, text)
        assert yaml.safe_load(f"k: {text}\n")["k"] == value, (value, text)
        assert yaml.safe_load(f"{yaml_scalar(value)}: 1\n") == {value: 1} or value == ""


def test_a_change_made_only_of_characters_no_one_sees_is_shown_with_them_escaped() -> None:
    before, after = told_apart("Microsoft\u200b Dataverse\u00a0Flows\u00ad", "Microsoft Dataverse Flows")
    assert before == "Microsoft\\u200b Dataverse\\u00a0Flows\\u00ad" and after == "Microsoft Dataverse Flows"
    # A visible change is shown as it is: an emoji keeps its joiner, a no-break space stays one.
    assert told_apart("family \U0001F468\u200d\U0001F469", "family") == ("family \U0001F468\u200d\U0001F469",
                                                                         "family")
    assert told_apart("a\u00a0b", "c d") == ("a\u00a0b", "c d")
    assert told_apart("same", "same") == ("same", "same")


def test_markdown_makes_no_issue_reference_out_of_data() -> None:
    shown = md("fixes #12, see contoso/flows#7; C# and # alone stay")
    assert "#12" not in shown and "#7" not in shown
    assert "#&#8203;12" in shown and "flows#&#8203;7" in shown and "C# and # alone" in shown


def test_json_text_escapes_what_could_act_on_a_terminal_and_keeps_the_value() -> None:
    value = {"name": "x\u202ey\ud800 \u00e9 \U0001F600 \x85\x1b[2J", "n": [1, 2]}
    text = json_text(json.dumps(value, indent=2, ensure_ascii=False))
    assert json.loads(text) == value
    assert is_inert(text.replace("\n", " "))  # the indentation's newlines are the only raw control
    assert "\u00e9" in text and "\U0001F600" in text  # readable text stays as it is
    text.encode("utf-8")  # a lone surrogate has become its escape
