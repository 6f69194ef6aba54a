"""Chat templates: Jinja templates in Hugging Face's `apply_chat_template` convention, rendered by transformers'
sandboxed renderer, so fine-tuning data, serving and a Hugging Face export all render a chat the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from neox.data.tokenizer import EOD_TOKEN

# What rendering imports beyond the pyfunc's own requirements (transformers does not require Jinja2 itself)
CHAT_REQUIREMENTS = ("transformers", "Jinja2")


def chat_renderer(tokenizer_file: str | Path, template: str) -> Callable[[list[dict[str, str]], bool], str]:
    """render(messages, add_generation_prompt) -> the chat as text, the template given eos_token and bos_token
    <|endoftext|> (as the Hugging Face export's tokenizer_config.json names them)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), eos_token=EOD_TOKEN, bos_token=EOD_TOKEN, chat_template=template
    )

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not messages:  # transformers' apply_chat_template refuses an empty chat; its renderer does not
            from jinja2 import TemplateError
            from transformers.utils.chat_template_utils import render_jinja_template

            try:
                rendered, _ = render_jinja_template(
                    [[]], chat_template=template, add_generation_prompt=add_generation_prompt, **hf.special_tokens_map
                )
            except TemplateError as err:  # many templates read messages[0] unguarded
                raise TemplateError(f"it renders no prompt before a chat's opening assistant turn ({err})") from None
            return rendered[0]
        return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    return render
