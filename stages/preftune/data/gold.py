"""The gold checker of the built-in grammar task, alone: the stages that score answers (sft, reward, evaluate)
import this module, not the task generator, so editing the generator does not rerun them."""


def is_correct(record: dict, response: str) -> bool:
    """Gold checker: the response's first line is exactly the sentence's known correct form.

    Whitespace is normalised; anything else (a wrong word, a missing full stop, chatter around
    the right sentence) is wrong. It reads only `record["correct"]`, never a pair's chosen text.
    """
    first_line = response.strip().split("\n", 1)[0] if response.strip() else ""
    return " ".join(first_line.split()) == " ".join(record["correct"].split())
