"""Judging: the evaluation of the policies, win rates and their statistics, plots."""
