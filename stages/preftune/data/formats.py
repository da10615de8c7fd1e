"""Load preference datasets into rows {"prompt": str, "chosen": str, "rejected": str}, or fail with one line.

Files (YAML, JSONL, JSON, CSV, Parquet) all go through normalize_rows(), so all are checked by the
same rules and come out in the same shape, in source order (Hub splits are saved as JSONL files first:
stages/fetch_hub.py). Rows follow TRL's
preference-dataset conventions:

    explicit prompt   {"prompt": str, "chosen": str, "rejected": str}
    implicit prompt   {"chosen": str, "rejected": str}: the prompt is their shared beginning (see below)
    conversational    either of the above with lists of {"role": ..., "content": ...} messages instead of
                      strings; implicit means chosen and rejected are whole conversations whose shared
                      leading messages are the prompt

unpaired feedback (one answer and a thumbs up or down, for KTO) as TRL and LLaMA-Factory write it:

    TRL               {"prompt": str, "completion": str, "label": bool}, or with lists of messages
    LLaMA-Factory KTO {"messages": [..., {"role": "assistant", ...}], "label": bool} (or "kto_tag"); the last
                      message is the answer, the ones before it the prompt

giving rows {"prompt", "completion", "label"} (labels may also be "true"/"false"/1/0, as CSV cells are); a file
holds one kind of row, pairs or unpaired feedback. And LLaMA-Factory's two preference layouts, turned into
conversational rows:

    ShareGPT          {"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...],
                       "chosen": {"from": "gpt", "value": str}, "rejected": {...}, optional "system": str}
    Alpaca            {"instruction": str, "input": str (optional), "chosen": str, "rejected": str,
                       optional "system": str}: the user turn is instruction + "\n" + input

Implicit text prompt: the longest common prefix of chosen and rejected, cut back to the start of its last
run of whitespace (spaces, tabs or newlines). So no word is split between prompt and response, the prompt
never ends in whitespace, and each response starts with the whitespace that separated it from the prompt,
as TRL does. "Q: hi\\nA: Yes." / "Q: hi\\nA: No." gives prompt "Q: hi\\nA:", responses " Yes." / " No.".

Conversations are rendered with render_messages(messages, add_generation_prompt) -> str when given (a
wrapper around the tokenizer's chat template), else with render_plain(). A response is whatever the full
conversation adds to the generation prompt: render(prompt + response, False) minus render(prompt, True).
So prompt + response is exactly the text the model sees, whatever the template puts between turns.
Conversational rows keep their messages under "messages" so that prepare can drop whole turns of a prompt
that is too long and render the row again (render_row).

Exact duplicates are left in: prepare drops or refuses them (data.duplicates), counting them.

Errors are DataError with one line: "<source>: row <n>: field '<field>': <what is wrong>; <what to do>",
rows numbered from 1 in file order (CSV: data rows, header excluded; JSONL: blank lines not counted).
Problems with the whole file read "<source>: [line <k>: ]<what is wrong>; <what to do>".
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import yaml

from ..pipeline.errors import DataError

RenderMessages = Callable[[list, bool], str]

PAIR_FIELDS = ("prompt", "chosen", "rejected")
HUB_INSTALL_HINT = "pip install '.[hub]'"


def load_pairs(path: str | os.PathLike, fmt: str | None = None,
               render_messages: RenderMessages | None = None) -> list[dict]:
    """Read a preference dataset file and return validated rows [{"prompt", "chosen", "rejected"}, ...] in file order.

    fmt is yaml/yml, jsonl, json, csv or parquet; by default it is the file's extension. YAML and JSON files
    hold a top-level list of rows, JSONL one row object per line, CSV and Parquet one row per record.
    Columns other than prompt, chosen and rejected are ignored. See the module docstring for the row
    layouts, the implicit-prompt rule and the error format.
    """
    return nonempty(iter_pairs(path, fmt, render_messages), str(path))


def iter_pairs(path: str | os.PathLike, fmt: str | None = None,
               render_messages: RenderMessages | None = None) -> Iterator[dict]:
    """load_pairs' rows one at a time: JSONL, CSV and Parquet files are read as they go (memory does not grow with
    the file), YAML and JSON whole (a document is parsed at once). The file is checked before the first row."""
    path = str(path)
    fmt = (fmt if fmt is not None else Path(path).suffix.lstrip(".")).lower()
    reader = _READERS.get(fmt)
    if reader is None:
        shown = repr(fmt) if fmt else "(no file extension)"
        raise DataError(f"{path}: unknown format {shown}; supported: {', '.join(_READERS)} "
                        "(rename the file or pass the format explicitly)")
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths start at {os.getcwd()})")
    return iter_normalized(reader(path), path, render_messages)


def normalize_rows(rows: Iterable, source: str, render_messages: RenderMessages | None = None) -> list[dict]:
    """Validate raw rows (mappings in any supported layout) and return them as plain-text prompt/chosen/rejected.

    source names the file or dataset in error messages.
    """
    return nonempty(iter_normalized(rows, source, render_messages), source)


def nonempty(rows: Iterable[dict], source: str) -> list[dict]:
    found = list(rows)
    if not found:
        raise DataError(f"{source}: no rows; add at least one row with 'chosen' and 'rejected' (and usually 'prompt')")
    return found


def iter_normalized(rows: Iterable, source: str, render_messages: RenderMessages | None = None) -> Iterator[dict]:
    """normalize_rows one row at a time (a file with no rows yields none: the caller says so)."""
    render = render_messages or render_plain
    first_unpaired = None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            raise DataError(f"{source}: row {n}: expected a mapping with 'chosen' and 'rejected' fields, "
                            f"got {_describe(row)}; write each row as {{prompt: ..., chosen: ..., rejected: ...}}")
        try:
            pair = _normalize_row(row, render)
        except _BadField as bad:
            raise DataError(f"{source}: row {n}: field '{bad.field}': {bad.problem}; {bad.fix}") from None
        unpaired = is_unpaired([pair])
        if first_unpaired is None:
            first_unpaired = unpaired
        elif unpaired != first_unpaired:
            kinds = ("unpaired feedback (label)", "a preference pair (chosen, rejected)")
            first, this = (kinds[0], kinds[1]) if first_unpaired else (kinds[1], kinds[0])
            raise DataError(f"{source}: row {n}: is {this}, but row 1 is {first}; keep one kind per file")
        yield pair


def render_plain(messages: list, add_generation_prompt: bool) -> str:
    """The fallback chat template: each message as "<role>: <content>\\n", then "assistant:" if asked.

    Since every message ends its own line, the generation prompt is a prefix of the full conversation and a
    response renders as " <content>\\n": "user: hi\\nassistant:" + " hello\\n" == "user: hi\\nassistant: hello\\n".
    """
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return (text + "assistant:") if add_generation_prompt else text


def chat_renderer(tokenizer):
    """`render(messages, add_generation_prompt)` with the tokenizer's chat template, or None without one.

    A conversation that ends with an answer ends at the EOS token that closes it, where the template closes turns
    with EOS (SmolLM2's `<|im_end|>`): the newline after it belongs to the next turn. So a prepared answer ends
    the way a generated one does, which stops at EOS, and the Encoder adds no second EOS (encoding.py)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    eos = tokenizer.eos_token

    def render(messages, add_generation_prompt):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        head, found, tail = text.rpartition(eos) if eos else ("", "", text)
        if not add_generation_prompt and found and not tail.strip():
            return head + found
        return text

    return render


def renderer(tokenizer) -> RenderMessages:
    """How conversations are rendered for `tokenizer`: its chat template, else plain lines (render_plain). prepare
    renders the rows with it, and evaluate and the rounds re-render a prompt they cut."""
    return chat_renderer(tokenizer) or render_plain


class _BadField(Exception):
    """A problem in one field of a row; normalize_rows adds the source and the row number."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(field, problem, fix)
        self.field, self.problem, self.fix = field, problem, fix


def _normalize_row(row: Mapping, render: RenderMessages) -> dict:
    if "label" in row or "kto_tag" in row:
        return _normalize_unpaired(row, render)
    if "conversations" in row:
        row = _from_sharegpt(row)
    elif "instruction" in row:
        row = _from_alpaca(row)
    for field in ("chosen", "rejected"):
        if field not in row:
            raise _BadField(field, "missing", "every row needs 'chosen' and 'rejected' (and usually 'prompt')")
    values = {field: row[field] for field in PAIR_FIELDS if field in row}
    conversational = _check_fields(values)
    if values["chosen"] == values["rejected"]:
        raise _BadField("rejected", "identical to 'chosen'", "a pair needs two different responses; fix or drop the row")

    if conversational:
        return _render_conversation(values, render)
    if "prompt" in values:
        return values
    return _split_shared_text(values["chosen"], values["rejected"])


LABEL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _normalize_unpaired(row: Mapping, render: RenderMessages) -> dict:
    """Unpaired feedback, one answer and its verdict: TRL's {prompt, completion, label} (text or messages), or
    LLaMA-Factory's KTO layout {messages: [..., assistant answer], label (or kto_tag)}, optional system."""
    label = _label(row["label"] if "label" in row else row["kto_tag"])
    if "messages" in row and "completion" not in row:
        messages = row["messages"]
        if isinstance(messages, list):
            messages = [_role_message(i, m) for i, m in enumerate(messages, 1)]
        _check_messages("messages", messages)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise _BadField("messages", "must end with the assistant's answer after at least one user turn",
                            "make the last message {role: assistant, content: <the answer>}")
        prompt = messages[:-1]
        if row.get("system") and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": row["system"]}] + prompt
        values = {"prompt": prompt, "completion": messages[-1:]}
    else:
        for field in ("prompt", "completion"):
            if field not in row:
                raise _BadField(field, "missing", "unpaired rows need 'prompt', 'completion' and 'label' "
                                                  "(or LLaMA-Factory's 'messages' and 'label')")
        values = {"prompt": row["prompt"], "completion": row["completion"]}
    if not _check_fields(values):
        return {**values, "label": label}
    _check_prompt_end(values["prompt"])
    rendered = render_row(values, render)
    return {"prompt": rendered["prompt"], "completion": rendered["completion"], "label": label,
            "messages": rendered["messages"]}


def _label(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise _BadField("label", f"expected true or false, got {_describe(value)}",
                    "write true for a good answer and false for a bad one")


def _role_message(i: int, message) -> dict:
    """A {role, content} message, or a ShareGPT {from, value} turn turned into one."""
    if isinstance(message, Mapping) and "from" in message:
        return _sharegpt_message(f"messages[{i}]", message)
    return message


def _check_fields(values: dict) -> bool:
    """Check every field as text, or (if any is a list) every field as messages; True when conversational."""
    conversational = any(isinstance(value, list) for value in values.values())
    for field, value in values.items():
        (_check_messages if conversational else _check_text)(field, value)
    return conversational


def _check_prompt_end(prompt: list) -> None:
    if prompt[-1]["role"] == "assistant":
        raise _BadField("prompt", "ends with an assistant message", "end the prompt with the user's turn")


def _check_text(field: str, value) -> None:
    if value is None:
        raise _BadField(field, "empty (null)", "fill it in or drop the row")
    if not isinstance(value, str):
        raise _BadField(field, f"expected text, got {_describe(value)}", "quote the value so it is read as a string")
    if not value.strip():
        raise _BadField(field, "empty or whitespace only", "fill it in or drop the row")


def _check_messages(field: str, value) -> None:
    if not isinstance(value, list):
        raise _BadField(field, f"expected a list of messages like the other fields, got {_describe(value)}",
                        "make prompt, chosen and rejected all text or all lists of {role, content} messages")
    if not value:
        raise _BadField(field, "empty list of messages", "add at least one {role, content} message or drop the row")
    for i, message in enumerate(value, 1):
        ok = (isinstance(message, Mapping) and isinstance(message.get("role"), str)
              and isinstance(message.get("content"), str) and message["content"].strip())
        if not ok:
            raise _BadField(field, f"message {i} needs a text 'role' and a non-empty text 'content', "
                                   f"got {_describe(message)}", "fix the message or drop the row")


def _split_shared_text(chosen: str, rejected: str) -> dict:
    shared = os.path.commonprefix([chosen, rejected])
    last_gap = re.search(r"\s+\S*\Z", shared)  # the last whitespace run, plus the partial word after it
    cut = last_gap.start() if last_gap else 0
    if cut == 0:
        raise _BadField("prompt", "missing, and 'chosen' and 'rejected' have no shared prompt prefix",
                        "add a prompt column")
    pair = {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    for field in ("chosen", "rejected"):
        if not pair[field].strip():
            raise _BadField(field, f"nothing but whitespace after the shared prompt {_shorten(pair['prompt'])}",
                            "add a prompt column or a real response")
    return pair


def _render_conversation(values: dict, render: RenderMessages) -> dict:
    if "prompt" in values:
        prompt, chosen, rejected = values["prompt"], values["chosen"], values["rejected"]
    else:
        prompt, chosen, rejected = _split_shared_messages(values["chosen"], values["rejected"])
    _check_prompt_end(prompt)
    return render_row({"prompt": prompt, "chosen": chosen, "rejected": rejected}, render)


def render_row(messages: dict, render: RenderMessages) -> dict:
    """Text of a conversational row {"prompt": [...], <answer>: [...], ...} (answers: chosen and rejected, or an
    unpaired completion): the prompt with the generation prompt, each answer as what the full conversation adds
    to it; the messages are kept."""
    prompt_text = render(messages["prompt"], True)
    out = {"prompt": prompt_text}
    for field in answer_fields(messages):
        out[field] = _render_response(field, messages["prompt"], prompt_text, messages[field], render)
    out["messages"] = messages
    return out


def answer_fields(row: Mapping) -> tuple[str, ...]:
    """The answer fields of a row: ("chosen", "rejected") for a pair, ("completion",) for unpaired feedback."""
    return ("completion",) if "completion" in row else ("chosen", "rejected")


def is_unpaired(rows: list[dict]) -> bool:
    """Whether prepared rows are unpaired feedback (prompt, completion, label) rather than preference pairs."""
    return bool(rows) and "completion" in rows[0]


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _from_sharegpt(row: Mapping) -> dict:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _BadField("conversations", f"expected a non-empty list of {{from, value}} turns, got {_describe(turns)}",
                        "write the prompt turns as [{from: human, value: ...}, ...]")
    messages = []
    if row.get("system") is not None:
        messages.append(_sharegpt_message("system", {"from": "system", "value": row["system"]}))
    messages += [_sharegpt_message(f"conversations[{i}]", turn) for i, turn in enumerate(turns, 1)]
    out = {"prompt": messages}
    for field in ("chosen", "rejected"):
        if field in row:
            out[field] = [_sharegpt_message(field, row[field])]
            if out[field][0]["role"] != "assistant":
                raise _BadField(field, f"from '{row[field]['from']}', expected an answer from 'gpt'",
                                "make chosen and rejected {from: gpt, value: ...}")
    return out


def _sharegpt_message(field: str, turn) -> dict:
    if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
        raise _BadField(field, f"expected {{from, value}}, got {_describe(turn)}", "write it as {from: gpt, value: ...}")
    role = SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
    if role is None:
        raise _BadField(field, f"unsupported 'from' {turn['from']!r}",
                        f"use one of {', '.join(SHAREGPT_ROLES)} (tool turns are not supported)")
    return {"role": role, "content": turn["value"]}


def _from_alpaca(row: Mapping) -> dict:
    parts = [row["instruction"], row.get("input")]
    for name, value in zip(("instruction", "input"), parts):
        if value is not None and not isinstance(value, str):
            raise _BadField(name, f"expected text, got {_describe(value)}", "quote the value so it is read as a string")
    prompt = [{"role": "user", "content": "\n".join(p for p in parts if p)}]
    if row.get("system"):
        prompt.insert(0, {"role": "system", "content": row["system"]})
    out = {"prompt": prompt}
    for field in ("chosen", "rejected"):
        if field in row:
            value = row[field]
            out[field] = [{"role": "assistant", "content": value}] if isinstance(value, str) else value
    return out


def _split_shared_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise _BadField("prompt", "missing, and 'chosen' and 'rejected' have no shared prompt prefix "
                                  "(their first messages differ)", "add a prompt column")
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) == shared:
            raise _BadField(field, "no messages after the ones it shares with the other response",
                            "add the response message or a prompt column")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _render_response(field: str, prompt: list, prompt_text: str, response: list, render: RenderMessages) -> str:
    full = render(prompt + response, False)
    # Slicing needs the generation prompt to be a prefix of the conversation; a template that rewrites
    # earlier turns (e.g. drops reasoning) would otherwise silently train on text it never shows the model.
    if not full.startswith(prompt_text):
        raise _BadField(field, "the chat template renders prompt + response with a different beginning than "
                               "the prompt alone", "use a chat template whose generation prompt is a prefix "
                                                   "of the rendered conversation")
    return full[len(prompt_text):]


# Readers return the file's raw rows; all row checks happen in normalize_rows.

def _read_text(path: str) -> str:
    try:
        # utf-8-sig: files saved by Excel and some Windows editors start with a byte-order mark.
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); re-save the file as UTF-8") from None


def _read_yaml(path: str) -> list:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or err
        raise DataError(f"{path}: {line}not valid YAML ({_one_line(problem)}); fix the syntax there") from None
    return _top_level_list(path, [] if data is None else data)


def _read_json(path: str) -> list:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                        "fix the syntax there") from None
    return _top_level_list(path, data)


