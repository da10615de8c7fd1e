"""Judging: the policies' answers, the judges (reward model, rm:, llm:, openai:), win rates and statistics, plots."""
