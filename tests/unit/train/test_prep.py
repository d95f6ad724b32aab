"""`kollm data prep`: normalisation, HTML, PII masking, filters, exact and near-duplicate removal, report."""

import json
import unicodedata

import pytest

from kollm.errors import DataFormatError
from kollm.train.prep import PrepConfig, clean_text, korean_ratio, mask_pii, run_prep


@pytest.mark.parametrize(
    ("text", "masked", "kind"),
    [
        ("제 주민번호는 900101-1234567 입니다", "제 주민번호는 [주민등록번호] 입니다", "rrn"),
        ("연락처 010-1234-5678 로 주세요", "연락처 [전화번호] 로 주세요", "phone"),
        ("대표번호 02-345-6789", "대표번호 [전화번호]", "phone"),
        ("국제 +82 10-9876-5432", "국제 [전화번호]", "phone"),
        ("메일 hong.gildong@example.co.kr 로", "메일 [이메일] 로", "email"),
        ("입금 계좌 110-234-567890 (신한)", "입금 계좌 [계좌번호] (신한)", "account"),
    ],
)
def test_pii_is_masked(text, masked, kind):
    counts: dict[str, int] = {}
    assert mask_pii(text, counts) == masked
    assert counts == {kind: 1}


@pytest.mark.parametrize("text", ["2026-01-15 회의", "가격은 12,000원", "991332-1234567 은 날짜가 아니다", "3-4-5"])
def test_non_pii_numbers_stay(text):
    assert mask_pii(text) == text


def test_clean_text_normalises_and_strips_html():
    decomposed = unicodedata.normalize("NFD", "한국어")
    out = clean_text(f"<p>{decomposed}&nbsp;<b>모델</b></p><script>alert(1)</script>", PrepConfig())
    assert out == "한국어 모델"
    assert unicodedata.is_normalized("NFC", out)
    assert clean_text("ＡＢＣ　가나", PrepConfig(normalization="NFKC")) == "ABC 가나"


def test_korean_ratio():
    assert korean_ratio("한국어 문장") == 1.0
    assert korean_ratio("hello 세계") == pytest.approx(2 / 7)
    assert korean_ratio("12345") == 0.0


def test_run_prep_txt_report(tmp_path):
    base = (
        "오늘은 서울의 한 카페에서 인공지능 모델 배포에 대한 회의를 열었고 여러 의견이 오갔다. "
        "보안 담당자는 개인정보가 학습 데이터에 섞이지 않도록 점검 절차를 먼저 만들자고 제안했다."
    )
    lines = [
        base,
        base,  # exact duplicate
        base.replace("여러 의견이", "많은 의견이"),  # near duplicate (one word changed)
        "짧다",
        "This line is entirely English and should be dropped by the ratio filter.",
        "<div>연락은 010-2222-3333 으로, 메일은 a.b@corp.kr 로 보내 주시면 됩니다.</div>",
        "부산 해운대의 여름 바다는 언제나 관광객으로 붐비고 밤에는 불꽃 축제가 열린다",
    ]
    src = tmp_path / "raw.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_prep(PrepConfig(), input_path=src, output_path=tmp_path / "clean.txt", report_path=tmp_path / "r.json")
    kept = (tmp_path / "clean.txt").read_text(encoding="utf-8").splitlines()
    assert result.total == 7 and result.kept == 3 == len(kept)
    assert result.dropped == {"exact_duplicate": 1, "near_duplicate": 1, "too_short": 1, "low_korean_ratio": 1}
    assert result.examples["exact_duplicate"] == [2] and result.examples["near_duplicate"] == [3]
    assert kept[1] == "연락은 [전화번호] 으로, 메일은 [이메일] 로 보내 주시면 됩니다."
    assert result.masked == {"phone": 1, "email": 1}
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["dropped"]["near_duplicate"] == 1 and report["config"]["near_dup_threshold"] == 0.8


def test_run_prep_jsonl_keeps_roles_and_names_bad_line(tmp_path):
    src = tmp_path / "sft.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "제 번호는 010-1111-2222 예요, 기억해 주세요"},
            {"role": "assistant", "content": "네, 알겠습니다."},
        ]
    }
    src.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    run_prep(PrepConfig(), input_path=src, output_path=tmp_path / "out.jsonl")
    out = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert out["messages"][0] == {"role": "user", "content": "제 번호는 [전화번호] 예요, 기억해 주세요"}
    src.write_text(json.dumps(record) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2: not valid JSON"):
        run_prep(PrepConfig(), input_path=src, output_path=tmp_path / "out.jsonl")
