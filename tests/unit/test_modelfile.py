"""The ollama Modelfile: which chat templates are recognized, and what the file says."""

from __future__ import annotations

import pytest

from selftune.export.gguf_model import read_tokenizer_info
from selftune.export.modelfile import (
    SUPPORTED_FORMATS,
    ModelfileError,
    detect_chat_format,
    ollama_modelfile,
)
from selftune.models.base import default_gguf_path
from selftune.models.templates import PRESETS

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}  # SmolLM2's BOS and EOS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_recognized_without_a_system_prompt(preset: str) -> None:
    chat_format = detect_chat_format(PRESETS[preset], **TOKENS)
    assert chat_format.name == preset
    assert chat_format.system is None


def test_the_default_models_template_is_chatml_with_its_system_prompt() -> None:
    info = read_tokenizer_info(default_gguf_path())
    assert info.chat_template is not None
    chat_format = detect_chat_format(
        info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token
    )
    assert chat_format.name == "chatml"
    assert chat_format.system == SMOLLM_SYSTEM


def test_chatml_modelfile() -> None:
    info = read_tokenizer_info(default_gguf_path())
    assert info.chat_template is not None
    text = ollama_modelfile(
        "model.gguf", info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token
    )
    assert "FROM ./model.gguf\n" in text
    # ollama's own ChatML example, closed by the generation prompt with its newline.
    assert (
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ end }}<|im_start|>assistant\n"""\n'
    ) in text
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    assert 'PARAMETER stop "<|im_start|>"\n' in text
    assert f'SYSTEM """{SMOLLM_SYSTEM}"""\n' in text


def test_no_system_line_without_a_default_system_prompt() -> None:
    text = ollama_modelfile("model.gguf", PRESETS["chatml"], **TOKENS)
    assert "SYSTEM" not in text
    assert text.count("PARAMETER stop") == 2  # EOS is <|im_end|>: listed once


def test_llama2_uses_the_models_own_bos_and_eos() -> None:
    text = ollama_modelfile("m.gguf", PRESETS["llama2"], bos_token="<s>", eos_token="</s>")
    assert "<s>[INST] " in text and " </s>" in text
    assert 'PARAMETER stop "[INST]"' in text and 'PARAMETER stop "</s>"' in text
    assert "BOS" not in text and "EOS" not in text


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        # ChatML markers, but no newline after the role: not what the Go template writes.
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "{{ raise_exception('this template refuses everything') }}",
    ],
)
def test_unrecognized_templates_are_refused_naming_the_supported_ones(template: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        ollama_modelfile("model.gguf", template, **TOKENS)
    assert all(name in str(caught.value) for name in SUPPORTED_FORMATS)


def test_a_value_that_cannot_be_quoted_is_refused() -> None:
    # Zephyr writes EOS into the template; a Modelfile string has no escape for its own quotes.
    with pytest.raises(ModelfileError, match="cannot be quoted"):
        ollama_modelfile("model.gguf", PRESETS["zephyr"], bos_token="<s>", eos_token='"""')