def _text_lines(path: str) -> Iterator[str]:
    """The file's text split at "\n" only, read as it goes; as _read_text, a byte-order mark is dropped and bytes
    that are not UTF-8 are one line naming their offset. split("\n"), not splitlines(): JSON strings may legally
    contain U+2028 and other line separators."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not UTF-8 text (byte {offset + err.start}); re-save the file as UTF-8") \
                    from None
            offset += len(raw)
            yield line[:-1] if line.endswith("\n") else line


def _read_jsonl(path: str) -> Iterator:
    for line_no, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue  # a trailing or stray blank line is harmless
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {line_no}: not valid JSON ({err.msg}, column {err.colno}); "
                            "each line must be one complete JSON object") from None


def _read_csv(path: str) -> Iterator:
    # restval="": a short line leaves its last cells empty, which is then reported as an empty field.
    reader = csv.DictReader(_CsvLines(_text_lines(path)), restval="")
    try:
        yield from reader
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({err}); fix the quoting there") from None


class _CsvLines:
    """csv's view of the file: its lines with their newlines back, as a file opened with newline="" gives them."""

    def __init__(self, lines: Iterator[str]):
        self.lines = lines

    def __iter__(self):
        return (line + "\n" for line in self.lines)


def _read_parquet(path: str) -> Iterator:
    import pyarrow  # Imported here: it is slow to import and only Parquet needs it.
    import pyarrow.parquet

    try:
        # to_pylist, not pandas: nested message lists stay Python lists instead of numpy object arrays.
        for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(err)}); "
                        "re-export it, e.g. with pandas DataFrame.to_parquet") from None


def _top_level_list(path: str, data) -> list:
    if isinstance(data, list):
        return data
    found = (f"a mapping with keys {', '.join(map(repr, list(data)[:5]))}" if isinstance(data, Mapping)
             else _describe(data))
    raise DataError(f"{path}: top level is {found}, expected a list of rows; "
                    "make the file a list of {prompt, chosen, rejected} entries")


_READERS = {
    "yaml": _read_yaml,
    "yml": _read_yaml,
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": _read_parquet,
}


def _describe(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {_shorten(value)}"


def _shorten(value, limit: int = 40) -> str:
    text = repr(value)  # repr keeps it on one line: newlines show as \n
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(value) -> str:
    return " ".join(str(value).split())
