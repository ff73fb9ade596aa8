"""PlainChatAdapter: ask a model the way a person would, with no field markers and no JSON.

For a signature whose only output is one of the adapter's `fields` (default: `code`), the request is one
user message: the signature's instructions, a blank line, then the inputs (a single input as its bare
value; several as `name:` blocks). The whole reply becomes the output field: the program extracts what it
needs (`CodeGenerator` takes the fenced code block). Demos become earlier user/assistant turns. Every other
signature (a teacher's, a multi-output one) goes to `fallback`, ChatAdapter by default, so the adapter can be
set for a whole compile.

Measured on HumanEval with Qwen2.5-Coder-0.5B (examples/results/harness_humaneval.md): this plain request
scored far above the same signature through ChatAdapter or JSONAdapter with chain of thought, which write
the code inside their reasoning, get cut off, or do not parse. CD's rules still reach the model: they are
part of the signature's instructions (`signature.with_instructions`).
"""

from __future__ import annotations

from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError


class PlainChatAdapter(dspy.Adapter):
    """Instructions + inputs as one plain user message; the reply, whole, as the single output field."""

    def __init__(self, fields: tuple[str, ...] = ("code",), fallback: dspy.Adapter | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fields = tuple(fields)
        self.fallback = fallback or dspy.ChatAdapter()

    def handles(self, signature: type[dspy.Signature]) -> bool:
        """True for a signature whose one output field is named in `fields` and holds text."""
        outputs = signature.output_fields
        return len(outputs) == 1 and next(iter(outputs)) in self.fields and \
            next(iter(outputs.values())).annotation in (str, None)

    def __call__(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                 demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.handles(signature):
            return self.fallback(lm, lm_kwargs, signature, demos, inputs)
        return super().__call__(lm, lm_kwargs, signature, demos, inputs)

    async def acall(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any], signature: type[dspy.Signature],
                    demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.handles(signature):
            return await self.fallback.acall(lm, lm_kwargs, signature, demos, inputs)
        return await super().acall(lm, lm_kwargs, signature, demos, inputs)

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]],
               inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """[user, assistant]* per complete demo, then the user message for `inputs` (`fallback`'s messages for a
        signature this adapter does not handle)."""
        if not self.handles(signature):
            return self.fallback.format(signature, demos, inputs)
        output = next(iter(signature.output_fields))
        messages: list[dict[str, Any]] = []
        for demo in demos:
            if output in demo and all(name in demo for name in signature.input_fields):
                reply = self.format_assistant_message_content(signature, demo)
                messages.append({"role": "user", "content": self.user_message(signature, demo)})
                messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": self.user_message(signature, inputs)})
        return messages

    def format_assistant_message_content(self, signature: type[dspy.Signature], outputs: dict[str, Any],
                                         missing_field_message: str | None = None) -> str:
        """The reply a demo or a fine-tuning record shows: the output field's text, as the model would write it."""
        if not self.handles(signature):
            return self.fallback.format_assistant_message_content(signature, outputs, missing_field_message)
        return str(outputs.get(next(iter(signature.output_fields)), missing_field_message or ""))

    def user_message(self, signature: type[dspy.Signature], values: dict[str, Any]) -> str:
        """The instructions, a blank line, and the input values (bare when there is one input field)."""
        names = list(signature.input_fields)
        if len(names) == 1:
            body = str(values.get(names[0], ""))
        else:
            body = "\n\n".join(f"{name}:\n{values.get(name, '')}" for name in names)
        instructions = (signature.instructions or "").strip()
        return f"{instructions}\n\n{body}" if instructions else body

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        """The whole reply as the output field; an empty reply is a parse error (DSPy retries or records it)."""
        if not (completion or "").strip():
            raise AdapterParseError(adapter_name=type(self).__name__, signature=signature, lm_response=completion,
                                    message="The LM returned an empty reply.")
        return {next(iter(signature.output_fields)): completion}
