"""Chat data for supervised fine-tuning: JSONL rows, their conversations, and Megatron's SFTTokenizer.

A row is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles ``system``, ``user`` and
``assistant`` (Megatron-LM's SFT format), or ``{"input": ..., "output": ...}`` (optionally ``"system"``),
read as one user turn and one assistant reply. As in Megatron-LM, a row may hold several conversations
back to back: each ``system`` message starts a new one.

``SFTTokenizer`` renders a conversation with ``--sft-tokenizer-prompt-format``: ``default`` applies the
local Hugging Face tokenizer's chat template (rendered by transformers in its sandboxed Jinja
environment: nothing in a template can run code), ``identity`` concatenates the contents. Unlike
Megatron-LM's ``default`` (which trains on every token), only the assistant's tokens are targets: the
characters an assistant turn adds to the rendering, from the end of the generation prompt of the turns
before it to the end of the turn (its end-of-turn marker included, so the model learns to stop).
"""

import json
import os

import numpy as np

from megatron_fp8.data.indexed_dataset import DataFormatError
from megatron_fp8.data.tokenizer import Tokenizer, as_int_list
from megatron_fp8.fsutil import file_sha256

ROLES = ("system", "user", "assistant")
PROMPT_FORMATS = ("default", "identity")


def _message(m, where: str, k: int) -> dict:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise DataFormatError(f"{where}: message {k} must be an object with \"role\" and \"content\"")
    role, content = m["role"], m["content"]
    if role not in ROLES:
        raise DataFormatError(f"{where}: message {k} has role {role!r}; roles are {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise DataFormatError(f"{where}: message {k} ({role}) has non-text content ({type(content).__name__})")
    return {"role": role, "content": content}


def _messages_of(row, where: str) -> list[dict]:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataFormatError(f"{where}: \"messages\" must be a non-empty list of {{role, content}} objects")
        return [_message(m, where, k) for k, m in enumerate(messages)]
    if "input" in row and "output" in row:
        head = [{"role": "system", "content": row["system"]}] if "system" in row else []
        return [_message(m, where, k) for k, m in enumerate(
            head + [{"role": "user", "content": row["input"]}, {"role": "assistant", "content": row["output"]}])]
    raise DataFormatError(f"{where}: a row needs \"messages\" (a list of {{role, content}}) or \"input\" and "
                          f"\"output\"; it has {sorted(row)[:6]}")


def split_conversations(messages: list[dict]) -> list[list[dict]]:
    """Megatron-LM's rule: every system message starts a new conversation."""
    out, current = [], []
    for m in messages:
        if m["role"] == "system" and current:
            out.append(current)
            current = []
        current.append(m)
    if current:
        out.append(current)
    return out


def conversations_of_row(row, where: str) -> list[list[dict]]:
    """The validated conversations of one parsed row; ``where`` (``file:line``) leads every error."""
    conversations = split_conversations(_messages_of(row, where))
    for c, conv in enumerate(conversations):
        label = f"{where}: conversation {c + 1}" if len(conversations) > 1 else where
        if not any(m["role"] == "assistant" for m in conv):
            raise DataFormatError(f"{label}: no assistant turn (nothing to learn from)")
        for k, m in enumerate(conv):
            if m["role"] == "assistant" and (k == 0 or conv[k - 1]["role"] != "user"):
                raise DataFormatError(f"{label}: assistant turn {k} does not follow a user turn")
            if m["role"] == "assistant" and not m["content"]:
                raise DataFormatError(f"{label}: assistant turn {k} is empty")
    return conversations


def read_jsonl(path: str):
    """``(line number, conversation)`` for every conversation of a JSONL file; blank lines are skipped."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            for conv in conversations_of_row(row, where):
                yield number, conv


def _template_text(directory: str) -> str | None:
    """The chat template a tokenizer directory carries, if any (transformers' two places for it)."""
    jinja = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja):
        return open(jinja, encoding="utf-8").read()
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            template = json.load(open(path, encoding="utf-8")).get("chat_template")
            if template:
                return template if isinstance(template, str) else json.dumps(template)
    return None


class SFTTokenizer(Tokenizer):
    """A local Hugging Face tokenizer directory that also renders and masks conversations (never downloads)."""

    def __init__(self, path: str, prompt_format: str = "default"):
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--sft-tokenizer-prompt-format: {prompt_format!r} is not one of "
                             f"{', '.join(PROMPT_FORMATS)}")
        if not os.path.isdir(path):
            raise ValueError(f"--tokenizer-model {path}: SFTTokenizer needs a local Hugging Face tokenizer directory")
        if prompt_format == "default" and _template_text(path) is None:
            raise ValueError(f"--tokenizer-model {path}: no chat template (chat_template.jinja, or chat_template "
                             "in tokenizer_config.json); --sft-tokenizer-prompt-format default applies it. Add one, "
                             "or use --sft-tokenizer-prompt-format identity")
        try:
            import transformers
        except ImportError:
            raise ImportError("SFTTokenizer needs the `transformers` package (pip install 'megatron_fp8[hf]')") from None
        self._tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.path, self.prompt_format = path, prompt_format
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise ValueError(f"--tokenizer-model {path}: the tokenizer has no eos token to end conversations with")
        self.eod = int(self._tok.eos_token_id)
        pad = self._tok.pad_token_id
        self.pad = int(pad) if pad is not None else self.eod  # padding is masked out of the loss either way
        files = sorted(n for n in os.listdir(path) if n.startswith(("tokenizer", "chat_template", "special_tokens",
                                                                      "vocab", "merges", "added_tokens")))
        self.identity = {"prompt_format": prompt_format,
                         "files": {n: file_sha256(os.path.join(path, n)) for n in files}}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode(as_int_list(ids), skip_special_tokens=False)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text in this prompt format (ending with the assistant's cue if asked)."""
        if self.prompt_format == "identity":
            return "".join(m["content"] for m in messages)
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation to be continued by the assistant (for generation)."""
        return self.encode(self.render(messages, add_generation_prompt=True))

    def _assistant_spans(self, messages: list[dict], text: str, where: str) -> list[tuple[int, int]]:
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:k], add_generation_prompt=True)
            after = self.render(messages[:k + 1])
            if not (after.startswith(before) and text.startswith(after)):
                raise DataFormatError(f"{where}: the chat template of {self.path} does not render this conversation "
                                      f"turn by turn (turn {k} changes the text before it), so the assistant's "
                                      "tokens cannot be told apart; use --sft-tokenizer-prompt-format identity")
            spans.append((len(before), len(after)))
        return spans

    def _encode_marked(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        starts = np.array([s for s, _ in spans], dtype=np.int64)
        ends = np.array([e for _, e in spans], dtype=np.int64)
        if getattr(self._tok, "is_fast", False):
            enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
            first = np.array([o[0] for o in enc["offset_mapping"]], dtype=np.int64).reshape(-1, 1)
            inside = ((first >= starts) & (first < ends)).any(axis=1) if spans else np.zeros(len(first), bool)
            return list(enc["input_ids"]), inside.tolist()
        ids, marks, at = [], [], 0  # a tokenizer without offsets: encode the pieces between span edges
        for start, end in spans + [(len(text), len(text))]:
            for piece, mark in ((text[at:start], False), (text[start:end], True)):
                if piece:
                    piece_ids = self.encode(piece)
                    ids += piece_ids
                    marks += [mark] * len(piece_ids)
            at = end
        return ids, marks

    def tokenize_conversation(self, messages: list[dict], where: str = "conversation") -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32, is_target bool)``: the rendered conversation ending with the eos token, and which
        tokens are the assistant's (the training targets)."""
        try:
            text = self.render(messages)
            spans = self._assistant_spans(messages, text, where)
        except DataFormatError:
            raise
        except Exception as err:  # noqa: BLE001 - templates raise their own errors (e.g. roles must alternate)
            raise DataFormatError(f"{where}: the chat template of {self.path} rejects this conversation: "
                                  f"{err}") from None
        ids, marks = self._encode_marked(text, spans)
        if not ids or ids[-1] != self.eod:  # as Megatron-LM: every conversation ends with the eos token
            ids.append(self.eod)
            marks.append(messages[-1]["role"] == "assistant")
        if not any(marks):
            raise DataFormatError(f"{where}: no assistant token after tokenization")
        return np.asarray(ids, dtype=np.int32), np.asarray(marks, dtype=bool)
