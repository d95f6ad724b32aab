"""Ko-IFEval instruction checks on Korean responses, strict and loose."""

import pytest

from kollm.evals import ko_ifeval


@pytest.mark.parametrize(
    ("instruction", "kwargs", "response", "expected"),
    [
        (
            "length_constraints:number_words",
            {"num_words": 5, "relation": "at least"},
            "나는 오늘 아침에 학교에 갔다.",
            True,
        ),
        (
            "length_constraints:number_words",
            {"num_words": 5, "relation": "less than"},
            "나는 오늘 아침에 학교에 갔다.",
            False,
        ),
        (
            "length_constraints:number_sentences",
            {"num_sentences": 3, "relation": "less than"},
            "봄이다. 꽃이 핀다.",
            True,
        ),
        (
            "length_constraints:number_sentences",
            {"num_sentences": 3, "relation": "at least"},
            "봄이다.\n꽃이 핀다\n새가 운다",
            True,
        ),
        ("language:response_language", {"language": "ko"}, "김치는 발효 음식입니다.", True),
        ("language:response_language", {"language": "ko"}, "Kimchi is fermented.", False),
        ("keywords:existence", {"keywords": ["서울", "부산"]}, "서울에서 부산까지 KTX로 갑니다.", True),
        (
            "keywords:frequency",
            {"keyword": "생산성", "frequency": 2, "relation": "at least"},
            "생산성이 오르고 생산성을 지킨다",
            True,
        ),
        ("keywords:frequency", {"keyword": "생산성", "frequency": 2, "relation": "at least"}, "생산성이 오른다", False),
        ("keywords:forbidden_words", {"forbidden_words": ["출근"]}, "재택근무는 출근길이 없다.", False),
        ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "category 분류", True),  # Latin: word boundaries
        (
            "keywords:letter_frequency",
            {"letter": "다", "let_frequency": 3, "let_relation": "at least"},
            "간다 온다 본다",
            True,
        ),
        ("punctuation:no_comma", {}, "사과 배 감", True),
        ("punctuation:no_comma", {}, "사과, 배", False),
        ("punctuation:no_comma", {}, "사과，배", False),
        ("startend:end_checker", {"end_phrase": "감사합니다."}, "글을 마칩니다. 감사합니다.", True),
        ("startend:end_checker", {"end_phrase": "감사합니다."}, "감사합니다. 글을 마칩니다.", False),
        ("startend:quotation", {}, "“지하철에서는 조용히 합니다.”", True),
        ("startend:quotation", {}, '"조용히 합니다."', True),
        ("startend:quotation", {}, "조용히 합니다.", False),
        ("detectable_format:title", {}, "<<한국의 사계절>>\n봄은 따뜻하다.", True),
        ("detectable_format:title", {}, "한국의 사계절\n봄은 따뜻하다.", False),
        ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* 일찍 자기\n* 커피 줄이기\n* 운동하기", True),
        ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* 일찍 자기\n* 커피 줄이기", False),
        ("detectable_format:json_format", {}, '```json\n{"도시": "부산"}\n```', True),
        ("detectable_format:json_format", {}, "부산 여행: 1일차 해운대", False),
        ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*첫째* 그리고 *둘째*", True),
        (
            "detectable_format:multiple_sections",
            {"section_spliter": "섹션", "num_sections": 2},
            "섹션 1\n가\n섹션 2\n나",
            True,
        ),
        ("detectable_format:constrained_response", {}, "제 대답은 예입니다.", True),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "첫 문단입니다.\n***\n둘째 문단입니다.", True),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "첫 문단\n***\n***\n둘째", False),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "그러나"},
            "첫 문단이다.\n\n그러나 둘째 문단이다.",
            True,
        ),
        ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[장소]에서 [시간]에 만나요", True),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "본문입니다.\nP.S. 추신입니다.", True),
        ("detectable_content:postscript", {"postscript_marker": "추신"}, "본문입니다.\n추신: 감사합니다.", True),
        ("combination:two_responses", {}, "커피가 좋다.\n******\n차가 좋다.", True),
        ("combination:two_responses", {}, "커피가 좋다.\n******\n커피가 좋다.", False),
        ("combination:repeat_prompt", {"prompt_to_repeat": "떡볶이 비결은?"}, "떡볶이 비결은? 고추장입니다.", True),
        (
            "change_case:capital_word_frequency",
            {"capital_frequency": 2, "capital_relation": "at least"},
            "AI와 LLM",
            True,
        ),
        ("change_case:english_capital", {}, "모델 이름은 KOLLM 입니다", True),
        ("change_case:english_lowercase", {}, "모델 이름은 kollm 입니다", True),
        ("change_case:english_lowercase", {}, "모두 한글입니다", False),  # no Latin letters: nothing to be lowercase
        ("ko:honorific_endings", {"style": "hapsyo"}, "회의는 세 시입니다. 참석해 주십시오.", True),
        ("ko:honorific_endings", {"style": "hapsyo"}, "회의는 세 시입니다. 꼭 와.", False),
        ("ko:honorific_endings", {}, "회의는 세 시예요. 꼭 오세요!", True),
    ],
)
def test_strict_checks(instruction, kwargs, response, expected):
    outcome = ko_ifeval.score([instruction], [kwargs], response)
    assert outcome.strict == [expected]


def test_loose_accepts_a_markdown_wrapped_answer_that_strict_rejects():
    response = "**“지하철에서는 조용히 합니다.”**"
    outcome = ko_ifeval.score(["startend:quotation"], [{}], response)
    assert outcome.strict == [False]
    assert outcome.loose == [True]


def test_loose_drops_a_leading_preamble_line():
    response = "좋아, 써 볼게!\n회의는 세 시입니다. 참석해 주십시오."
    outcome = ko_ifeval.score(["ko:honorific_endings"], [{"style": "hapsyo"}], response)
    assert (outcome.strict, outcome.loose) == ([False], [True])


def test_prompt_level_needs_every_instruction_and_null_kwargs_are_ignored():
    ids = ["punctuation:no_comma", "language:response_language"]
    kwargs = [{"language": None}, {"language": "ko", "num_words": None}]
    passing = ko_ifeval.score(ids, kwargs, "쉼표 없이 한국어로 답합니다.")
    failing = ko_ifeval.score(ids, kwargs, "쉼표가, 있습니다.")
    assert passing.prompt_strict and passing.strict == [True, True]
    assert not failing.prompt_strict and failing.strict == [False, True]


def test_empty_response_fails_everything():
    assert ko_ifeval.score(["punctuation:no_comma"], [{}], "   ").loose == [False]


def test_unknown_instruction_ids_are_reported():
    assert ko_ifeval.unknown_instructions(["punctuation:no_comma", "ko:made_up"]) == ["ko:made_up"]
