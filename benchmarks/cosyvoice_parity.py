"""Parity of the CosyVoice speed presets against upstream fp32: figures, and the test reference.

    python -m benchmarks.cosyvoice_parity --model-dir DIR [--texts N] [--out FILE]

For each preset, against upstream's own code on the same model, inputs and seed:
- LLM, teacher-forced on upstream's speech tokens: the largest logit difference relative to the
  step's largest |log-probability|, top-1 agreement over all steps, mean KL(upstream || preset);
- LLM, free-running with the same seed: how many texts give upstream's exact token sequence,
  and for the others the first step that differs and whether it is a near-tie there;
- audio of the whole engine: waveform SNR against upstream (same tokens where they agree).
Run it on the published weights to check the approximate levers there: random weights lack
the outliers of trained ones, so their figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The benchmark sentences, then texts of every supported language for free-running parity.
TEXTS: list[tuple[str, str, str]] = [
    ("zh", "中文女", "各位旅客请注意，开往机场的列车即将进站，请在黄线以外候车。"),
    ("en", "英文女", "The next train to the airport leaves from platform two in five minutes."),
    ("zh", "中文男", "本次列车终点站是上海虹桥。"),
    ("zh", "中文女", "请携带好您的随身物品，准备下车。"),
    ("zh", "中文男", "商场将于晚上十点关闭，请您合理安排购物时间。"),
    ("zh", "中文女", "前方到站北京南站，在本站下车的旅客请提前做好准备。"),
    ("en", "英文男", "Please mind the gap between the train and the platform."),
    ("en", "英文女", "Flight CA1234 to Tokyo is now boarding at gate 12."),
    ("en", "英文男", "The store will close in fifteen minutes."),
    ("en", "英文女", "Passengers for London should change at the next station."),
    ("en", "英文男", "Thank you for travelling with us today."),
    ("en", "英文女", "Smoking is not permitted anywhere on this train."),
    ("ja", "日语男", "まもなく、一番線に電車がまいります。"),
    ("ja", "日语男", "お忘れ物のないようご注意ください。"),
    ("ja", "日语男", "次は東京、東京です。"),
    ("ko", "韩语女", "다음 역은 서울역입니다."),
    ("ko", "韩语女", "열차와 승강장 사이가 넓으니 조심하십시오."),
    ("ko", "韩语女", "이 열차는 인천공항행입니다."),
    ("yue", "粤语女", "下一站係中環，請準備落車。"),
    ("yue", "粤语女", "請勿靠近車門。"),
    ("zh", "中文男", "欢迎光临，今天全场商品八折优惠。"),
    ("en", "英文男", "Platform nine for the eighteen forty-five service to Edinburgh."),
]
# A log-probability gap under this between the two chosen tokens' probabilities is a near-tie:
# rounding at the 1e-6 level may then flip a multinomial draw.
NEAR_TIE_PROBABILITY = 1e-4


@dataclass(frozen=True)
class LogitParity:
    steps: int
    max_relative_difference: float
    top1_agreement: float
    mean_kl: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "steps": self.steps,
            "max_relative_difference": self.max_relative_difference,
            "top1_agreement": self.top1_agreement,
            "mean_kl": self.mean_kl,
        }


def sft_inputs(upstream: Any, text: str, speaker: str, lang: str) -> list[dict[str, Any]]:
    """The frontend's model inputs of each chunk of `text`, as the engine builds them."""
    from worker.engines.cosyvoice.text import TextSplitter

    chunks = TextSplitter(upstream.frontend).split(text, lang=lang)
    return [upstream.frontend.frontend_sft(chunk, speaker) for chunk in chunks]


def upstream_tokens(llm: Any, model_input: dict[str, Any], seed: int) -> list[int]:
    """Upstream `TransformerLM.inference`'s speech tokens for one chunk, seeded."""
    import torch

    torch.manual_seed(seed)
    text = model_input["text"]
    no_prompt = torch.zeros(1, 0, dtype=torch.int32)
    zero = torch.tensor([0], dtype=torch.int32)
    return list(
        llm.inference(
            text=text,
            text_len=torch.tensor([text.shape[1]], dtype=torch.int32),
            prompt_text=no_prompt,
            prompt_text_len=zero,
            prompt_speech_token=no_prompt,
            prompt_speech_token_len=zero,
            embedding=model_input["llm_embedding"],
        )
    )


def upstream_teacher_forced(llm: Any, model_input: dict[str, Any], tokens: list[int]) -> Any:
    """Upstream's log-probabilities at each step when fed `tokens`: the prefix and the steps go
    through upstream's own `forward_chunk` with the caches and masks its inference loop passes.
    Shape (len(tokens) + 1, vocabulary)."""
    import torch

    from worker.engines.cosyvoice.decode import SpeechTokenDecoder

    with torch.inference_mode():
        text = model_input["text"]
        decoder = SpeechTokenDecoder(llm)
        prefix, _ = decoder._prefix(
            text, torch.tensor([text.shape[1]], dtype=torch.int32), model_input["llm_embedding"]
        )
        encoder = llm.llm
        cache = cnn = torch.zeros((0, 0, 0, 0))
        step_input, offset, rows = prefix, 0, []
        for token in [*tokens, None]:
            length = step_input.shape[1]
            mask = torch.tril(torch.ones((1, length, length))).to(torch.bool)
            hidden, cache, cnn = encoder.forward_chunk(
                step_input, offset=offset, required_cache_size=-1, att_cache=cache,
                cnn_cache=cnn, att_mask=mask,
            )  # fmt: skip
            rows.append(llm.llm_decoder(hidden[:, -1]).log_softmax(dim=-1))
            if token is None:
                break
            offset += length
            step_input = llm.speech_embedding.weight[token].reshape(1, 1, -1)
        return torch.cat(rows, dim=0)


