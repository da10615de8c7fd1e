"""The one win/tie rule, apart from the statistics (win_rates.py) so that editing those reruns only evaluate, never
the judging it summarises."""


def verdict(score_a: float, score_b: float, identical: bool = False) -> str:
    """"a" when A's score is strictly higher, "tie" when the scores are equal or the answers identical (identical
    answers are ties whatever their scores), else "b"."""
    if identical or score_a == score_b:
        return "tie"
    return "a" if score_a > score_b else "b"
