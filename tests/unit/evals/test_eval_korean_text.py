"""Korean text measures used by the Ko-IFEval checks."""

import pytest

from kollm.evals import korean_text as kt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("나는 학교에 간다", 3),
        ("오늘은   날씨가\n좋다.", 3),
        ("서울, 부산, 대구 — 세 도시", 5),  # a lone dash is not a word
        ("AI 모델을 2026년에 배포했다.", 4),
        ("", 0),
    ],
)
def test_count_words_counts_eojeol(text, expected):
    assert kt.count_words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("봄이 왔다. 꽃이 핀다! 정말 좋지?", ["봄이 왔다.", "꽃이 핀다!", "정말 좋지?"]),
        ("첫 줄은 마침표가 없다\n둘째 줄도 없다", ["첫 줄은 마침표가 없다", "둘째 줄도 없다"]),
        ("가격은 3.5만 원입니다. 할인은 없습니다.", ["가격은 3.5만 원입니다.", "할인은 없습니다."]),
        ("“정말요?” 그가 물었다. 나는 웃었다…", ["“정말요?”", "그가 물었다.", "나는 웃었다…"]),
        ("전각 문장부호도 됩니다！ 그렇죠？", ["전각 문장부호도 됩니다！", "그렇죠？"]),
        ("...", []),
    ],
)
def test_split_sentences_korean(text, expected):
    assert kt.split_sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("안녕하세요, 반갑습니다.", "ko"),
        ("LLM 배포 파이프라인에서 GGUF와 vLLM을 비교했습니다.", "ko"),  # Korean with English terms is Korean
        ("This answer is written in English.", "en"),
        ("これは日本語の文章です。", "ja"),
        ("这是中文句子。", "zh"),
        ("Это русский текст.", "ru"),
        ("12345 !!!", None),
    ],
)
def test_detect_language_recognises_hangul(text, expected):
    assert kt.detect_language(text) == expected


@pytest.mark.parametrize(
    ("sentence", "style", "expected"),
    [
        ("회의는 오후 세 시에 시작합니다.", "hapsyo", True),
        ("참석 여부를 알려 주십시오.", "hapsyo", True),
        ("함께 준비합시다!", "hapsyo", True),
        ("자료는 메일로 보낼게요.", "hapsyo", False),
        ("자료는 메일로 보낼게요.", "haeyo", True),
        ("내일 봐요 😊", "haeyo", True),
        ("그렇죠?", "any", True),
        ("회의는 세 시에 시작한다.", "any", False),
        ("밥 먹었어?", "any", False),
        ("하시다", "any", False),  # 시다 without the ㅂ of -ㅂ시다 is not a formal suggestion
        ("2026-01-01", "hapsyo", True),  # no Hangul: not judged
    ],
)
def test_is_honorific(sentence, style, expected):
    assert kt.is_honorific(sentence, style) is expected
