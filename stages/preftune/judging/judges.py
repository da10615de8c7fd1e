"""The judges of evaluate.judge, each behind the same two questions: which of two answers to a prompt is better
(`compare`: the policies' answers), and does it rank preference pairs as their labels do (`pairs`: how good the
judge is).

    reward            models/reward, trained here: the higher reward wins (verdicts.verdict)
    rm:<model>        a sequence-classification reward model of the user's, scored at the last real token
    llm:<model>       a local causal LM asked pairwise (pairwise.py: a template, both answer orders)
    openai:<model>    a judge LLM behind an OpenAI-compatible chat-completions server, asked pairwise

<model> is what model.base accepts: a folder, a GGUF file, package:<module>/<file>, or a hub id. A judgment is
a record per comparison: its verdict ("a": the first answer wins, "b", "tie"; None: unparseable) and what it
rests on (the two rewards, or both orders' raw answers), so an expensive judge's answers are kept with the run.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from ..data.encoding import EVAL_BATCH, Encoder
from ..data.formats import is_unpaired
from ..model import loading, runtime
from ..model.generation import generate_answers
from ..model.reward_model import load_reward_model, pair_scores, score, score_texts
from ..pipeline.errors import ConfigError, UserError
from ..pipeline.paths import REWARD
from ..pipeline.progress import track
from .pairwise import Template, combine
from .verdicts import verdict

KINDS = ("reward", "rm:", "llm:", "openai:")
KEY_ENV = "OPENAI_API_KEY"  # where an openai: judge's key is read from; never params.yaml, never an output
REQUESTS_AT_ONCE = 4


def kind_of(spec: str) -> str:
    """reward, rm, llm or openai from evaluate.judge (schema.py has checked the prefix)."""
    return "reward" if spec == "reward" else spec.split(":", 1)[0]


def load_judge(cfg: dict, model_cfg: dict, device):
    """The judge evaluate.judge names, loaded and checked (one line for a judge that cannot judge)."""
    spec = cfg["judge"]
    kind, name = kind_of(spec), spec.partition(":")[2]
    if kind == "reward":
        return RewardJudge(REWARD, Encoder(loading.load_tokenizer(REWARD), model_cfg["max_length"]), device, cfg)
    if kind == "rm":
        tokenizer = loading.load_tokenizer(name, model_cfg["trust_remote_code"], key="evaluate.judge")
        return RewardJudge(name, Encoder(tokenizer, judge_context(tokenizer, model_cfg)), device, cfg,
                           model_cfg["trust_remote_code"])
    template = Template.load(cfg["judge_template"])
    if kind == "llm":
        return PairwiseJudge(spec, LocalChat(name, device, cfg, model_cfg["trust_remote_code"]), template)
    return PairwiseJudge(spec, OpenAIChat(name, cfg["judge_base_url"]), template)


def judge_context(tokenizer, model_cfg: dict) -> int:
    """Tokens a user's reward model scores at most: its tokenizer's limit, or model.max_length when it has none."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else model_cfg["max_length"]


class RewardJudge:
    """A reward model: each answer scored alone, the higher reward wins; identical answers tie whatever their
    scores. The order of the two answers cannot matter, so its position consistency is 1 by construction."""

    def __init__(self, path: str, encode: Encoder, device, cfg: dict, trust_remote_code: bool = False):
        self.spec, self.encode, self.device, self.precision = cfg["judge"], encode, device, cfg["precision"]
        try:
            self.model = load_reward_model(path, trust_remote_code, key="evaluate.judge").to(device)
        except ValueError as err:
            raise ConfigError(f"params.yaml: evaluate.judge: {cfg['judge']}: {err}") from None
        if path != REWARD:
            check_classifier(self.model, cfg["judge"])
        self.calls = 0

    def compare(self, prompts: list[str], first: list[str], second: list[str], finished: tuple[list, list],
                desc: str) -> list[dict]:
        """One record per prompt: {"verdict", "rewards": [first's, second's]}; an answer that ran out of tokens is
        scored without EOS, as the reward model trained on cut answers."""
        with runtime.autocast(self.device, self.precision):
            rewards = [score_texts(self.model, self.encode, prompts, answers, self.device, desc=f"{desc}: {side}",
                                   finished=done)
                       for side, answers, done in (("first", first, finished[0]), ("second", second, finished[1]))]
        self.calls += 2 * len(prompts)
        return [{"verdict": verdict(a, b, x == y), "rewards": [a, b]}
                for a, b, x, y in zip(rewards[0], rewards[1], first, second)]

    @torch.no_grad()
    def pairs(self, rows: list[dict], desc: str) -> list[dict]:
        """One record per preference row: a pair's verdict ("a": chosen scored strictly higher) and rewards, or an
        unpaired row's reward and whether its sign is the label's."""
        pad, records = self.encode.tokenizer.pad_token_id, []
        self.model.eval()
        with runtime.autocast(self.device, self.precision):
            for start in range(0, len(rows), EVAL_BATCH):  # the batches reward training evaluates with
                batch = rows[start:start + EVAL_BATCH]
                if is_unpaired(rows):
                    rewards = score(self.model, [self.encode.row(r, "completion") for r in batch], pad, self.device)
                    records += [{"correct": (reward > 0) == r["label"], "reward": reward}
                                for r, reward in zip(batch, rewards.tolist())]
                    continue
                chosen, rejected = pair_scores(self.model, [(self.encode.row(r, "chosen"),
                                                             self.encode.row(r, "rejected")) for r in batch],
                                               pad, self.device)
                for c, r in zip(chosen.tolist(), rejected.tolist()):
                    records.append({"verdict": verdict(c, r), "rewards": [c, r]})
        self.calls += len(rows) * (1 if is_unpaired(rows) else 2)
        return records