def compare_log_probs(reference: Any, candidate: Any) -> LogitParity:
    """Teacher-forced parity of two (steps, vocabulary) log-probability tensors."""
    import torch

    scale = reference.abs().amax(dim=-1).clamp_min(1e-12)
    relative = ((candidate - reference).abs().amax(dim=-1) / scale).max().item()
    agree = (candidate.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(candidate, reference, log_target=True, reduction="none")
    return LogitParity(
        steps=reference.shape[0],
        max_relative_difference=relative,
        top1_agreement=agree,
        mean_kl=kl.sum(dim=-1).mean().item(),
    )


def near_tie(log_probs: Any, first: int, second: int) -> bool:
    """True if two tokens' probabilities at a step differ by less than NEAR_TIE_PROBABILITY."""
    probs = log_probs.exp()
    return abs(float(probs[first]) - float(probs[second])) < NEAR_TIE_PROBABILITY


@dataclass(frozen=True)
class Reference:
    """Upstream's speech tokens for one chunk (seeded) and its teacher-forced log-probs."""

    text: str
    model_input: dict[str, Any]
    tokens: list[int]
    log_probs: Any


def references(upstream: Any, texts: list[tuple[str, str, str]], seed: int) -> list[Reference]:
    """Upstream's tokens and log-probabilities for every chunk of `texts`."""
    llm = upstream.model.llm
    found = []
    for lang, speaker, text in texts:
        for model_input in sft_inputs(upstream, text, speaker, lang):
            tokens = upstream_tokens(llm, model_input, seed)
            found.append(
                Reference(
                    text, model_input, tokens, upstream_teacher_forced(llm, model_input, tokens)
                )
            )
    return found


def llm_parity(decoder: Any, refs: list[Reference], seed: int = 0) -> dict[str, Any]:
    """Teacher-forced and free-running parity of `decoder` against upstream's references."""
    import torch

    identical, divergences = 0, []
    steps = agree_steps = 0
    kl_sum, worst_relative = 0.0, 0.0
    for ref in refs:
        text_tokens = ref.model_input["text"]
        text_len = torch.tensor([text_tokens.shape[1]], dtype=torch.int32)
        embedding = ref.model_input["llm_embedding"]
        torch.manual_seed(seed)
        ours = list(decoder.generate(text_tokens, text_len, embedding))
        candidate = decoder.teacher_forced(text_tokens, text_len, embedding, ref.tokens)
        parity = compare_log_probs(ref.log_probs, candidate)
        steps += parity.steps
        agree_steps += round(parity.top1_agreement * parity.steps)
        kl_sum += parity.mean_kl * parity.steps
        worst_relative = max(worst_relative, parity.max_relative_difference)
        if ours == ref.tokens:
            identical += 1
            continue
        at = next(
            (i for i, (a, b) in enumerate(zip(ours, ref.tokens, strict=False)) if a != b),
            min(len(ours), len(ref.tokens)),
        )
        tie = (
            at < len(ours)
            and at < len(ref.tokens)
            and near_tie(ref.log_probs[at], ours[at], ref.tokens[at])
        )
        divergences.append({"text": ref.text, "first_step": at, "near_tie": tie})
    teacher_forced = LogitParity(steps, worst_relative, agree_steps / steps, kl_sum / steps)
    return {
        "teacher_forced": teacher_forced.as_dict(),
        "free_running": {
            "chunks": len(refs),
            "identical": identical,
            "divergences": divergences,
        },
    }


def waveform_snr_db(reference: Any, candidate: Any) -> float:
    """SNR of `candidate` against `reference` (same length) in dB; inf if identical."""
    import numpy as np

    noise = float(np.sum((candidate - reference) ** 2))
    signal = float(np.sum(reference**2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def run(model_dir: Path, presets: list[str], threads: int, texts: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    torch.set_num_threads(threads)
    reference = CosyVoiceSynthesizer(str(model_dir), threads=threads, preset="upstream")
    lang, speaker, text = TEXTS[1]
    reference_audio = reference.synthesize(text, speaker=speaker, lang=lang)
    refs = references(reference.upstream, TEXTS[:texts], seed=0)
    report: dict[str, Any] = {"model_dir": str(model_dir), "presets": {}}
    for name in presets:
        engine = CosyVoiceSynthesizer(str(model_dir), threads=threads, preset=name)
        figures = llm_parity(engine.decoder, refs)
        audio = engine.synthesize(text, speaker=speaker, lang=lang)
        same_length = audio.shape == reference_audio.shape
        figures["en_waveform_snr_db"] = (
            waveform_snr_db(reference_audio, audio) if same_length else None
        )
        figures["en_max_abs_sample_difference"] = (
            float(np.abs(audio - reference_audio).max()) if same_length else None
        )
        report["presets"][name] = figures
        print(name, json.dumps(figures, ensure_ascii=False), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_parity")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--presets", default="exact,fast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--texts", type=int, default=len(TEXTS), help=f"the first N of {len(TEXTS)} texts"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.model_dir.resolve(), args.presets.split(","), args.threads, args.texts)
    if args.out:
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