def check_classifier(model, spec: str) -> None:
    """A reward model of the user's must be a sequence classifier with one score: a causal LM loaded as one would
    get an untrained head and judge at random."""
    architectures = getattr(model.config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"params.yaml: evaluate.judge: {spec} is not a sequence-classification reward model "
                          f"(its config says {', '.join(architectures) or 'no architecture'}); give a reward model, "
                          f"or judge with a causal LM as evaluate.judge: llm:{spec.split(':', 1)[1]}")


class PairwiseJudge:
    """A judge LLM asked about each comparison twice, the answers swapped the second time (pairwise.combine).
    Identical answers are a tie without asking."""

    def __init__(self, spec: str, chat, template: Template):
        self.spec, self.chat, self.template = spec, chat, template
        self.calls = 0

    def ask(self, instructions: list[str], first: list[str], second: list[str], desc: str) -> list[dict]:
        differ = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
        chats = [self.template.messages(instructions[i], first[i], second[i]) for i in differ] + \
                [self.template.messages(instructions[i], second[i], first[i]) for i in differ]
        answers = self.chat(chats, self.template.max_new_tokens, desc) if chats else []
        self.calls += len(chats)
        records = [{"verdict": "tie", "identical": True} for _ in first]
        for k, i in enumerate(differ):
            readings = [{"answer": answers[k], "verdict": self.template.parse(answers[k])},
                        {"answer": answers[len(differ) + k], "verdict": self.template.parse(answers[len(differ) + k])}]
            records[i] = {"verdict": combine(readings[0]["verdict"], readings[1]["verdict"]), "readings": readings}
        return records

    def compare(self, prompts: list[str], first: list[str], second: list[str], finished: tuple[list, list],
                desc: str) -> list[dict]:
        return self.ask(prompts, first, second, desc)

    def pairs(self, rows: list[dict], desc: str) -> list[dict]:
        """Preference pairs asked as comparisons, chosen first; unpaired rows cannot be asked pairwise (none)."""
        if is_unpaired(rows):
            return []
        return self.ask([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows], desc)


class LocalChat:
    """A causal LM of the user's answering chats greedily, in batches (the loaders model.base uses)."""

    def __init__(self, name: str, device, cfg: dict, trust_remote_code: bool):
        self.tokenizer = loading.load_tokenizer(name, trust_remote_code, key="evaluate.judge")
        self.model = loading.load_causal_lm(name, trust_remote_code, key="evaluate.judge").to(device)
        loading.ensure_pad_token(self.tokenizer, self.model)
        self.device, self.precision, self.batch_size = device, cfg["precision"], cfg["batch_size"]
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2048

    def render(self, chat: list[dict]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in chat) + "\n\n"

    def __call__(self, chats: list[list[dict]], max_new_tokens: int, desc: str) -> list[str]:
        with runtime.autocast(self.device, self.precision):
            return generate_answers(self.model, self.tokenizer, [self.render(c) for c in chats], max_new_tokens,
                                    self.batch_size, desc=desc, max_length=self.context)


class OpenAIChat:
    """Chat completions from an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, a hosted API) at
    evaluate.judge_base_url, greedy (temperature 0), a few requests at once. The key comes from $OPENAI_API_KEY
    only; the server is checked once, before any work."""

    def __init__(self, model: str, base_url: str, timeout: float = 120.0):
        self.model, self.url, self.timeout = model, base_url.rstrip("/"), timeout
        self.where = f"params.yaml: evaluate.judge: openai:{model}"
        self.key = os.environ.get(KEY_ENV)
        if not self.key:
            raise ConfigError(f"{self.where}: the API key is read from ${KEY_ENV}, which is not set; export it "
                              f"(a local server that needs none takes any value: export {KEY_ENV}=none)")
        try:
            self._request("GET", "/models", None, attempts=1, timeout=15)
        except urllib.error.HTTPError:
            pass  # it answered: reachable (not every server lists its models)

    def _request(self, method: str, path: str, body: dict | None, attempts: int = 3, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                    return json.load(response)
            except urllib.error.HTTPError as err:
                retry = err.code == 429 or err.code >= 500
                if not retry or attempt == attempts - 1:
                    if body is None:
                        raise
                    detail = " ".join(err.read().decode("utf-8", "replace").split())[:200]
                    raise UserError(f"{self.where}: the server at {self.url} refused the request (HTTP {err.code}: "
                                    f"{detail}); check the model name and the key") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == attempts - 1:
                    reason = getattr(err, "reason", err)
                    raise UserError(f"{self.where}: cannot reach {self.url} ({reason}); start the server or set "
                                    "evaluate.judge_base_url") from None
            time.sleep(2 ** attempt)

    def ask(self, chat: list[dict], max_new_tokens: int) -> str:
        reply = self._request("POST", "/chat/completions", {"model": self.model, "messages": chat,
                                                              "temperature": 0, "max_tokens": max_new_tokens})
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.where}: the server's reply is not a chat completion "
                            f"({json.dumps(reply)[:200]}); is {self.url} an OpenAI-compatible server?") from None

    def __call__(self, chats: list[list[dict]], max_new_tokens: int, desc: str) -> list[str]:
        with ThreadPoolExecutor(REQUESTS_AT_ONCE) as pool:
            return list(track(pool.map(lambda chat: self.ask(chat, max_new_tokens), chats), desc, total=len(chats),
                              unit="calls"))
